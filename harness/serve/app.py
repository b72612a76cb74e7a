"""The Gradio app: Chat, Base vs Fine-Tuned, Rate (blind pairwise votes) and Model Performance, all driven by one
run folder."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

from supportbench.files import SupportBenchError
from supportbench.layout import RunDir
from supportbench.preference.store import REASONS
from supportbench.reports.render import collect_run, render
from supportbench.serve.assistant import Assistant, Chunk
from supportbench.serve.openai_api import openai_routes
from supportbench.serve.policy import REASONS as POLICY_REASONS
from supportbench.serve.rate import CHOICE_LABELS, RateSession
from supportbench.templates import Turn

UPLOAD_LIMIT = "1kb"  # the app takes no uploads; Gradio's limit turns any attempt away
CONCURRENT_REQUESTS = 8  # requests handed to the backend at once: the exported runtime decodes them as one batch
EXAMPLES = [
    "I want to cancel my order, how do I do that?",
    "Where is my refund? It has been two weeks.",
    "How can I change the shipping address on my order?",
    "I forgot my password and cannot log in.",
]


def _text(content: Any) -> str:
    """The text of a message's content (a string, or Gradio's typed parts); files and other parts are dropped."""
    if isinstance(content, str):
        return content
    parts = content if isinstance(content, list) else [content]
    return "".join(
        part if isinstance(part, str) else part["text"]
        for part in parts
        if isinstance(part, str)
        or isinstance(part, dict)
        and part.get("type", "text") == "text"
        and isinstance(part.get("text"), str)
    )


def text_history(history: list[Any] | None) -> list[dict[str, str]]:
    """Client-supplied Chatbot messages as new text-only {role, content} dicts: nothing the client sent but its text
    is ever echoed back, so a file part (which Gradio would copy from the server's disk and serve) never leaves."""
    messages = []
    for message in history or []:
        if isinstance(message, dict) and message.get("role") in ("user", "assistant"):
            text = _text(message.get("content"))
            if text:
                messages.append({"role": message["role"], "content": text})
    return messages


def history_turns(history: list[dict[str, Any]]) -> list[Turn]:
    """Chatbot messages ({role, content}) as completed customer/agent turns."""
    turns, pending = [], None
    for message in text_history(history):
        if message["role"] == "user":
            pending = message["content"]
        elif pending is not None:
            turns.append(Turn(pending, message["content"]))
            pending = None
    return turns


def chat(
    assistant: Assistant,
    message: str,
    history: list[dict[str, Any]],
    max_tokens: int,
    cancel: threading.Event | None = None,
) -> Iterator[tuple[list, str, str]]:
    """Chat tab handler: stream the fine-tuned reply into the (text-only) conversation, clear the textbox, and say
    in the operator view why the reply is what it is (the reply policy's reason code)."""
    history = text_history(history)
    try:
        query = assistant.check_query(message)
        turns = history_turns(history)
        history += [{"role": "user", "content": query}, {"role": "assistant", "content": ""}]
        with closing(assistant.generate(turns, query, True, int(max_tokens), cancel)) as chunks:
            for chunk in chunks:
                history[-1] = {"role": "assistant", "content": chunk.text}
                yield history, "", operator_note(chunk) if chunk.finish_reason else "*generating…*"
    except SupportBenchError as err:
        yield history + [{"role": "assistant", "content": f"⚠️ {err}"}], message or "", ""


def operator_note(chunk: Chunk) -> str:
    """The operator view of a finished reply: the policy's reason code and what it changed."""
    changes = "; ".join(c for c in chunk.changes if c) or "none"
    return f"reason: `{chunk.reason}` · changes: {changes} · finish: {chunk.finish_reason}"


def compare(assistant: Assistant, message: str, max_tokens: int) -> tuple[str, str, str, str]:
    """Base vs Fine-Tuned handler: one query to both models; answers and latencies side by side."""
    try:
        base = assistant.reply([], message, finetuned=False, max_new_tokens=int(max_tokens))
        tuned = assistant.reply([], message, finetuned=True, max_new_tokens=int(max_tokens))
    except SupportBenchError as err:
        return f"⚠️ {err}", "", f"⚠️ {err}", ""

    def latency(reply):
        first = "—" if reply.ttft_seconds is None else f"{reply.ttft_seconds:.2f} s"
        return f"{reply.seconds:.2f} s total, first token after {first}"

    return base.text, latency(base), tuned.text, latency(tuned)


def performance_markdown(run_dir: Path) -> str:
    """Model Performance tab: the report's Markdown, read from the run's files (missing parts say so)."""
    # the tab shows the loss curve itself; the other images are inlined, as the HTML report does
    return render("report.j2", "md", run=collect_run(run_dir), show_loss_curve=False, inline_images=True)


def build_app(
    run_dir: Path,
    assistant: Assistant | None = None,
    ratings: Path | None = None,
    rate_against: tuple[Path, Assistant] | None = None,
):
    """The Gradio Blocks app for a run folder; the Rate tab's votes go to `ratings` (default RUN/ratings.sqlite),
    on base against fine-tuned, or on this run's fine-tuned model against `rate_against`'s."""
    import anyio
    import gradio as gr

    assistant = assistant or Assistant(run_dir)
    rating = RateSession(Path(run_dir), assistant, ratings, against=rate_against)
    curve = RunDir(run_dir).loss_curve
    cap = assistant.decoding.max_new_tokens  # the run's budget: its training replies' p99 length
    slider_max = max(512, cap)
    with gr.Blocks(title="SupportBench assistant", analytics_enabled=False) as app:
        intro = f"Base model `{assistant.model_name}` with the LoRA adapter of run `{Path(run_dir).name}`"
        intro += f", served by {assistant.backend.description}."
        gr.Markdown(f"# SupportBench customer-support assistant\n{intro}")
        with gr.Tab("Chat", id="chat"):
            chatbot = gr.Chatbot(label="Conversation", elem_id="chatbot", height=420)
            with gr.Row():
                query = gr.Textbox(
                    label="Your message", placeholder="Ask the support agent…", elem_id="chat-input", scale=5
                )
                send = gr.Button("Send", variant="primary", elem_id="chat-send", scale=1)
            max_tokens = gr.Slider(16, slider_max, value=cap, step=8, label="Max reply tokens")
            with gr.Accordion("Operator view (not shown to customers)", open=True):
                policy_state = "on" if assistant.policy else "off (raw model replies)"
                gr.Markdown(f"Reply policy: **{policy_state}**. Reason codes: {', '.join(POLICY_REASONS)}.")
                operator = gr.Markdown(elem_id="operator-view")
            gr.Examples(EXAMPLES, inputs=query)
            clear = gr.Button("Clear conversation")

            async def on_chat(message, history, tokens):
                # driven from a thread, with a cancel flag set however the event ends (a client that leaves
                # included), so the generation stops at its next token
                cancel = threading.Event()
                updates = chat(assistant, message, history, tokens, cancel)
                try:
                    while (update := await anyio.to_thread.run_sync(next, updates, None)) is not None:
                        yield update
                finally:
                    cancel.set()

            event = dict(fn=on_chat, inputs=[query, chatbot, max_tokens], outputs=[chatbot, query, operator])
            send.click(api_name="chat", **event)
            query.submit(api_name=False, **event)
            clear.click(lambda: ([], "", ""), outputs=[chatbot, query, operator], api_name=False)
        with gr.Tab("Base vs Fine-Tuned", id="compare"):
            compare_query = gr.Textbox(label="Customer query", elem_id="compare-input")
            compare_tokens = gr.Slider(16, slider_max, value=cap, step=8, label="Max reply tokens")
            run_compare = gr.Button("Compare", variant="primary", elem_id="compare-run")
            with gr.Row():
                with gr.Column():
                    base_text = gr.Textbox(label="Base model", lines=8, elem_id="base-answer")
                    base_latency = gr.Markdown(elem_id="base-latency")
                with gr.Column():
                    tuned_text = gr.Textbox(label="Fine-tuned model", lines=8, elem_id="tuned-answer")
                    tuned_latency = gr.Markdown(elem_id="tuned-latency")
            run_compare.click(
                lambda m, t: compare(assistant, m, t),
                inputs=[compare_query, compare_tokens],
                outputs=[base_text, base_latency, tuned_text, tuned_latency],
                api_name="compare",
            )
        with gr.Tab("Rate", id="rate"), gr.Column(elem_id="rate"):
            gr.Markdown(
                "Which reply would you send to this customer? The two replies come from two models in a random "
                "order; which is which is shown once your vote is stored."
            )
            rater = gr.Textbox(label="Your name", elem_id="rate-rater", max_lines=1)
            rate_query = gr.Textbox(
                label="Customer query (leave empty for the next test query)", elem_id="rate-query", max_lines=4
            )
            rate_tokens = gr.Slider(16, slider_max, value=cap, step=8, label="Max reply tokens")
            next_pair = gr.Button("Next pair", variant="primary", elem_id="rate-next")
            shown_query = gr.Markdown(elem_id="rate-shown-query")
            with gr.Row():
                reply_a = gr.Textbox(label="Reply A", lines=8, elem_id="rate-a", interactive=False)
                reply_b = gr.Textbox(label="Reply B", lines=8, elem_id="rate-b", interactive=False)
            reasons = gr.CheckboxGroup(list(REASONS), label="Why (optional)", elem_id="rate-reasons")
            with gr.Row():
                vote_buttons = {c: gr.Button(label, elem_id=f"rate-{c}") for c, label in CHOICE_LABELS.items()}
            verdict = gr.Markdown(elem_id="rate-verdict")
            shown_pair = gr.State(None)  # the stored pair's id, kept on the server: the page never holds the variants

            def on_next(typed, tokens):
                try:
                    pair = rating.new_pair(typed, tokens)
                except SupportBenchError as err:
                    return f"⚠️ {err}", "", "", None, "", []
                return f"**Customer:** {pair.query}", pair.reply_a, pair.reply_b, pair.id, "", []

            next_pair.click(
                on_next,
                inputs=[rate_query, rate_tokens],
                outputs=[shown_query, reply_a, reply_b, shown_pair, verdict, reasons],
                api_name=False,
            )
            for choice, button in vote_buttons.items():

                def on_vote(pair_id, name, why, choice=choice):
                    try:
                        return rating.vote(pair_id, name, choice, why or []), None
                    except SupportBenchError as err:
                        return f"⚠️ {err}", pair_id

                button.click(
                    on_vote, inputs=[shown_pair, rater, reasons], outputs=[verdict, shown_pair], api_name=False
                )
        with gr.Tab("Model Performance", id="performance"):
            gr.Markdown(performance_markdown(run_dir), elem_id="performance")
            if curve.is_file():
                gr.Image(str(curve), label="Loss curve", elem_id="loss-curve", interactive=False)
    app.queue(default_concurrency_limit=CONCURRENT_REQUESTS, max_size=64)  # the backend batches or serializes them
    return app


def require_free_port(port: int) -> None:
    """Refuse a port that is taken, before any model loads."""
    import socket

    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as err:
            raise SupportBenchError(
                f"port {port} on 127.0.0.1 is not free ({err.strerror}); pass another --port"
            ) from None


def serve(
    run_dir: Path,
    port: int = 7860,
    share: bool = False,
    backend: str = "auto",
    profile: str | None = None,
    ratings: Path | None = None,
    rate_against: Path | None = None,
    policy: str = "on",
) -> None:
    """Serve the app and the OpenAI-compatible /v1 routes on 127.0.0.1 (analytics off; a share link only if asked)."""
    require_free_port(port)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr
    import uvicorn
    from fastapi import FastAPI

    assistant = Assistant(Path(run_dir), serve=backend, max_batch=CONCURRENT_REQUESTS, profile=profile, policy=policy)
    print(f"serving {assistant.model_name}: {assistant.backend.description}, reply policy {policy}")
    against = None
    if rate_against is not None:  # the other run's model, served the same way, for the Rate tab only
        against = (
            Path(rate_against),
            Assistant(
                Path(rate_against), serve=backend, max_batch=CONCURRENT_REQUESTS, profile=profile, policy=policy
            ),
        )
    blocks = build_app(Path(run_dir), assistant, ratings, against)
    if share:  # a share link needs Gradio's own launcher, which serves the UI only
        blocks.launch(
            server_name="127.0.0.1", server_port=port, share=True, show_error=True, **file_access(Path(run_dir))
        )
        return
    api = FastAPI(title="SupportBench assistant")
    api.include_router(openai_routes(assistant))
    app = gr.mount_gradio_app(api, blocks, path="/", show_error=True, **file_access(Path(run_dir)))
    uvicorn.run(app, host="127.0.0.1", port=port)


def file_access(run_dir: Path) -> dict[str, Any]:
    """Gradio's file-serving settings, as tight as the app allows: no extra allowed paths, the run folder (adapter,
    data) and the model cache blocked, and no uploads (the app takes none)."""
    from supportbench.models import cache_root

    blocked = [run_dir.resolve(), cache_root().resolve()]
    return {"allowed_paths": [], "blocked_paths": [str(p) for p in blocked], "max_file_size": UPLOAD_LIMIT}

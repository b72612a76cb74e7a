"""The assistant behind the app and the API: the run's exported model when there is one (CTranslate2, concurrent
requests batched), else one shared transformers base model with the LoRA adapter switched per request."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import StoppingCriteria, StoppingCriteriaList, StopStringCriteria

from supportbench.decoding import serving_decoding
from supportbench.deploy import runtime
from supportbench.deploy.export import exported_format
from supportbench.facts.profile import profile_for_run
from supportbench.facts.slots import StreamingFiller
from supportbench.files import SupportBenchError, read_json
from supportbench.layout import RunDir
from supportbench.models import load_model
from supportbench.serve.policy import ReplyPolicy
from supportbench.templates import MAX_HISTORY_TURNS, Turn, get_template

MAX_QUERY_CHARS = 4000
MAX_HISTORY_CHARS = 16000
GENERATION_THREAD = "supportbench-generate"


@dataclass
class Chunk:
    """The reply so far; the last chunk of a reply carries why it ended: "stop" (end of turn) or "length" (the cap)."""

    text: str
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    reason: str = "model"  # the reply policy's reason code (policy.REASONS), for operators, on the last chunk
    changes: tuple[str, ...] = ()  # what the policy did to the reply, on the last chunk


@dataclass
class Reply:
    """A finished reply with its latency figures."""

    text: str
    seconds: float
    ttft_seconds: float | None
    reason: str = "model"


class StopWhenSet(StoppingCriteria):
    """Stop generating once an event is set: the consumer of a streamed reply went away."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


class TorchBackend:
    """transformers fp32: one base model with the LoRA adapter, switched off for base answers; one request at a time."""

    def __init__(self, run: RunDir, model_name: str, controls: dict[str, Any]):
        from peft import PeftModel

        base, self.tokenizer = load_model(model_name)
        self.model = PeftModel.from_pretrained(base, run.adapter).eval()
        self.context_limit = getattr(base.config, "max_position_embeddings", None)
        self.controls = controls
        # the adapter switch is shared state: one generation at a time, held by the worker only
        self.lock = threading.Lock()
        self.description = "transformers float32 with the LoRA adapter, one request at a time"

    def prepare(self, stops: list[str]) -> None:
        """Build the stop-string criteria once, so a tokenizer that cannot map the stops fails at startup."""
        self.stop_at_text = StopStringCriteria(self.tokenizer, stops)

    def texts(self, prompt: str, finetuned: bool, max_new_tokens: int, cancel: threading.Event) -> Iterator[str]:
        """Yield the raw generated text as it grows; the worker stops at the stops, the cap or the cancel flag."""
        from transformers import TextIteratorStreamer

        inputs = self.tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to(self.model.device)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=False)
        kwargs = dict(
            **inputs,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            **self.controls,
            streamer=streamer,
            pad_token_id=self.tokenizer.pad_token_id,
            stopping_criteria=StoppingCriteriaList([self.stop_at_text, StopWhenSet(cancel)]),
        )
        errors: list[BaseException] = []
        worker = threading.Thread(
            target=self._generate, args=(kwargs, finetuned, cancel, errors), name=GENERATION_THREAD, daemon=True
        )
        worker.start()
        try:
            text = ""
            for piece in streamer:
                text += piece
                yield text
        finally:
            cancel.set()  # reply complete, or the consumer left: either way, no more tokens
            worker.join()
        if errors:
            raise errors[0]

    def _generate(
        self, kwargs: dict[str, Any], finetuned: bool, cancel: threading.Event, errors: list[BaseException]
    ) -> None:
        try:
            with self.lock:
                if cancel.is_set():  # the consumer left while this request waited for the model
                    kwargs["streamer"].end()
                    return
                if finetuned:
                    self.model.generate(**kwargs)
                else:
                    with self.model.disable_adapter():
                        self.model.generate(**kwargs)
        except BaseException as err:  # noqa: BLE001 - re-raised in the caller's thread
            errors.append(err)
            kwargs["streamer"].end()


class ExportedBackend:
    """The run's CTranslate2 int8 export, fine-tuned and base; requests that arrive together are decoded as one batch."""

    def __init__(self, run: RunDir, max_batch: int, controls: dict[str, Any]):
        tuned, self.tokenizer = runtime.load_exported(run.exported(runtime.FORMAT))
        base = runtime.load_generator(run.exported(runtime.FORMAT, "base"))
        self.batchers = {
            finetuned: runtime.DynamicBatcher(generator, max_batch, controls=controls)
            for finetuned, generator in ((True, tuned), (False, base))
        }
        self.context_limit = read_json(run.merged / "config.json").get("max_position_embeddings")
        self.description = f"{runtime.FORMAT} (CTranslate2), concurrent requests batched up to {max_batch}"

    def prepare(self, stops: list[str]) -> None:
        """Stops are applied to the decoded text by the assistant; nothing to build."""

    def texts(self, prompt: str, finetuned: bool, max_new_tokens: int, cancel: threading.Event) -> Iterator[str]:
        """Yield the raw generated text as the batch decodes this request's tokens."""
        tokens = runtime.prompt_tokens(self.tokenizer, prompt)
        produced: list[int] = []
        try:
            for token_id in self.batchers[finetuned].stream(tokens, max_new_tokens, cancel):
                produced.append(token_id)
                yield self.tokenizer.decode(produced, skip_special_tokens=False)
        finally:
            cancel.set()


class Assistant:
    """Prompts, input checks and stop handling for streamed replies; the backend owns the weights."""

    def __init__(
        self,
        run_dir: Path,
        context_tokens: int = 1024,
        serve: str = "auto",
        max_batch: int = 8,
        profile: str | Path | None = None,
        policy: str = "on",
    ):
        run = RunDir(run_dir)
        trained = run.require_adapter()
        # the company facts replies are filled with; a slot the model can emit and the profile lacks fails here
        self.profile = profile_for_run(run.data, profile)
        self.policy = ReplyPolicy.for_run(run, self.profile, policy)  # None: raw model replies (--policy off)
        self.model_name = trained.base_model
        if serve not in ("auto", "exported", "transformers"):
            raise SupportBenchError(f"unknown serving backend {serve!r}; choose auto, exported or transformers")
        exported = exported_format(run.path) if serve != "transformers" else None
        if serve == "exported" and exported is None:
            raise SupportBenchError(
                f"{run.path} has no exported model; run `supportbench export --run {run.path}` first"
            )
        self.decoding = serving_decoding(run)  # the run's frozen decoding: its cap is the default reply length
        controls = self.decoding.controls()
        self.backend = (
            ExportedBackend(run, max_batch, controls) if exported else TorchBackend(run, self.model_name, controls)
        )
        self.tokenizer = self.backend.tokenizer
        self.template = get_template(trained.template)
        self.stops = self.template.stop_sequences(self.tokenizer)
        try:
            self.backend.prepare(self.stops)
        except ValueError as err:
            raise SupportBenchError(f"the tokenizer of {self.model_name} cannot match stop sequences: {err}") from err
        self.context_tokens = min(context_tokens, self.backend.context_limit or context_tokens)

    def check_query(self, query: str) -> str:
        """Clean a user query or raise a message for the user: empty, oversized, or turn-marker tricks."""
        text = self.template.sanitize((query or "").strip(), self.tokenizer)
        if not text:
            raise SupportBenchError("Please type a question for the support assistant.")
        if len(text) > MAX_QUERY_CHARS:
            raise SupportBenchError(
                f"Your message is {len(text):,} characters; the limit is {MAX_QUERY_CHARS:,}. Please shorten it."
            )
        return text

    def clean_history(self, history: list[Turn]) -> list[Turn]:
        """Past turns sanitised like the query (client-supplied history is untrusted), newest first within the caps."""
        kept: list[Turn] = []
        chars = 0
        for turn in reversed(history[-MAX_HISTORY_TURNS:]):
            customer = self.template.sanitize(turn.customer, self.tokenizer)
            agent = None if turn.agent is None else self.template.sanitize(turn.agent, self.tokenizer)
            chars += len(customer) + len(agent or "")
            if chars > MAX_HISTORY_CHARS:
                break
            kept.append(Turn(customer, agent))
        return kept[::-1]

    def _prompt_tokens(self, turns: list[Turn]) -> tuple[str, int]:
        text = self.template.prompt(turns, self.tokenizer)
        return text, len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def prompt(self, history: list[Turn], query: str, max_new_tokens: int) -> str:
        """The prompt for a new query after past turns, keeping the most recent turns that fit the context budget."""
        budget = self.context_tokens - max_new_tokens
        turns = [*history, Turn(query)]
        text, size = self._prompt_tokens(turns)
        if size <= budget:
            return text
        low, high = 1, len(turns) - 1  # drop turns[:k]; the prompt shrinks as k grows, so search k in log steps
        best = None
        while low <= high:
            middle = (low + high) // 2
            candidate, size = self._prompt_tokens(turns[middle:])
            if size <= budget:
                best, high = candidate, middle - 1
            else:
                low = middle + 1
        if best is None:
            raise SupportBenchError(
                f"Your message needs {size:,} tokens; the limit is {budget:,} "
                f"with {max_new_tokens} reply tokens. Please shorten it."
            )
        return best

    def generate(
        self,
        history: list[Turn],
        query: str,
        finetuned: bool,
        max_new_tokens: int,
        cancel: threading.Event | None = None,
    ) -> Iterator[Chunk]:
        """Yield the reply as it grows, cut at the template's stop sequences, its fact slots filled from the profile
        and the conversation (a slot still open is held back); the last chunk says why it ended.
        Generation stops at the next token once `cancel` is set (a server sets it when its client leaves) or when
        the generator is closed; it never waits for the garbage collector."""
        turns = self.clean_history(history)
        query = self.check_query(query)
        customer = [*(turn.customer for turn in turns), query]
        decision = self.policy.decide(customer) if self.policy else None
        if decision is not None and decision.reply is not None:  # the policy answers; the model is not asked
            yield Chunk(decision.reply, "stop", reason=decision.reason, changes=(decision.detail,))
            return
        prompt = self.prompt(turns, query, max_new_tokens)
        filler = StreamingFiller(customer, self.profile.values)
        cancel = cancel or threading.Event()
        raw, reply, stopped = "", "", False
        try:
            for raw in self.backend.texts(prompt, finetuned, max_new_tokens, cancel):
                cut, stopped = self.template.truncate(raw, self.tokenizer)
                reply = self._without_special_tokens(cut)
                if stopped:
                    break
                shown = filler.visible(reply).text
                yield Chunk(self.policy.screen(shown, decision, customer, final=False).text if decision else shown)
        finally:
            cancel.set()  # reply complete, or the consumer left: either way, no more tokens
        produced = self.count_tokens(raw)
        at_cap = not stopped and produced >= max_new_tokens
        shown = filler.visible(reply, final=True).text
        guarded = self.policy.screen(shown, decision, customer, final=True) if decision else None
        yield Chunk(
            guarded.text if guarded else shown,
            "length" if at_cap else "stop",
            self.count_tokens(prompt),
            produced,
            guarded.reason if guarded else "model",
            tuple(guarded.changes) if guarded else (),
        )

    def stream(
        self,
        history: list[Turn],
        query: str,
        finetuned: bool,
        max_new_tokens: int,
        cancel: threading.Event | None = None,
    ) -> Iterator[str]:
        """Yield the reply text as it grows (see generate)."""
        with closing(self.generate(history, query, finetuned, max_new_tokens, cancel)) as chunks:
            for chunk in chunks:
                yield chunk.text

    def count_tokens(self, text: str) -> int:
        """Tokens in a text, as the tokenizer counts them."""
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _without_special_tokens(self, text: str) -> str:
        for token in self.tokenizer.all_special_tokens:
            text = text.replace(token, "")
        return text.strip()

    def reply(self, history: list[Turn], query: str, finetuned: bool, max_new_tokens: int) -> Reply:
        """Generate a whole reply and time it (time to first token and end to end)."""
        started = time.perf_counter()
        first = None
        chunk = Chunk("")
        with closing(self.generate(history, query, finetuned, max_new_tokens)) as chunks:
            for chunk in chunks:
                if first is None and chunk.text:
                    first = time.perf_counter() - started
        return Reply(chunk.text, time.perf_counter() - started, first, chunk.reason)

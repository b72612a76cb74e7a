"""Company facts end to end: a run trained with --facts slots whose model emits `{{Slot}}`s, served by transformers,
by the exported model, over the OpenAI API and in a real browser, always filled, never showing half a slot."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil

import pytest
from helpers import build_replying_model, fixture_rows, post_json, serve_app, small_split, tiny_config, trained_copy

from supportbench.cli import main
from supportbench.deploy.export import export_run
from supportbench.facts.profile import load_profile
from supportbench.files import read_json, read_jsonl
from supportbench.layout import RunDir
from supportbench.serve.assistant import Assistant
from supportbench.trainers.lora import train

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
REPLY = "Your order {{Order Number}} is noted. Call {{Customer Support Phone Number}} or visit {{Website URL}}."
QUERY = "I want a refund for order 55501"
NEW_PHONE = "+1 212-555-0147"  # the profile swap: not the bundled profile's number, never in the training data
FILLED = f"Your order 55501 is noted. Call {NEW_PHONE} or visit www.example-shop.com."


@pytest.fixture(scope="module")
def slot_run(tmp_path_factory):
    """A run prepared with --facts slots, its tiny model answering every query with REPLY's slots, exported to
    CTranslate2; and a profile whose phone number differs from the one the run was prepared with."""
    root = tmp_path_factory.mktemp("slots")
    rows = [{**row, "response": REPLY} for row in fixture_rows()]
    small_split(root, root / "run" / "data", rows=rows, facts="slots")
    model = build_replying_model(root / "model", [row["instruction"] for row in rows], REPLY)
    train(tiny_config(model, max_steps=2, save_steps=2, learning_rate=1e-6), root / "run")  # keeps the behaviour
    profile = root / "profile.yaml"
    profile.write_text(json.dumps({**load_profile().values, "Customer Support Phone Number": NEW_PHONE}))
    export_run(root / "run", profile=profile)
    return RunDir(root / "run"), profile


@pytest.mark.parametrize("backend", ["transformers", "exported"])
def test_a_stream_fills_every_slot_from_the_new_profile_and_the_conversation(slot_run, backend):
    run, profile = slot_run
    assistant = Assistant(run.path, serve=backend, profile=profile)
    chunks = [chunk.text for chunk in assistant.generate([], QUERY, True, 48)]
    assert chunks[-1] == FILLED  # the new number with no retraining; the order number the customer gave
    assert len(chunks) > 3 and not any("{" in chunk or "ORD-" in chunk for chunk in chunks)
    assert all(b.startswith(a) for a, b in zip(chunks, chunks[1:], strict=False))  # text is never taken back


def test_export_copies_the_profile_it_checked_beside_the_models(slot_run):
    run, profile = slot_run
    assert run.export_profile.read_bytes() == profile.read_bytes()
    recorded = read_json(run.export_manifest)["profile"]
    assert recorded == {"source": str(profile), "sha256": hashlib.sha256(profile.read_bytes()).hexdigest()}


def test_eval_scores_the_filled_replies_and_counts_how_each_slot_was_filled(slot_run, tmp_path):
    from supportbench.config import EvalConfig
    from supportbench.evaluation.evaluator import evaluate_run

    run, profile = slot_run
    copy = RunDir(trained_copy(run.path, tmp_path / "run"))
    config = EvalConfig(limit=4, gen_batch_size=4, max_new_tokens=48, repetition_penalty=1.0, no_repeat_ngram_size=0)
    summary = evaluate_run(copy.path, dataclasses.replace(config, profile=str(profile)))
    fills = summary["slot_fills"]["finetuned"]
    assert (
        fills["company"] == 2 * 4 and fills.get("customer_from_conversation", 0) + fills.get("customer_phrase", 0) == 4
    )
    assert summary["metrics"]["finetuned"]["invented_facts"] == 0.0  # the new phone number is the profile's
    replies = [s["finetuned"] for s in read_jsonl(copy.eval.samples)]
    assert len(replies) == 4 and all(NEW_PHONE in r and "{" not in r for r in replies)


@pytest.mark.parametrize("command", ["app", "export", "bench", "bench serving", "eval"])
def test_every_command_refuses_a_profile_missing_a_slot_the_model_emits(slot_run, tmp_path, command, capsys):
    run, _ = slot_run
    lacking = tmp_path / "lacking.yaml"
    lacking.write_text("Customer Support Phone Number: 555-0100\n")
    assert main([*command.split(), "--run", str(run.path), "--profile", str(lacking)]) == 2
    error = capsys.readouterr().err
    assert "lacks" in error and "Website URL" in error and "Website Name" not in error  # only what the model emits


@pytest.fixture(scope="module")
def served(slot_run):
    run, profile = slot_run
    yield from serve_app(run.path, "--profile", str(profile))


def test_the_openai_api_streams_filled_replies(served):
    body = {"messages": [{"role": "user", "content": QUERY}], "max_tokens": 48, "stream": True}
    status, payload, _ = post_json(served + "v1/chat/completions", body)
    events = [line.removeprefix("data: ") for line in payload.decode().splitlines() if line.startswith("data: ")]
    deltas = [json.loads(e)["choices"][0]["delta"].get("content", "") for e in events[:-1]]
    # streamed sentence by sentence: the reply policy releases whole sentences only (FILLED has two)
    assert status == 200 and events[-1] == "[DONE]" and len([d for d in deltas if d]) == 2
    assert "".join(deltas) == FILLED and not any("{" in delta for delta in deltas)


@pytest.mark.e2e
@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")
def test_the_app_streams_filled_replies_in_a_browser(served):
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page()
        page.goto(served)
        expect(page.get_by_text("ctranslate2-int8")).to_be_visible(timeout=60_000)  # the exported model serves
        expect(page.locator("#chatbot")).to_be_attached(timeout=60_000)  # Gradio renders components one by one
        # every text the chat shows while the reply streams, recorded on each change of the page
        page.evaluate(
            """() => { window.seen = [];
            new MutationObserver(() => window.seen.push(document.querySelector('#chatbot').innerText))
              .observe(document.querySelector('#chatbot'), {subtree: true, childList: true, characterData: true}); }"""
        )
        page.locator("#chat-input textarea").fill(QUERY)
        page.locator("#chat-send").click()
        expect(page.locator("#chatbot")).to_contain_text(FILLED, timeout=60_000)
        seen = page.evaluate("window.seen")
        browser.close()
    shown = [text.replace(QUERY, "") for text in seen]
    assert len(set(shown)) > 3 and not any("{" in text for text in shown)

"""Export, the exported runtime, its batching, its paired score, and the OpenAI-compatible endpoint."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import torch
from fastapi import FastAPI
from fastapi.testclient import TestClient
from helpers import trained_copy
from transformers import AutoModelForCausalLM

from supportbench.config import EvalConfig
from supportbench.deploy import runtime
from supportbench.deploy.export import export_run, exported_format
from supportbench.evaluation.evaluator import evaluate_run, score_exported
from supportbench.files import SupportBenchError, read_json
from supportbench.layout import RunDir
from supportbench.serve.assistant import Assistant
from supportbench.serve.openai_api import MAX_TOKENS_LIMIT, openai_routes


@pytest.fixture(scope="module")
def exported_run(tiny_run, tmp_path_factory) -> RunDir:
    """A copy of the tiny run, evaluated on a few examples and exported to CTranslate2 int8."""
    run = RunDir(tmp_path_factory.mktemp("exported") / "run")
    trained_copy(tiny_run, run.path)
    evaluate_run(run.path, EvalConfig(limit=6, gen_batch_size=6, max_new_tokens=12))
    export_run(run.path)
    return run


@pytest.fixture(scope="module")
def assistant(exported_run) -> Assistant:
    return Assistant(exported_run.path, max_batch=4)


def test_export_writes_a_merged_folder_equal_to_the_adapter_and_a_runtime_model(exported_run):
    manifest = read_json(exported_run.export_manifest)
    assert set(manifest["formats"]) == {"merged", runtime.FORMAT}
    assert manifest["formats"][runtime.FORMAT]["quantization"] == "int8"
    assert exported_format(exported_run.path) == runtime.FORMAT
    merged = AutoModelForCausalLM.from_pretrained(exported_run.merged).eval()
    lora, tokenizer = exported_run.load_variant("lora")
    inputs = tokenizer("please help me cancel order", return_tensors="pt")
    with torch.no_grad():
        assert torch.allclose(merged(**inputs).logits, lora(**inputs).logits, atol=1e-4)
    generator = runtime.load_generator(exported_run.exported(runtime.FORMAT))
    [new] = runtime.generate(generator, [runtime.prompt_tokens(tokenizer, "please help me cancel order")], 5)
    assert 1 <= len(new) <= 5


def test_export_refuses_runs_without_adapter_and_unsupported_architectures(tiny_run, tmp_path):
    bare = trained_copy(tiny_run, tmp_path / "bare", "adapter")
    with pytest.raises(SupportBenchError, match="no LoRA adapter"):
        export_run(bare)
    from transformers import GPTNeoConfig, GPTNeoForCausalLM

    config = GPTNeoConfig(vocab_size=64, hidden_size=16, num_layers=2, num_heads=2, attention_types=[[["global"], 2]])
    GPTNeoForCausalLM(config).save_pretrained(tmp_path / "gptneo")
    with pytest.raises(SupportBenchError, match="CTranslate2 cannot convert .*GPTNeo"):
        runtime.convert(tmp_path / "gptneo", tmp_path / "out")
    with pytest.raises(SupportBenchError, match="unknown export format"):
        export_run(tiny_run, to="gguf")


def test_a_corrupted_or_stale_export_is_a_clear_error(exported_run, tmp_path):
    broken = RunDir(tmp_path / "broken")
    trained_copy(exported_run.path, broken.path)
    model_bin = broken.exported(runtime.FORMAT) / "model.bin"
    model_bin.write_bytes(model_bin.read_bytes()[:1000])
    with pytest.raises(SupportBenchError, match="cannot be loaded"):
        runtime.load_generator(broken.exported(runtime.FORMAT))
    model_bin.unlink()
    with pytest.raises(SupportBenchError, match="incomplete .*model.bin"):
        Assistant(broken.path)
    (broken.adapter / "adapter_model.safetensors").write_bytes(b"another adapter")
    with pytest.raises(SupportBenchError, match="exported from another adapter"):
        exported_format(broken.path)
    with pytest.raises(SupportBenchError, match="no exported model"):
        Assistant(trained_copy(exported_run.path, tmp_path / "plain", "export"), serve="exported")


def test_the_exported_model_is_scored_and_paired_with_the_fp32_eval(exported_run, tmp_path):
    summary = score_exported(exported_run.path)
    fp32 = read_json(exported_run.eval.metrics)
    assert summary["n"] == fp32["n"]["finetuned"]["generation"] == summary["rougeL_difference"]["n"]
    assert summary["metrics"]["fp32"]["rougeL"] == fp32["metrics"]["finetuned"]["rougeL"]
    d = summary["rougeL_difference"]
    assert d["low"] <= d["mean"] <= d["high"]
    exported = [json.loads(line) for line in exported_run.exported_eval.samples.read_text().splitlines()]
    mean = sum(s["rougeL"] for s in exported) / len(exported)
    assert summary["metrics"]["exported"]["rougeL"] == pytest.approx(mean)
    with pytest.raises(SupportBenchError, match="no eval to pair"):
        score_exported(trained_copy(exported_run.path, tmp_path / "uneval", "eval"))


def test_concurrent_requests_are_batched_and_a_closed_stream_leaves_the_others(assistant):
    batcher = assistant.backend.batchers[True]
    before = len(batcher.batch_sizes)
    replies: dict[int, str] = {}
    start = threading.Barrier(4)

    def ask(i: int) -> None:
        start.wait()
        replies[i] = assistant.reply([], f"please help me cancel order {i}", finetuned=True, max_new_tokens=24).text

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert sorted(replies) == [0, 1, 2, 3]
    assert max(batcher.batch_sizes[before:]) > 1  # served together, not one after another
    stream = assistant.stream([], "please help me cancel order", finetuned=True, max_new_tokens=200)
    next(stream)
    stream.close()  # the client left: its row stops, and the batcher takes the next request
    assert assistant.reply([], "where is my refund", finetuned=False, max_new_tokens=8).seconds > 0


@pytest.fixture(scope="module")
def client(assistant) -> TestClient:
    api = FastAPI()
    api.include_router(openai_routes(assistant))
    return TestClient(api)


def test_chat_completions_answers_like_openai(client):
    body = {
        "model": "supportbench",
        "messages": [{"role": "user", "content": "please help me cancel order"}],
        "max_tokens": 8,
    }
    answer = client.post("/v1/chat/completions", json=body).json()
    assert answer["object"] == "chat.completion" and answer["choices"][0]["message"]["role"] == "assistant"
    assert answer["choices"][0]["finish_reason"] in ("stop", "length")
    usage = answer["usage"]
    assert usage["prompt_tokens"] > 0 and 0 < usage["completion_tokens"] <= 8
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert [m["id"] for m in client.get("/v1/models").json()["data"]] == ["supportbench", "supportbench-base"]


def test_chat_completions_streams_server_sent_events(client):
    messages = [
        {"role": "system", "content": "ignored: the run's template has its own"},
        {"role": "user", "content": "please help me cancel order"},
        {"role": "assistant", "content": "Sure, which order?"},
        {"role": "user", "content": [{"type": "text", "text": "the last one"}]},
    ]
    body = {"model": "supportbench-base", "messages": messages, "max_tokens": 6, "stream": True}
    with client.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line.removeprefix("data: ") for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == "supportbench-base" for c in chunks)
    assert (
        chunks[-1]["choices"][0]["finish_reason"] in ("stop", "length")
        and chunks[-1]["usage"]["completion_tokens"] <= 6
    )


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"messages": []}, "messages must be a non-empty list"),
        ({"messages": [{"role": "user", "content": "hi"}], "model": "gpt-4"}, "unknown model"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, "role must be one of"),
        ({"messages": [{"role": "assistant", "content": "hi"}]}, "last non-system message must come from the user"),
        ({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}, "must alternate"),
        ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}, "max_tokens must be an integer"),
        ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": MAX_TOKENS_LIMIT + 1}, "max_tokens must be"),
        ({"messages": [{"role": "user", "content": "   "}]}, "Please type a question"),
        ({"messages": [{"role": "user", "content": "refund " * 1000}]}, "the limit is"),
        ({"messages": [{"role": "user", "content": 42}]}, "content must be a string"),
    ],
)
def test_chat_completions_rejects_bad_requests_with_openai_errors(client, body, message):
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert message in error["message"] and error["type"] == "invalid_request_error"


def test_chat_completions_rejects_malformed_json(client):
    response = client.post("/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 400 and "not valid JSON" in response.json()["error"]["message"]


def test_the_exported_assistant_says_what_serves_it(assistant, exported_run):
    assert runtime.FORMAT in assistant.backend.description
    plain = Assistant(exported_run.path, serve="transformers")
    assert "transformers" in plain.backend.description


def test_export_reuses_a_matching_export(exported_run):
    before = exported_run.export_manifest.stat().st_mtime_ns
    export_run(exported_run.path)
    assert exported_run.export_manifest.stat().st_mtime_ns == before
    assert Path(read_json(exported_run.export_manifest)["formats"]["merged"]["path"]) == exported_run.merged


def test_serving_load_measures_every_arm_for_each_user_count(exported_run):
    from supportbench.bench.serving import SERVING_ARMS, serving_load

    result = serving_load(exported_run.path, users=(1, 3), max_new_tokens=6)
    arms = result["arms"]
    assert [(a["backend"], a["max_batch"]) for a in arms[::2]] == list(SERVING_ARMS)
    assert [a["users"] for a in arms] == [1, 3] * len(SERVING_ARMS)
    assert all(0 < a["tokens"] <= 6 * a["users"] and a["reply_p95_s"] >= a["reply_p50_s"] for a in arms)
    assert [a["throughput_vs_transformers"] for a in arms[:2]] == [1.0, 1.0]
    assert read_json(exported_run.serving_load) == result


def test_export_removes_the_folders_a_killed_export_left(tiny_run, tmp_path):
    run = RunDir(trained_copy(tiny_run, tmp_path / "run"))
    stale = run.export_dir / ".merged.k1ll3d.partial"
    stale.mkdir(parents=True)
    (stale / "model.safetensors").write_bytes(b"half")
    export_run(run.path, to="merged")
    assert not stale.exists() and (run.merged / "config.json").is_file()


def test_an_export_record_of_the_wrong_shape_is_named_and_exported_over(tiny_run, tmp_path):
    run = RunDir(trained_copy(tiny_run, tmp_path / "run"))
    run.export_manifest.parent.mkdir(parents=True)
    run.export_manifest.write_text("{}")
    with pytest.raises(SupportBenchError, match="export.json is not a valid ExportRecord"):
        exported_format(run.path)
    manifest = export_run(run.path, to="merged")
    assert "merged" in manifest["formats"] and read_json(run.export_manifest)["adapter_sha256"]

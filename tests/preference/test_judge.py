"""supportbench judge against real OpenAI-compatible HTTP servers: SupportBench's own /v1 serving the tiny model
(its answers name no verdict: all counted unparseable), and small scripted servers whose fixed verdicts give the
swap logic a known answer."""

from __future__ import annotations

import json
import random
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from helpers import serve_app, trained_copy

from supportbench.cli import main
from supportbench.files import read_json
from supportbench.layout import RunDir
from supportbench.preference.store import PreferenceStore

pytest.importorskip("openai")


def _store_pairs(run: RunDir, count: int, voted: bool = True) -> PreferenceStore:
    store = PreferenceStore(run.ratings_store)
    rng = random.Random(0)
    for i in range(count):
        pair = store.add_pair(f"query {i}", {"base": f"base reply {i}", "finetuned": f"finetuned reply {i}"}, {}, rng)
        if voted:  # the person prefers the fine-tuned reply
            store.vote(pair.id, "ana", "A" if pair.variant_a == "finetuned" else "B")
    return store


class Scripted(BaseHTTPRequestHandler):
    """A chat-completions server whose answer comes from `answer(prompt)`; it records each request's key."""

    answer = staticmethod(lambda prompt: "A")
    fail_first = 0
    seen_keys: list[str] = []
    calls = 0

    def do_POST(self):  # noqa: N802 - the http.server hook
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen_keys.append(self.headers.get("Authorization", ""))
        type(self).calls += 1
        if type(self).calls <= type(self).fail_first:
            self.send_response(500)
            self.end_headers()
            return
        content = type(self).answer(body["messages"][-1]["content"])
        payload = {
            "id": "x",
            "object": "chat.completion",
            "created": 0,
            "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        }
        data = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def scripted():
    """Start a scripted server; yield (its /v1 URL, the handler class to script)."""
    handler = type("Handler", (Scripted,), {"seen_keys": [], "calls": 0, "fail_first": 0})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1", handler
    server.shutdown()


def _judge(run: RunDir, url: str, *extra: str) -> int:
    return main(["judge", "--run", str(run.path), "--endpoint", url, "--model", "scripted", "--pairs", "4", *extra])


def test_a_judge_that_always_says_a_flips_with_the_order_and_every_vote_is_a_tie(tmp_path, scripted):
    url, handler = scripted
    run = RunDir(tmp_path / "run")
    store = _store_pairs(run, 4)
    assert _judge(run, url) == 0
    result = read_json(run.eval.judge)
    assert result["pairs"] == 4 and result["votes_stored"] == 4 and result["position_flips"] == 4
    assert result["position_flip_rate"] == 1.0 and handler.calls == 8  # both orders of every pair
    judged = [v for v in store.votes() if v["rater"] == "judge:scripted"]
    assert [v["choice"] for v in judged] == ["tie"] * 4


def test_a_consistent_judge_votes_for_the_reply_it_prefers_and_agrees_with_the_people(tmp_path, scripted, capsys):
    url, handler = scripted

    def prefer_finetuned(prompt: str) -> str:  # the reply that says "finetuned", wherever it is shown
        return "A" if prompt.index("finetuned reply") < prompt.index("base reply") else "B"

    handler.answer = staticmethod(prefer_finetuned)
    run = RunDir(tmp_path / "run")
    store = _store_pairs(run, 4)
    assert _judge(run, url) == 0
    result = read_json(run.eval.judge)
    assert result["position_flips"] == 0 and result["votes_stored"] == 4
    judged = {v["pair"]: v for v in store.votes() if v["rater"] == "judge:scripted"}
    assert all((v["variant_a"] if v["choice"] == "A" else v["variant_b"]) == "finetuned" for v in judged.values())
    assert result["agreement"]["shared_pairs"] == 4 and result["agreement"]["agreement"]["mean"] == 1.0
    assert "agrees with the people on 100% of 4 pairs" in capsys.readouterr().out
    assert main(["ratings", "--run", str(run.path)]) == 0
    out = capsys.readouterr().out
    assert "4 votes by 1 rater(s)" in out and "4 model-judge votes, kept apart" in out
    assert "judge:scripted agrees with the people on 100%" in out


def test_garbage_is_counted_never_guessed_errors_are_retried_and_the_key_is_written_nowhere(
    tmp_path, scripted, monkeypatch
):
    url, handler = scripted
    handler.answer = staticmethod(lambda prompt: "Both have merits. A or B? Hard to say.")  # names two verdicts
    handler.fail_first = 2  # two server errors, retried by the client with backoff
    run = RunDir(tmp_path / "run")
    store = _store_pairs(run, 4)
    monkeypatch.setenv("JUDGE_KEY", "sk-test-7c1f9b")
    assert _judge(run, url, "--api-key-env", "JUDGE_KEY") == 0
    result = read_json(run.eval.judge)
    assert result["unparseable"] == 8 and result["votes_stored"] == 0 and result["errors"] == 0
    assert handler.calls == 10 and set(handler.seen_keys) == {"Bearer sk-test-7c1f9b"}
    assert not [v for v in store.votes() if v["rater"].startswith("judge:")]
    for path in (run.eval.judge, run.ratings_store):
        assert b"sk-test-7c1f9b" not in path.read_bytes()
    monkeypatch.delenv("JUDGE_KEY")
    assert _judge(run, url, "--api-key-env", "JUDGE_KEY") == 2


def test_a_server_that_keeps_failing_is_recorded_as_errors(tmp_path, scripted):
    url, handler = scripted
    handler.fail_first = 10_000
    run = RunDir(tmp_path / "run")
    _store_pairs(run, 1)
    assert main(["judge", "--run", str(run.path), "--endpoint", url, "--model", "m", "--pairs", "1"]) == 0
    result = read_json(run.eval.judge)
    assert result["errors"] == 2 and result["votes_stored"] == 0
    assert "InternalServerError" in result["answers"][0]["as_shown"]["error"]


def test_the_judge_runs_against_supportbenchs_own_v1_serving_the_tiny_model(tiny_run, tmp_path):
    run = RunDir(trained_copy(tiny_run, tmp_path / "run"))
    _store_pairs(run, 3)
    for url in serve_app(run.path):
        argv = ["judge", "--run", str(run.path), "--endpoint", url + "v1", "--model", "supportbench", "--pairs", "5"]
        assert main(argv) == 0  # 3 stored pairs, 2 new ones made from test queries
    result = read_json(run.eval.judge)
    assert result["pairs"] == 5 and result["errors"] == 0
    assert result["unparseable"] + 2 * result["votes_stored"] == 10  # a tiny random model names no verdict, or one
    assert all(a["as_shown"]["answer"] is not None for a in result["answers"])

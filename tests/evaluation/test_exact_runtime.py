"""Eval on CTranslate2 float32: used only where it scores exactly as transformers, checked at every eval."""

from __future__ import annotations

import sys

from helpers import trained_copy

from supportbench.config import EvalConfig
from supportbench.evaluation import exact_runtime
from supportbench.evaluation.evaluator import evaluate_run
from supportbench.files import read_json, read_jsonl
from supportbench.layout import RunDir

CONFIG = dict(limit=4, gen_batch_size=4, max_new_tokens=8, ppl_limit=6)


def test_the_exact_runtime_scores_as_transformers_and_shares_its_cache(tiny_run, tmp_path):
    fast = evaluate_run(trained_copy(tiny_run, tmp_path / "fast"), EvalConfig(**CONFIG, backend="ct2"))
    slow = evaluate_run(trained_copy(tiny_run, tmp_path / "slow"), EvalConfig(**CONFIG))
    used = fast["runtime"]["finetuned"]
    assert used["generation"] == used["perplexity"] == exact_runtime.NAME, used
    assert used["checks"]["greedy"] == {"requests": 4, "identical_replies": 4, "exact": True}  # limit=4 < 8
    assert used["checks"]["loglikelihood"]["requests"] == exact_runtime.CHECK_REQUESTS
    assert slow["runtime"]["finetuned"] == {"generation": "transformers", "perplexity": "transformers"}
    generation = [m for m in fast["metrics"]["finetuned"] if not m.startswith("perplexity")]
    assert {m: fast["metrics"]["finetuned"][m] for m in generation} == {
        m: slow["metrics"]["finetuned"][m] for m in generation
    }
    for metric in ("perplexity", "perplexity_fulltext"):
        assert abs(fast["metrics"]["finetuned"][metric] / slow["metrics"]["finetuned"][metric] - 1) < 1e-4
    replies = [[s["finetuned"] for s in read_jsonl(RunDir(tmp_path / name).eval.samples)] for name in ("fast", "slow")]
    assert replies[0] == replies[1]
    assert slow["base_scores"]["from_cache"] and slow["base_scores"]["key"] == fast["base_scores"]["key"]
    checks = read_json(RunDir(tmp_path / "fast").decoding)["runtime"]["checks"]
    assert checks["greedy"]["exact"]  # greedy validation replies came from the checked runtime
    assert checks["no_repeat_ngram_size=6"] == {"exact": False, "reason": exact_runtime.CONTROLS_DIFFER}


def test_a_failed_check_falls_back_to_transformers_and_says_so(tiny_run, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(exact_runtime, "LOGLIK_RTOL", -1.0)  # no agreement can pass
    result = evaluate_run(trained_copy(tiny_run, tmp_path / "run"), EvalConfig(**CONFIG, backend="ct2"))
    used = result["runtime"]["finetuned"]
    assert used["perplexity"] == "transformers" and used["checks"]["loglikelihood"]["exact"] is False
    assert "eval falls back to transformers for loglikelihood" in capsys.readouterr().out


def test_without_ctranslate2_eval_runs_on_transformers_and_says_why(tiny_run, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ctranslate2", None)  # what find_spec reports for a package not installed
    result = evaluate_run(trained_copy(tiny_run, tmp_path / "run"), EvalConfig(**CONFIG, backend="ct2"))
    assert result["runtime"]["finetuned"] == {"generation": "transformers", "perplexity": "transformers"}
    assert "eval runs on transformers: CTranslate2 is not installed" in capsys.readouterr().out

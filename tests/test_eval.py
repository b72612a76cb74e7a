"""Eval: the lm-eval tasks run from the plain CLI and the Python API, leakage is refused, results repeat."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from supportbench.config import EvalConfig
from supportbench.io import SupportBenchError, read_json, write_json
from supportbench.scoring import evaluate_run, table_lines
from supportbench.tasks import include_path


def test_plain_lm_eval_cli_runs_both_tasks(tiny_run, tiny_model_dir, tmp_path):
    metadata = json.dumps({"data_dir": str(tiny_run / "data"), "template": "seed"})
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "lm_eval",
            "--include_path",
            str(include_path()),
            "--tasks",
            "customer_support",
            "--model",
            "hf",
            "--model_args",
            f"pretrained={tiny_model_dir},peft={tiny_run / 'adapter'},dtype=float32",
            "--device",
            "cpu",
            "--limit",
            "5",
            "--metadata",
            metadata,
            "--output_path",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    for metric in ("rougeL", "bleu", "runon", "placeholder_leak", "perplexity", "perplexity_fulltext"):
        assert metric in result.stdout, metric
    results = json.loads(next((tmp_path / "out").rglob("results_*.json")).read_text())["results"]
    assert results["customer_support_ppl"]["perplexity,none"] > 1.0


def test_lm_eval_lists_the_three_tasks():
    result = subprocess.run(
        [sys.executable, "-m", "lm_eval", "ls", "tasks", "--include_path", str(include_path())],
        capture_output=True,
        text=True,
        timeout=300,
    )
    for name in ("customer_support_gen", "customer_support_ppl", "customer_support"):
        assert f"|{name} " in result.stdout.replace("| ", "|"), name


def test_eval_writes_results_and_repeats_exactly(tiny_run):
    config = EvalConfig(limit=4, gen_batch_size=4, max_new_tokens=8)
    first = evaluate_run(tiny_run, config)
    assert first["n"]["base"]["generation"] == 4 and first["n"]["base"]["perplexity"] == 16
    assert first["leakage_check"]["shared_instructions"] == 0
    samples = [json.loads(line) for line in (tiny_run / "eval" / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 4 and {"query", "reference", "base", "finetuned"} <= set(samples[0])
    categories = read_json(tiny_run / "eval" / "per_category.json")["base"]
    assert sum(c["n"] for c in categories.values()) == 4
    second = evaluate_run(tiny_run, config)
    assert first["metrics"] == second["metrics"]
    assert "perplexity_fulltext" in "\n".join(table_lines(first))


def test_eval_refuses_a_split_that_is_not_the_trained_one(tiny_run, tmp_path):
    changed = tmp_path / "changed"
    shutil.copytree(tiny_run, changed)
    manifest = read_json(changed / "data" / "manifest.json")
    manifest["splits"]["train"]["sha256"] = "0" * 64
    write_json(changed / "data" / "manifest.json", manifest)
    with pytest.raises(SupportBenchError, match="is not the train split its manifest describes"):
        evaluate_run(changed, EvalConfig(limit=2))
    shutil.copy(tiny_run / "data" / "manifest.json", changed / "data" / "manifest.json")
    trained = read_json(changed / "train.json")
    trained["data"]["train"] = "0" * 64
    write_json(changed / "train.json", trained)
    with pytest.raises(SupportBenchError, match="no longer holds the split the adapter was trained on"):
        evaluate_run(changed, EvalConfig(limit=2))


def test_eval_needs_a_finished_run(tmp_path: Path):
    with pytest.raises(SupportBenchError, match="no finished training run"):
        evaluate_run(tmp_path, EvalConfig())


def test_another_base_model_is_scored_alone(tiny_run, tiny_model_dir, tmp_path, monkeypatch):
    registry = tmp_path / "models.yaml"
    registry.write_text(f"other-tiny:\n  path: {tiny_model_dir}\n  template: chat\n")
    monkeypatch.setenv("SUPPORTBENCH_REGISTRY", str(registry))
    summary = evaluate_run(tiny_run, EvalConfig(limit=2, gen_batch_size=2, max_new_tokens=4, base_model="other-tiny"))
    assert set(summary["metrics"]) == {"base"} and summary["template"] == "chat"
    assert read_json(tiny_run / "eval" / "base_models" / "other-tiny.json")["metrics"] == summary["metrics"]
    assert table_lines(summary)[0].startswith("other-tiny (base, chat template)")

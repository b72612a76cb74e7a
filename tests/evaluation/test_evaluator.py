"""eval: the lm-eval task, exact repeats, the leakage guard, cached base scores, decoding chosen on validation."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import tiny_config, trained_copy

from supportbench.cli import main
from supportbench.config import EvalConfig
from supportbench.decoding import Decoding, candidates
from supportbench.evaluation.evaluator import evaluate_run, table_lines
from supportbench.facts.profile import load_profile
from supportbench.files import SupportBenchError, read_json, write_json
from supportbench.layout import RunDir
from supportbench.reports.render import write_run_report
from supportbench.tasks import include_path
from supportbench.trainers.lora import train


@pytest.mark.e2e
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


def test_lm_eval_indexes_the_three_tasks():
    from lm_eval.tasks import TaskManager

    # the index `lm_eval ls tasks --include_path` prints, without its scan of lm-eval's own 10,000 task files
    index = TaskManager(include_path=str(include_path()), include_defaults=False).all_tasks
    assert {"customer_support_gen", "customer_support_ppl", "customer_support"} <= set(index)


def test_eval_writes_results_and_repeats_exactly(tiny_run):
    config = EvalConfig(limit=4, gen_batch_size=4, max_new_tokens=8)
    first = evaluate_run(tiny_run, config)
    assert first["n"]["base"]["generation"] == 4 and first["n"]["base"]["perplexity"] == 16
    assert first["leakage_check"]["shared_instructions"] == 0
    samples = [json.loads(line) for line in (tiny_run / "eval" / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 4 and {"query", "reference", "base", "finetuned"} <= set(samples[0])
    categories = read_json(tiny_run / "eval" / "per_category.json")["base"]
    assert sum(c["n"] for c in categories.values()) == 4
    stats = read_json(tiny_run / "eval" / "stats.json")
    rouge_l = stats["metrics"]["rougeL"]
    assert stats["n"] == 4 and rouge_l["finetuned"]["mean"] == pytest.approx(first["metrics"]["finetuned"]["rougeL"])
    assert rouge_l["difference"]["low"] <= rouge_l["difference"]["mean"] <= rouge_l["difference"]["high"]
    assert stats["metrics"]["bleu"]["finetuned"]["mean"] == pytest.approx(first["metrics"]["finetuned"]["bleu"])
    guarded = read_json(tiny_run / "eval" / "guarded.json")  # the fine-tuned replies through the reply policy
    assert guarded["n"] == 4 and sum(guarded["reasons"].values()) == 4 and guarded["false_refusal"]["n"] == 4
    assert guarded["scope"]["threshold"] == read_json(RunDir(tiny_run).scope_record)["threshold"]
    raw = guarded["metrics"]["rougeL"]["raw"]["mean"]
    assert raw == pytest.approx(stats["metrics"]["rougeL"]["finetuned"]["mean"])
    assert first["reply_policy"] == "on"
    second = evaluate_run(tiny_run, config)
    assert first["metrics"] == second["metrics"]
    assert (first["base_scores"]["from_cache"], second["base_scores"]["from_cache"]) == (False, True)
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


def test_a_new_adapter_on_the_same_base_reuses_the_base_scores(tiny_run, tiny_model_dir, tmp_path):
    config = EvalConfig(limit=3, gen_batch_size=3, max_new_tokens=6, ppl_limit=6)
    first = evaluate_run(trained_copy(tiny_run, tmp_path / "a"), config)
    other = tmp_path / "b"
    shutil.copytree(tiny_run / "data", other / "data")
    train(tiny_config(tiny_model_dir, seed=7, learning_rate=5e-3), other)
    second = evaluate_run(other, config)
    assert second["base_scores"] == {"from_cache": True, "key": first["base_scores"]["key"]}
    assert second["metrics"]["base"] == first["metrics"]["base"]
    assert second["metrics"]["finetuned"] != first["metrics"]["finetuned"]
    entry = next((Path(os.environ["SUPPORTBENCH_CACHE"]) / "scores").glob("*.json"))
    entry.write_text(entry.read_text().replace('"rougeL": ', '"rougeL": 0.5, "x": ', 1))  # tampered, still JSON
    assert evaluate_run(other, config)["base_scores"]["from_cache"] is False  # recomputed, never trusted
    # another setting, another key
    assert (
        evaluate_run(other, EvalConfig(limit=2, gen_batch_size=3, max_new_tokens=6, ppl_limit=6))["base_scores"][
            "from_cache"
        ]
        is False
    )


def test_an_adapter_that_changes_nothing_is_refused(tiny_run, tiny_model_dir, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    run = trained_copy(tiny_run, tmp_path / "run", "adapter")
    untrained = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir), LoraConfig(target_modules=["q_proj"])
    )
    untrained.save_pretrained(run / "adapter")  # LoRA B starts at zero: the model is exactly the base
    with pytest.raises(SupportBenchError, match="the adapter was not applied"):
        evaluate_run(run, EvalConfig(limit=2, gen_batch_size=2, max_new_tokens=4, ppl_limit=4))
    assert not (run / "eval" / "metrics.json").exists()


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


# 1. The leakage guard checks the exact bytes that are scored, not only the manifest.
def test_eval_refuses_a_test_file_edited_to_overlap_training_or_truncated(tiny_run, tmp_path, no_model_loads):
    run = RunDir(trained_copy(tiny_run, tmp_path / "run"))
    test_file = run.data.split_path("test")
    original = test_file.read_bytes()
    train_lines = run.data.split_path("train").read_text().splitlines()
    test_file.write_text("\n".join(train_lines[:5]) + "\n")
    with pytest.raises(SupportBenchError, match="not the test split its manifest describes"):
        evaluate_run(run.path, EvalConfig(limit=2))
    test_file.write_bytes(original[: len(original) // 2])
    with pytest.raises(SupportBenchError, match="not the test split its manifest describes"):
        evaluate_run(run.path, EvalConfig(limit=2))
    # a forged manifest hash for the edited file does not help: the overlap is counted in the rows themselves
    test_file.write_text("\n".join(train_lines[:5]) + "\n")
    manifest = run.data.manifest()
    manifest["splits"]["test"]["sha256"] = hashlib.sha256(test_file.read_bytes()).hexdigest()
    write_json(run.data.manifest_path, manifest)
    with pytest.raises(SupportBenchError, match="shares 5 normalized instruction"):
        evaluate_run(run.path, EvalConfig(limit=2))
    assert not run.eval.path.exists()


def test_the_task_refuses_bytes_other_than_the_checked_ones(tiny_run, tmp_path):
    from supportbench.tasks.customer_support import utils

    run = RunDir(trained_copy(tiny_run, tmp_path / "run"))
    checked = hashlib.sha256(run.data.split_path("test").read_bytes()).hexdigest()
    assert len(utils._rows({"data_dir": str(run.data.path), "sha256": checked})) == 16
    with open(run.data.split_path("test"), "a", encoding="utf-8") as handle:
        handle.write('{"id": "late", "instruction": "added after the check", "response": "x"}\n')
    with pytest.raises(SupportBenchError, match="changed after it was checked"):
        utils._rows({"data_dir": str(run.data.path), "sha256": checked})


# 5. Every precondition is checked before a model loads or a file is written.
def test_eval_preconditions_fail_before_any_model_loads(tiny_run, tmp_path, no_model_loads):
    run = RunDir(trained_copy(tiny_run, tmp_path / "run", "adapter"))
    with pytest.raises(SupportBenchError, match="no LoRA adapter"):
        evaluate_run(run.path, EvalConfig(limit=2))
    shutil.copytree(tiny_run / "adapter", run.adapter)
    with pytest.raises(SupportBenchError, match="TWCS file not found"):
        evaluate_run(run.path, EvalConfig(limit=2, twcs=str(tmp_path / "missing.csv")))
    header_only = tmp_path / "header.csv"
    header_only.write_text("tweet_id,author_id,inbound,created_at,text,response_tweet_id,in_response_to_tweet_id\n")
    with pytest.raises(SupportBenchError, match="header-only"):
        evaluate_run(run.path, EvalConfig(limit=2, twcs=str(header_only)))
    profile = tmp_path / "profile.yaml"  # a policy that must hand off Japanese without a Japanese message
    profile.write_text(load_profile().text.replace("languages: [en, es,", "languages: [ja, en, es,"))
    with pytest.raises(SupportBenchError, match=r"handoff\.ja"):
        evaluate_run(run.path, EvalConfig(limit=2, profile=str(profile)))
    assert not run.eval.path.exists()


def test_eval_chooses_decoding_on_validation_freezes_it_and_reports_replies_at_the_cap(tiny_run, tmp_path):
    run = RunDir(trained_copy(tiny_run, tmp_path / "run"))
    config = EvalConfig(limit=4, gen_batch_size=4, ppl_limit=4, max_new_tokens=6, validation_limit=3)
    first = evaluate_run(run.path, config)
    frozen = read_json(run.decoding)
    # a random tiny model never stops within 6 tokens: greedy fails the budget check, and no candidate fits either
    assert frozen["searched"] and frozen["why"].startswith("plain greedy fails the budget check on 3 validation")
    assert len(frozen["candidates"]) == len(candidates(6)) and frozen["validation_examples"] == 3
    assert {c["decoding"]["max_new_tokens"] for c in frozen["candidates"]} == {6}
    chosen = Decoding(**frozen["chosen"])
    assert first["decoding"]["source"].startswith("chosen on validation")
    assert {k: first["config"][k] for k in ("repetition_penalty", "no_repeat_ngram_size")} == {
        "repetition_penalty": chosen.repetition_penalty,
        "no_repeat_ngram_size": chosen.no_repeat_ngram_size,
    }
    for side in ("base", "finetuned"):
        assert 0.0 <= first["metrics"][side]["at_cap"] <= 1.0
    assert first["metrics"]["base"]["at_cap"] > 0  # a random tiny model never stops within 6 tokens
    assert (first["greedy_reference"] is None) == chosen.is_plain_greedy
    second = evaluate_run(run.path, dataclasses.replace(config, validation_limit=2))
    assert second["decoding"]["source"].startswith("frozen") and read_json(run.decoding) == frozen
    assert second["metrics"] == first["metrics"]


def test_eval_without_a_budget_in_an_old_run_asks_for_the_cap(tiny_run, tmp_path):
    run = RunDir(trained_copy(tiny_run, tmp_path / "run"))
    manifest = read_json(run.manifest_path)
    del manifest["reply_tokens"]
    run.manifest_path.write_text(__import__("json").dumps(manifest))
    with pytest.raises(SupportBenchError, match="no reply-token budget"):
        evaluate_run(run.path, EvalConfig(limit=2, gen_batch_size=2))


def test_a_failed_eval_leaves_the_old_eval_whole_and_a_mixed_folder_is_refused(
    tiny_run, tmp_path, monkeypatch, capsys
):
    import supportbench.files

    run = RunDir(trained_copy(tiny_run, tmp_path / "run"))
    first = evaluate_run(run.path, EvalConfig(limit=4, gen_batch_size=4, max_new_tokens=8))
    real = supportbench.files._write_temporary

    def disk_full_at_stats(path, data):
        if Path(path).name == "stats.json":
            raise SupportBenchError(f"cannot write {path}: No space left on device")
        return real(path, data)

    monkeypatch.setattr(supportbench.files, "_write_temporary", disk_full_at_stats)
    with pytest.raises(SupportBenchError, match="No space left"):
        evaluate_run(run.path, EvalConfig(limit=8, gen_batch_size=4, max_new_tokens=8))
    monkeypatch.undo()
    assert run.eval.summary().model_dump()["n"] == first["n"]  # every file is still the first eval's
    assert len(run.eval.samples.read_text().splitlines()) == 4
    run.eval.samples.write_text(run.eval.samples.read_text().splitlines()[0] + "\n")  # a mixed folder
    assert main(["gate", "--run", str(run.path)]) == 2
    assert "incomplete or mixed: samples.jsonl" in capsys.readouterr().err
    with pytest.raises(SupportBenchError, match="incomplete or mixed"):
        write_run_report(run.path)


@pytest.mark.parametrize(
    "damage, message",
    [
        ("truncate", "adapter_model.safetensors cannot be read"),
        ("empty", "adapter_model.safetensors cannot be read"),
        ("remove", "adapter_model.safetensors is missing"),
        ("config", "adapter_config.json"),
    ],
)
def test_a_damaged_adapter_is_named_by_eval_and_export(tiny_run, tmp_path, damage, message, capsys):
    run = RunDir(trained_copy(tiny_run, tmp_path / "run"))
    weights, config = run.adapter / "adapter_model.safetensors", run.adapter / "adapter_config.json"
    if damage == "truncate":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif damage == "empty":
        weights.write_bytes(b"")
    elif damage == "remove":
        weights.unlink()
    else:
        config.write_text('{"r": 8, "target_modules": [')
    for argv in (["eval", "--run", str(run.path), "--limit", "2"], ["export", "--run", str(run.path)]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert f"the adapter at {run.adapter} is damaged" in err and message in err and "Traceback" not in err

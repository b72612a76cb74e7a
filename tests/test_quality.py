"""Quality per CPU budget: the reply budget and end-of-turn check from training, decoding chosen on validation and
frozen, the at-cap metric, logits only where the loss needs them, and the Optuna sweep."""

from __future__ import annotations

import dataclasses
import functools
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import BITEXT, fixture_rows, small_split, tiny_config, trained_copy, write_csv

from supportbench.config import DataConfig, EvalConfig, SweepConfig, TrainConfig, read_config_file
from supportbench.decoding import Decoding, candidates, pick, reply_budget
from supportbench.io import SupportBenchError, read_json
from supportbench.run import RunDir
from supportbench.scoring import evaluate_run


def test_the_reply_budget_is_the_training_replies_p99_rounded_up_to_8():
    lengths = list(range(1, 201))
    budget = reply_budget(lengths)
    assert budget["p99"] == pytest.approx(198.01)
    assert budget["max_new_tokens"] == 200 and budget["max"] == 200


def test_training_records_the_reply_budget_and_that_completions_end_their_turn(tiny_run):
    manifest = RunDir(tiny_run).trained()
    budget, turn_end = manifest["reply_tokens"], manifest["turn_end"]
    assert budget["max_new_tokens"] % 8 == 0 and budget["max_new_tokens"] >= budget["p99"]
    assert turn_end["examples_ending_with_it"] + turn_end["cut_at_max_length"] == manifest["train_examples"]
    assert turn_end["examples_ending_with_it"] > 0


def test_completions_without_the_end_of_turn_token_are_refused(tiny_model_dir):
    from transformers import AutoTokenizer

    from supportbench.trainers.lora import check_turn_end

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    eos = tokenizer.eos_token_id
    fine = {"input_ids": [[5, 6, eos], [5, 6, 7, 8]], "labels": [[-100, 6, eos], [-100, 6, 7, 8]]}
    assert check_turn_end(fine, tokenizer, max_length=4) == {
        "token": tokenizer.eos_token,
        "examples_ending_with_it": 1,
        "cut_at_max_length": 1,  # cut at max_length: its end-of-turn token was truncated away
    }
    with pytest.raises(SupportBenchError, match="do not end their completion with the end-of-turn token"):
        check_turn_end({"input_ids": [[5, 6, 7]], "labels": [[-100, 6, 7]]}, tokenizer, max_length=8)


def test_logits_only_from_the_first_trained_position_give_trls_loss(tiny_model_dir, tiny_run):
    from supportbench.device import pick_device
    from supportbench.models import load_model
    from supportbench.trainers.lora import SpeedKnobs, make_trainer

    rows = RunDir(tiny_run).data.rows("train")[:4]
    losses, kept = [], []
    for completion_logits_only in (False, True):
        torch.manual_seed(0)
        model, tokenizer = load_model(str(tiny_model_dir))
        knobs = SpeedKnobs(max_length=128, completion_logits_only=completion_logits_only)
        config = tiny_config(tiny_model_dir)
        trainer = make_trainer(config, model, tokenizer, rows, [], tiny_run / "unused", pick_device(), knobs)
        batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
        n = (batch["labels"][:, 1:] != -100).sum()
        loss, outputs = trainer.compute_loss(trainer.model, batch, return_outputs=True, num_items_in_batch=n)
        losses.append(loss.item())
        kept.append(getattr(outputs, "logits", None))
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)
    assert kept[1].shape[1] < batch["input_ids"].shape[1]  # the prompt positions before the first reply token got no logits


def test_an_api_request_without_max_tokens_gets_the_runs_reply_budget():
    from supportbench.assistant import Chunk
    from supportbench.openai_api import complete, parse_chat_request, stream_events

    class Recorder:
        decoding, caps = Decoding(40), []

        def generate(self, history, query, finetuned, max_new_tokens):
            self.caps.append(max_new_tokens)
            yield Chunk("Sure.", "stop", 3, 2)

    messages = [{"role": "user", "content": "where is my refund"}]
    assistant = Recorder()
    complete(assistant, parse_chat_request({"messages": messages}))
    list(stream_events(assistant, parse_chat_request({"messages": messages, "stream": True})))
    complete(assistant, parse_chat_request({"messages": messages, "max_tokens": 12}))
    assert assistant.caps == [40, 40, 12]


def test_pick_takes_the_best_validation_rouge_among_candidates_within_the_cap_share():
    def scored(p: float, n: int, rouge: float, at_cap: float) -> dict:
        return {"decoding": dataclasses.asdict(Decoding(64, p, n)), "rougeL": {"mean": rouge}, "at_cap": at_cap}

    assert pick([scored(1.0, 0, 0.30, 0.10), scored(1.1, 0, 0.28, 0.0), scored(1.0, 6, 0.25, 0.02)]) == Decoding(64, 1.1, 0)
    assert pick([scored(1.0, 0, 0.30, 0.5), scored(1.1, 0, 0.20, 0.3)]) == Decoding(64, 1.1, 0)  # none fits: fewest at cap
    assert pick([scored(1.0, 0, 0.3, 0.0), scored(1.1, 0, 0.3, 0.0)]) == Decoding(64)  # a tie keeps plain greedy
    assert candidates(64, ngram_controls=False) == [Decoding(64, 1.0, 0), Decoding(64, 1.1, 0)]


def test_eval_chooses_decoding_on_validation_freezes_it_and_reports_replies_at_the_cap(tiny_run, tmp_path):
    run = RunDir(trained_copy(tiny_run, tmp_path / "run"))
    config = EvalConfig(limit=4, gen_batch_size=4, ppl_limit=4, max_new_tokens=6, validation_limit=3)
    first = evaluate_run(run.path, config)
    frozen = read_json(run.decoding)
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
    second = evaluate_run(run.path, dataclasses.replace(config, validation_limit=1))
    assert second["decoding"]["source"].startswith("frozen") and read_json(run.decoding) == frozen
    assert second["metrics"] == first["metrics"]


def test_eval_without_a_budget_in_an_old_run_asks_for_the_cap(tiny_run, tmp_path):
    run = RunDir(trained_copy(tiny_run, tmp_path / "run"))
    manifest = read_json(run.manifest_path)
    del manifest["reply_tokens"]
    run.manifest_path.write_text(__import__("json").dumps(manifest))
    with pytest.raises(SupportBenchError, match="no reply-token budget"):
        evaluate_run(run.path, EvalConfig(limit=2, gen_batch_size=2))


def sweep_command(out: Path, model: Path, data: Path, *extra: str) -> subprocess.CompletedProcess:
    args = ["--out", str(out), "--models", str(model), "--data", str(data), "--max-epochs", "1", "--validation-limit", "2"]
    return subprocess.run(
        [sys.executable, "-m", "supportbench", "sweep", *args, *extra], capture_output=True, text=True, timeout=600
    )


def tiny_sweep(tmp_path: Path, model: Path, *flags: str) -> Path:
    """Run `supportbench sweep` on the tiny model and a small prepared split; return the sweep folder."""
    small_split(tmp_path, tmp_path / "split")
    done = sweep_command(tmp_path / "sweep", model, tmp_path / "split", *flags)
    assert done.returncode == 0, done.stderr[-3000:]
    return tmp_path / "sweep"


def test_sweep_of_two_trials_in_three_minutes_writes_table_front_and_best_preset(tiny_model_dir, tmp_path):
    sizes = ("--min-examples", "8", "--max-examples", "16")
    out = tiny_sweep(tmp_path, tiny_model_dir, "--trials", "2", "--budget-min", "3", *sizes)
    summary = read_json(out / "sweep.json")
    assert [t["trial"] for t in summary["trials"]] == [0, 1]
    preset_point = {"model": str(tiny_model_dir), "learning_rate": 5e-4, "lora_r": 16, "lora_targets": "all-linear"}
    assert summary["trials"][0]["params"] | preset_point == summary["trials"][0]["params"]  # trial 0: the ci preset
    assert summary["trials"][0]["params"]["max_train_examples"] == 16  # its 240 examples, clamped to the range
    assert summary["states"] == {"complete": 2}
    for trial in summary["trials"]:
        assert 8 <= trial["params"]["max_train_examples"] <= 16
        assert 0 <= trial["validation"]["rougeL"]["low"] <= trial["validation"]["rougeL"]["mean"] <= 1
        assert trial["validation"]["rougeL"]["n"] == 2
    assert summary["pareto_front"] and set(summary["pareto_front"]) <= {0, 1}
    table = (out / "trials.md").read_text()
    assert len([line for line in table.splitlines() if line.startswith("| ") and "trial" not in line]) == 2
    assert (out / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    best = read_config_file(TrainConfig, out / "best.yaml")
    best_trial = summary["trials"][summary["best_trial"]]
    assert best["max_train_examples"] == best_trial["params"]["max_train_examples"]
    assert best["learning_rate"] == pytest.approx(best_trial["params"]["learning_rate"])
    assert "validation ROUGE-L" in (out / "best.yaml").read_text().splitlines()[0]


def test_a_trial_still_training_at_the_budget_end_is_recorded_as_timed_out(tiny_model_dir, tmp_path):
    sizes = ("--min-examples", "64", "--max-examples", "64")
    out = tiny_sweep(tmp_path, tiny_model_dir, "--trials", "1", "--budget-min", "0.001", *sizes)
    (trial,) = read_json(out / "sweep.json")["trials"]
    assert trial["state"] == "timed out" and "still training at the budget's end" in trial["error"]
    assert not (out / "best.yaml").exists()
    assert "timed out" in (out / "trials.md").read_text()


def test_a_failing_trial_is_recorded_with_its_error_and_the_sweep_goes_on(tiny_model_dir, tmp_path, monkeypatch):
    from supportbench import sweep as sweep_module

    calls = []

    def failing_then_real(run, limit, seed):
        calls.append(run)
        if len(calls) == 1:
            raise RuntimeError("scoring crashed")
        return real(run, limit, seed)

    real = sweep_module.validation_rouge
    monkeypatch.setattr(sweep_module, "validation_rouge", failing_then_real)
    data = write_csv(tmp_path / "d.csv", fixture_rows())  # prepared by the sweep, with these sizes
    config = SweepConfig(models=(str(tiny_model_dir),), trials=2, budget_min=3, min_examples=8, max_examples=8, max_epochs=1)
    monkeypatch.setattr(sweep_module, "DataConfig", functools.partial(DataConfig, test_size=16, validation_size=8))
    summary = sweep_module.sweep(dataclasses.replace(config, validation_limit=2, data=str(data)), tmp_path / "sweep")
    assert [t["state"] for t in summary["trials"]] == ["failed", "complete"]
    assert summary["trials"][0]["error"] == "RuntimeError: scoring crashed"
    assert summary["best_trial"] == 1


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--trials", "0"], "trials=0"),
        (["--budget-min", "0"], "budget_min=0.0"),
        (["--min-examples", "50", "--max-examples", "10"], "max_examples=10"),
        (["--data", "."], "no prepared split at ."),
    ],
)
def test_sweep_flags_that_make_no_sense_are_refused(flags, message, tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    done = sweep_command(tmp_path / "s", tiny_model_dir, BITEXT, *flags)
    assert done.returncode == 2 and message in done.stderr
    assert not (tmp_path / "s").exists()

"""sweep: trials, budgets, failures, the table, the Pareto front and the best preset."""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import pytest
from helpers import BITEXT, fixture_rows, small_split, write_csv

from supportbench.config import DataConfig, SweepConfig, TrainConfig, read_config_file
from supportbench.files import SupportBenchError, read_json


def sweep_args(out: Path, model: Path, data: Path, *extra: str) -> list[str]:
    """The command line of a short sweep of one model on a data folder."""
    return [
        "sweep",
        "--out",
        str(out),
        "--models",
        str(model),
        "--data",
        str(data),
        "--max-epochs",
        "1",
        "--validation-limit",
        "2",
        *extra,
    ]


def tiny_sweep(tmp_path: Path, model: Path, *flags: str) -> Path:
    """Run `supportbench sweep` (in this process) on the tiny model and a small prepared split; return its folder."""
    from supportbench.cli import main

    small_split(tmp_path, tmp_path / "split")
    assert main(sweep_args(tmp_path / "sweep", model, tmp_path / "split", *flags)) == 0
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
    from supportbench.experiments import sweep as sweep_module

    calls = []

    def failing_then_real(run, limit, seed):
        calls.append(run)
        if len(calls) == 1:
            raise RuntimeError("scoring crashed")
        return real(run, limit, seed)

    real = sweep_module.validation_rouge
    monkeypatch.setattr(sweep_module, "validation_rouge", failing_then_real)
    data = write_csv(tmp_path / "d.csv", fixture_rows())  # prepared by the sweep, with these sizes
    config = SweepConfig(
        models=(str(tiny_model_dir),), trials=2, budget_min=3, min_examples=8, max_examples=8, max_epochs=1
    )
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
def test_sweep_flags_that_make_no_sense_are_refused(flags, message, tiny_model_dir, tmp_path, monkeypatch, capsys):
    from supportbench.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(sweep_args(tmp_path / "s", tiny_model_dir, BITEXT, *flags)) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_a_data_folder_without_a_split_is_refused_before_any_model_is_materialized(tmp_path, monkeypatch):
    from supportbench.experiments import sweep as sweep_module

    def materialize(name):
        raise AssertionError(f"{name} was materialized before the data folder was checked")

    monkeypatch.setattr(sweep_module, "model_path", materialize)
    (tmp_path / "empty").mkdir()
    with pytest.raises(SupportBenchError, match="no prepared split at"):
        sweep_module.sweep(SweepConfig(data=str(tmp_path / "empty")), tmp_path / "out")

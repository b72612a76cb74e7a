"""The supportbench command line: help, exit codes, and messages for bad input."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import fixture_rows, write_csv

from harness.cli import main

STAGES = ["prepare", "train", "eval", "models"]


@pytest.mark.parametrize("stage", STAGES)
def test_every_subcommand_has_help(stage, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([stage, "--help"])
    assert exit_info.value.code == 0
    assert "usage: supportbench " + stage in capsys.readouterr().out


def test_prepare_without_response_column_fails_and_writes_nothing(tmp_path):
    path = write_csv(tmp_path / "d.csv", fixture_rows(), columns=["instruction", "intent", "category"])
    result = subprocess.run(
        [sys.executable, "-m", "harness.cli", "prepare", "--data", str(path), "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "'response'" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_prepare_prints_a_summary(tmp_path, capsys):
    path = write_csv(tmp_path / "d.csv", fixture_rows())
    assert (
        main(["prepare", "--data", str(path), "--out", str(tmp_path / "out"), "--test-size", "12", "--validation-size", "4"]) == 0
    )
    out = capsys.readouterr().out
    assert "120 in = 120 kept + 0 skipped" in out and "placeholders 360 found: 360 mapped" in out


def test_models_lists_the_bundled_aliases(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for alias in ("smollm2-135m", "gemma3-270m", "tinyllama-1.1b-chat"):
        assert alias in out

"""The supportbench command line: help, exit codes, and messages for bad input."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import fixture_rows, write_csv

from supportbench.cli import build_parser, main
from supportbench.config import EvalConfig, TrainConfig

STAGES = sorted(build_parser()._subparsers._group_actions[0].choices)


def test_the_parser_knows_every_stage():
    assert STAGES == sorted(
        ["prepare", "train", "eval", "gate", "bench", "export", "report", "rank", "app", "models", "tasks-path"]
        + ["accelerate-configs", "sweep"]
    )


@pytest.mark.parametrize("stage", STAGES)
def test_every_subcommand_has_help(stage, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([stage, "--help"])
    assert exit_info.value.code == 0
    assert "usage: supportbench " + stage in capsys.readouterr().out
    subparser = build_parser()._subparsers._group_actions[0].choices[stage]
    valued = [a for a in subparser._actions if a.option_strings and a.nargs != 0 and not a.required]
    assert all("default" in a.help for a in valued), [a.option_strings for a in valued if "default" not in a.help]


def test_help_shows_the_config_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert f"(default: {EvalConfig().limit})" in out and f"(default: {EvalConfig().gen_batch_size})" in out
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "bundled preset (default: ci)" in out and f"built-in {TrainConfig().learning_rate}" in out


def test_help_does_not_import_torch():
    code = (
        "import sys; from supportbench.cli import main\n"
        "for stage in ('', 'prepare', 'train', 'eval', 'bench', 'rank'):\n"
        "    try: main([stage, '--help'] if stage else ['--help'])\n"
        "    except SystemExit: pass\n"
        "print(sorted(m for m in ('torch', 'transformers', 'lm_eval', 'trl') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--out", "x", "--max-steps", "0"], "max_steps=0"),
        (["eval", "--run", "x", "--limit", "0"], "limit=0"),
        (["rank", "--out", "x", "--models", " , "], "models=[]"),
    ],
)
def test_nonsense_flag_values_are_rejected_before_work(argv, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_prepare_without_response_column_fails_and_writes_nothing(tmp_path):
    path = write_csv(tmp_path / "d.csv", fixture_rows(), columns=["instruction", "intent", "category"])
    result = subprocess.run(
        [sys.executable, "-m", "supportbench.cli", "prepare", "--data", str(path), "--out", str(tmp_path / "out")],
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

"""The supportbench command line: help, layering of presets, files and flags, exit codes, messages for bad input."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import fixture_rows, write_csv

from supportbench.cli import build_parser, main
from supportbench.config import DataConfig, EvalConfig, TrainConfig, load_train_config
from supportbench.files import read_json

STAGES = sorted(build_parser()._subparsers._group_actions[0].choices)


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
        [sys.executable, "-m", "supportbench", "prepare", "--data", str(path), "--out", str(tmp_path / "out")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "'response'" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def _prepare(data, out) -> int:
    """`supportbench prepare` of a small file into out, with a 12-row test and a 4-row validation split."""
    return main(["prepare", "--data", str(data), "--out", str(out), "--test-size", "12", "--validation-size", "4"])


def test_prepare_prints_a_summary(tmp_path, capsys):
    path = write_csv(tmp_path / "d.csv", fixture_rows())
    assert _prepare(path, tmp_path / "out") == 0
    out = capsys.readouterr().out
    assert (
        "120 in = 120 kept + 0 skipped" in out
        and "placeholders 360 found (--facts slots): 240 company slots kept" in out
    )


def test_models_lists_the_bundled_aliases(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for alias in ("smollm2-135m", "gemma3-270m", "tinyllama-1.1b-chat"):
        assert alias in out


def test_unusable_out_folders_exit_2_with_the_reason(tmp_path, capsys):
    data = str(write_csv(tmp_path / "d.csv", fixture_rows()))
    a_file = tmp_path / "file"
    a_file.write_text("x")
    assert main(["prepare", "--data", data, "--out", str(a_file), "--test-size", "16", "--validation-size", "8"]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    read_only = tmp_path / "ro"
    read_only.mkdir()
    read_only.chmod(0o555)
    if os.geteuid() == 0:  # root writes through permission bits: use a read-only file system instead
        read_only = Path("/sys/fs/supportbench-test")
    assert (
        main(["prepare", "--data", data, "--out", str(read_only), "--test-size", "16", "--validation-size", "8"]) == 2
    )
    err = capsys.readouterr().err
    assert str(read_only) in err and ("cannot create" in err or "cannot write" in err) and "Traceback" not in err


def _commands_with_config_files() -> list[str]:
    choices = build_parser()._subparsers._group_actions[0].choices
    return sorted(name for name, p in choices.items() if any("--config" in a.option_strings for a in p._actions))


def test_a_prepare_flag_equal_to_its_default_beats_the_config_file(tmp_path):
    config = tmp_path / "data.yaml"
    config.write_text("validation_size: 8\ntest_size: 12\n")
    path = write_csv(tmp_path / "d.csv", fixture_rows(per_intent=60))
    default = DataConfig().validation_size
    argv = ["prepare", "--config", str(config), "--data", str(path), "--out", str(tmp_path / "out")]
    assert main([*argv, "--validation-size", str(default)]) == 0
    manifest = read_json(tmp_path / "out" / "manifest.json")
    assert (manifest["splits"]["validation"]["rows"], manifest["splits"]["test"]["rows"]) == (default, 12)


def test_a_train_flag_equal_to_its_default_beats_the_preset_and_the_config_file(tmp_path, monkeypatch):
    import supportbench.trainers.lora

    seen = {}
    monkeypatch.setattr(
        supportbench.trainers.lora, "train", lambda config, *args, **kwargs: seen.setdefault("c", config)
    )
    monkeypatch.setattr(supportbench.trainers.lora, "summary_lines", lambda *args: [])
    config = tmp_path / "train.yaml"
    config.write_text("learning_rate: 1.0e-4\nlora_r: 4\n")
    default = TrainConfig().learning_rate
    assert load_train_config("ci").learning_rate != default  # the preset sets its own
    argv = ["train", "--preset", "ci", "--config", str(config), "--out", str(tmp_path / "run")]
    assert main([*argv, "--learning-rate", str(default)]) == 0
    assert (seen["c"].learning_rate, seen["c"].lora_r) == (default, 4)


def test_every_command_that_takes_a_config_file_has_a_layering_test():
    assert _commands_with_config_files() == ["prepare", "train"]


def test_a_full_disk_is_a_clear_error_not_a_traceback(tmp_path, monkeypatch, capsys):
    import errno

    import supportbench.prepare.card

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "out" / "data_card.png"))

    monkeypatch.setattr(supportbench.prepare.card, "lengths_png", full)  # matplotlib writing its PNG
    path = write_csv(tmp_path / "d.csv", fixture_rows())
    assert _prepare(path, tmp_path / "out") == 2
    assert "no space left on the device writing" in capsys.readouterr().err
    assert not (tmp_path / "out" / "manifest.json").exists()

"""Configs: presets, files and values checked before any work."""

from __future__ import annotations

import pytest

from supportbench import models
from supportbench.cli import main
from supportbench.config import DataConfig, EvalConfig, SweepConfig, TrainConfig, load_train_config
from supportbench.files import SupportBenchError


def test_bad_config_and_registry_files_are_named(tmp_path, monkeypatch):
    config = tmp_path / "mine.yaml"
    config.write_text("learning_rate: [unclosed\n")
    with pytest.raises(SupportBenchError, match=f"malformed YAML in {config}"):
        load_train_config("ci", str(config))
    config.write_text("learning_rate: abc\n")
    with pytest.raises(SupportBenchError, match="learning_rate must be a number, got 'abc'"):
        load_train_config("ci", str(config))
    config.write_text("learning_rate: 1e-4\nlora_r: 8.5\n")
    with pytest.raises(SupportBenchError, match="lora_r must be int, got 8.5"):
        load_train_config("ci", str(config))
    config.write_text("learning_rate: 1e-4\n")  # YAML 1.1 reads this as a string; it is a number
    assert load_train_config("ci", str(config)).learning_rate == 1e-4
    registry = tmp_path / "models.yaml"
    registry.write_text("mine: {path: /x\n")
    monkeypatch.setenv("SUPPORTBENCH_REGISTRY", str(registry))
    with pytest.raises(SupportBenchError, match=f"malformed YAML in model registry {registry}"):
        models.load_registry()


def test_max_steps_zero_is_rejected():
    with pytest.raises(SupportBenchError, match="max_steps=0"):
        TrainConfig(max_steps=0).validate()
    with pytest.raises(SupportBenchError, match="command line: lora_r must be int"):
        load_train_config("ci", None, lora_r="8")


@pytest.mark.parametrize("value", ["inf", "-inf", "nan"])
def test_non_finite_numbers_are_refused_from_flags_before_any_work(value, tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path / "run"), f"--learning-rate={value}"]) == 2
    assert "learning_rate must be a finite number" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_non_finite_numbers_are_refused_from_files(tmp_path):
    config = tmp_path / "mine.yaml"
    config.write_text("epochs: .inf\n")
    with pytest.raises(SupportBenchError, match="epochs must be a finite number, got inf"):
        load_train_config("ci", str(config))


@pytest.mark.parametrize("field", ["test_size", "validation_size"])
def test_empty_splits_are_refused(field):
    with pytest.raises(SupportBenchError, match=f"{field}=0"):
        DataConfig(**{field: 0}).validate()


def test_fewer_than_two_validation_replies_are_refused_before_any_work():
    # one reply has no bootstrap interval: scipy would fail after the model had generated
    for config in (EvalConfig(validation_limit=1), SweepConfig(validation_limit=1)):
        with pytest.raises(SupportBenchError, match="validation_limit=1"):
            config.validate()
    EvalConfig(validation_limit=2).validate()


def test_a_config_file_that_is_not_utf8_is_named(tmp_path):
    config = tmp_path / "latin1.yaml"
    config.write_bytes("learning_rate: 1.0e-4  # café\n".encode("latin-1"))
    with pytest.raises(SupportBenchError, match=f"config file {config} is not UTF-8 text"):
        load_train_config("ci", str(config))

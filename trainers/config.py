"""The typed training config, its presets, and validation."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from harness.io import SupportBenchError


@dataclass
class TrainConfig:
    """Everything one LoRA run needs; presets and user YAML files fill it in."""

    model: str = "smollm2-135m"
    template: str | None = None  # None: the registry's template for the model
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_targets: list[str] | str = field(default_factory=lambda: ["q_proj", "v_proj"])
    learning_rate: float = 2e-4
    epochs: float = 3.0
    max_steps: int = -1  # > 0 overrides epochs
    batch_size: int = 4
    gradient_accumulation: int = 4
    max_length: int | None = None  # None: chosen from the token-length distribution
    max_length_percentile: float = 99.0
    max_train_examples: int | None = None  # None: the whole train split
    max_eval_examples: int | None = 100
    warmup_ratio: float = 0.05
    weight_decay: float = 0.0
    seed: int = 42
    logging_steps: int = 5
    eval_steps: int | None = None  # None: evaluate at the end of each epoch
    save_steps: int = 25

    @property
    def effective_batch(self) -> int:
        """Examples per optimizer step."""
        return self.batch_size * self.gradient_accumulation

    def validate(self) -> None:
        """Reject impossible values before any model is loaded."""
        checks = {
            "lora_r": self.lora_r > 0,
            "lora_alpha": self.lora_alpha > 0,
            "lora_dropout": 0 <= self.lora_dropout < 1,
            "learning_rate": self.learning_rate > 0,
            "batch_size": self.batch_size > 0,
            "gradient_accumulation": self.gradient_accumulation > 0,
            "epochs": self.epochs > 0 or self.max_steps > 0,
            "max_length_percentile": 50 <= self.max_length_percentile <= 100,
            "save_steps": self.save_steps > 0,
            "warmup_ratio": 0 <= self.warmup_ratio < 1,
            "max_length": self.max_length is None or self.max_length >= 16,
            "lora_targets": self.lora_targets == "all-linear" or (isinstance(self.lora_targets, list) and self.lora_targets),
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise SupportBenchError("invalid training config: " + ", ".join(f"{n}={getattr(self, n)!r}" for n in bad))


PRESET_DIR = "presets"


def preset_names() -> list[str]:
    """Names of the bundled presets."""
    folder = resources.files("trainers").joinpath(PRESET_DIR)
    return sorted(p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml"))


def _read_yaml(text: str, origin: str) -> dict[str, Any]:
    data = yaml.safe_load(text) or {}
    if not isinstance(data, dict):
        raise SupportBenchError(f"{origin}: a training config must be a YAML mapping")
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise SupportBenchError(f"{origin}: unknown config key(s) {unknown}; known keys: {sorted(known)}")
    return data


def load_config(preset: str | None, config_file: str | None = None, **overrides: Any) -> TrainConfig:
    """Build a TrainConfig from a preset, then a user YAML file, then explicit overrides."""
    values: dict[str, Any] = {}
    if preset:
        if preset not in preset_names():
            raise SupportBenchError(f"unknown preset {preset!r}; choose one of {preset_names()}")
        text = resources.files("trainers").joinpath(PRESET_DIR, f"{preset}.yaml").read_text(encoding="utf-8")
        values.update(_read_yaml(text, f"preset {preset}"))
    if config_file:
        path = Path(config_file)
        if not path.is_file():
            raise SupportBenchError(f"config file not found: {path}")
        values.update(_read_yaml(path.read_text(encoding="utf-8"), str(path)))
    values.update({k: v for k, v in overrides.items() if v is not None})
    config = TrainConfig(**values)
    config.validate()
    return config

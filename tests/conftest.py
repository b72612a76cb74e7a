"""Shared fixtures: small data files written by the tests, a tiny model, and paths to the shared data."""

from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from tiny_model import build_tiny_model

from supportbench.config import TrainConfig

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
BITEXT = Path(os.environ.get("SUPPORTBENCH_DATA") or SHARED / "bitext" / "bitext_customer_support_4514.csv")
TWCS = SHARED / "twcs" / "twcs_sample_1000.csv"
INTENTS = {
    "cancel_order": "ORDER",
    "track_refund": "REFUND",
    "recover_password": "ACCOUNT",
    "change_shipping_address": "SHIPPING_ADDRESS",
}


def fixture_rows(per_intent: int = 30) -> list[dict[str, str]]:
    """Synthetic Bitext-like rows: 4 intents, distinct instructions, placeholders in responses."""
    rows = []
    for intent, category in INTENTS.items():
        for i in range(per_intent):
            rows.append(
                {
                    "instruction": f"please help me {intent.replace('_', ' ')} number {i} today",
                    "response": f"Sure, I can help with {intent.replace('_', ' ')} for {{{{Order Number}}}}. "
                    f"Visit {{{{Website Name}}}} or call {{{{Customer Support Phone Number}}}}. Case {i}.",
                    "intent": intent,
                    "category": category,
                    "flags": "B",
                    "tags": "BL",
                }
            )
    return rows


def write_csv(path: Path, rows: list[dict[str, str]], columns: list[str] | None = None) -> Path:
    """Write rows to a CSV with the given (or the rows') columns."""
    columns = columns or list(rows[0])
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def small_split(tmp_path: Path, out: Path, rows: list[dict[str, str]] | None = None, **config: Any) -> dict[str, Any]:
    """Prepare the fixture rows (or `rows`) into out with a 16-row test and 8-row validation split."""
    from supportbench.config import DataConfig
    from supportbench.data import prepare

    source = str(write_csv(tmp_path / "d.csv", rows or fixture_rows()))
    return prepare(DataConfig(source=source, **{"test_size": 16, "validation_size": 8, **config}), out)


def trained_copy(run: Path, dest: Path, *ignore: str) -> Path:
    """A copy of a trained run without what later stages (other tests included) wrote into it."""
    later = ("eval", "bench", "decoding.json", "report.*", "comparison.*")
    shutil.copytree(run, dest, ignore=shutil.ignore_patterns(*later, *ignore))
    return dest


@pytest.fixture
def fixture_csv(tmp_path: Path) -> Path:
    """A clean 120-row CSV in the Hugging Face schema."""
    return write_csv(tmp_path / "support.csv", fixture_rows())


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama model whose vocabulary covers the fixture data."""
    corpus = [r["instruction"] + " " + r["response"] for r in fixture_rows()]
    corpus += ["### customer : support agent : sure orders ord-98765 website 1-800-555-0199 alex morgan"]
    corpus += ["abcdef"]  # the probe word transformers' StopStringCriteria tokenizes to map the vocabulary
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model", corpus)


@pytest.fixture(scope="session", autouse=True)
def session_cache(tmp_path_factory: pytest.TempPathFactory):
    """Keep what session- and module-scoped fixtures cache (models, base scores) out of the user's home too."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SUPPORTBENCH_CACHE", str(tmp_path_factory.mktemp("cache")))
        patch.delenv("SUPPORTBENCH_REGISTRY", raising=False)
        yield


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep every test's model cache and registry out of the user's home."""
    monkeypatch.setenv("SUPPORTBENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("SUPPORTBENCH_REGISTRY", raising=False)


def tiny_config(model_dir: Path, **overrides: Any) -> TrainConfig:
    """A few-step LoRA config for the tiny model; keyword arguments override it."""
    values = dict(
        model=str(model_dir),
        template="seed",
        max_steps=4,
        batch_size=4,
        gradient_accumulation=1,
        save_steps=2,
        max_eval_examples=8,
        learning_rate=1e-3,
        logging_steps=1,
    )
    return TrainConfig(**{**values, **overrides})


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    """A finished 4-step LoRA run of the tiny model on a small prepared split."""
    from supportbench.trainers.lora import train

    root = tmp_path_factory.mktemp("tinyrun")
    run = root / "run"
    small_split(root, run / "data")
    train(tiny_config(tiny_model_dir, save_steps=4), run)
    return run

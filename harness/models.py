"""Model registry: resolve an alias, hub id or folder to a loadable model, materializing bundled GGUFs once."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from platformdirs import user_cache_dir, user_config_dir

from supportbench.device import DeviceChoice, pick_device
from supportbench.files import SupportBenchError, hub_reachable, read_bundled_yaml, read_user_yaml, staged_dir

REGISTRY_ENV = "SUPPORTBENCH_REGISTRY"
CACHE_ENV = "SUPPORTBENCH_CACHE"
SOURCES = ("hub_id", "path", "gguf_package")
ENTRY_KEYS = set(SOURCES) | {
    "description",
    "install",
    "template",
    "lora_targets",
    "gguf_file",
    "gguf_assemble",
    "gguf_distribution",
}


@dataclass(frozen=True)
class ModelSpec:
    """A resolved registry entry (or a bare hub id / folder)."""

    name: str
    source: str  # "hub", "local" or "gguf"
    entry: dict[str, Any]

    @property
    def template(self) -> str:
        """The prompt template this model is trained and scored with by default."""
        return self.entry.get("template", "seed")


def cache_root() -> Path:
    """Where materialized models live: $SUPPORTBENCH_CACHE, else the user cache dir."""
    return Path(os.environ.get(CACHE_ENV) or user_cache_dir("supportbench")) / "models"


def _user_registry_path() -> Path:
    return Path(os.environ.get(REGISTRY_ENV) or Path(user_config_dir("supportbench")) / "models.yaml")


def load_registry() -> dict[str, dict[str, Any]]:
    """The bundled registry with the user's registry file merged over it, validated."""
    registry = read_bundled_yaml("supportbench", "registry.yaml")
    user_path = _user_registry_path()
    if user_path.is_file():
        user = read_user_yaml(user_path, "model registry", f"model registry {user_path}") or {}
        if not isinstance(user, dict):
            raise SupportBenchError(f"model registry {user_path} must map aliases to entries")
        shadowed = sorted(set(user) & set(registry))
        if shadowed:
            warnings.warn(
                f"model registry {user_path} redefines the bundled alias(es) {shadowed}; its entries are used",
                stacklevel=2,
            )
        registry.update(user)
    elif os.environ.get(REGISTRY_ENV):
        raise SupportBenchError(f"${REGISTRY_ENV} names a missing file: {user_path}")
    for alias, entry in registry.items():
        if not isinstance(entry, dict):
            raise SupportBenchError(f"model registry entry {alias!r} must be a mapping")
        unknown = set(entry) - ENTRY_KEYS
        sources = [k for k in SOURCES if k in entry]
        if unknown:
            raise SupportBenchError(f"model registry entry {alias!r} has unknown keys {sorted(unknown)}")
        if len(sources) != 1:
            raise SupportBenchError(f"model registry entry {alias!r} needs exactly one of {SOURCES}, has {sources}")
    return registry


def model_origin(name: str) -> str:
    """Where a model name resolves from, as a run records it: the bundled or the user's registry, a folder, a hub id."""
    user_path = _user_registry_path()
    if user_path.is_file() and name in (read_user_yaml(user_path, "model registry") or {}):
        return f"user registry {user_path}"
    if name in read_bundled_yaml("supportbench", "registry.yaml"):
        return "bundled registry"
    return "folder" if Path(name).expanduser().is_dir() else "hub id"


def resolve(name: str) -> ModelSpec:
    """Turn an alias, a local folder or a hub id into a ModelSpec."""
    registry = load_registry()
    if name in registry:
        entry = registry[name]
        source = {"hub_id": "hub", "path": "local", "gguf_package": "gguf"}[next(k for k in SOURCES if k in entry)]
        return ModelSpec(name, source, entry)
    if Path(name).expanduser().is_dir():
        return ModelSpec(name, "local", {"path": str(Path(name).expanduser())})
    if name.count("/") == 1 and not name.startswith((".", "/")):
        return ModelSpec(name, "hub", {"hub_id": name})
    raise SupportBenchError(f"unknown model {name!r}: not a registry alias ({', '.join(registry)}), folder or hub id")


def _gguf_cache_dir(spec: ModelSpec, root: Path | None = None) -> Path:
    dist = spec.entry.get("gguf_distribution", spec.entry["gguf_package"])
    try:
        version = importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    return (root or cache_root()) / f"{spec.name}-{version}"


def _gguf_installed(spec: ModelSpec) -> bool:
    return importlib.util.find_spec(spec.entry["gguf_package"]) is not None


def _hub_cached(hub_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(hub_id, "config.json"), str)


def availability(spec: ModelSpec) -> str:
    """'offline' when the model loads without the network, otherwise what is needed."""
    if spec.source == "local":
        return "offline" if (Path(spec.entry["path"]) / "config.json").is_file() else "missing folder"
    if spec.source == "gguf":
        if (_gguf_cache_dir(spec) / "config.json").is_file():
            return "offline (materialized)"
        return (
            "offline (first load converts)" if _gguf_installed(spec) else f"not installed: {spec.entry.get('install')}"
        )
    return "offline (hub cache)" if _hub_cached(spec.entry["hub_id"]) else "needs the hub"


def _locate_gguf(spec: ModelSpec, workdir: Path) -> Path:
    package = spec.entry["gguf_package"]
    found = importlib.util.find_spec(package)
    if found is None:
        raise SupportBenchError(f"model {spec.name!r} needs its package: {spec.entry.get('install', package)}")
    if spec.entry.get("gguf_assemble"):
        module = importlib.import_module(package)
        return Path(module.assemble(workdir / "model.gguf"))
    folder = Path(next(iter(found.submodule_search_locations)))
    path = folder / spec.entry["gguf_file"]
    if not path.is_file():
        raise SupportBenchError(f"package {package} has no {spec.entry['gguf_file']} at {folder}")
    return path


def materialize(spec: ModelSpec, root: Path | None = None) -> Path:
    """Convert a bundled GGUF to a safetensors folder in the cache (or `root`) once, atomically; return it."""
    final = _gguf_cache_dir(spec, root)
    if (final / "config.json").is_file():
        return final
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with staged_dir(final) as tmp:
        gguf = _locate_gguf(spec, tmp)
        started = time.perf_counter()
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        model.hf_quantizer = None  # weights are dequantized already; save them as plain tensors
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if gguf.parent == tmp:
            gguf.unlink()
        print(f"materialized {spec.name} to {final} in {time.perf_counter() - started:.1f}s")
    return final


def model_path(name: str) -> str:
    """A local folder or hub id that `from_pretrained` can load for this model, materializing if needed."""
    spec = resolve(name)
    if spec.source == "gguf":
        return str(materialize(spec))
    if spec.source == "local":
        if not (Path(spec.entry["path"]) / "config.json").is_file():
            raise SupportBenchError(f"model folder {spec.entry['path']} has no config.json")
        return spec.entry["path"]
    hub_id = spec.entry["hub_id"]
    if not _hub_cached(hub_id):
        if not hub_reachable():
            raise SupportBenchError(f"model {name!r} ({hub_id}) is not cached and the Hugging Face hub is unreachable")
    return hub_id


def load_model(name: str, device: DeviceChoice | None = None) -> tuple[Any, Any]:
    """Load (model, tokenizer) for inference or training on the chosen device and dtype."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = device or pick_device()
    path = model_path(name)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=device.dtype, attn_implementation=device.attn_implementation
    )
    return model.to(device.device), tokenizer

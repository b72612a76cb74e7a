"""Base-model scores, cached under a key of content hashes: weights, template, scored split, task code, eval settings.

A base model's scores depend on nothing else, so a second eval of a new adapter on the same base, a rank re-score
or a CI re-run reuses them. Any change to a part of the key recomputes; an entry whose checksum fails is recomputed.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from supportbench.config import EvalConfig
from supportbench.files import SupportBenchError, read_json, sha256_file, write_json
from supportbench.models import cache_root
from supportbench.tasks import include_path

# the code that shapes a score
SCORING_CODE = (
    "supportbench.evaluation.evaluator",
    "supportbench.metrics",
    "supportbench.templates",
    "supportbench.facts.slots",
    "supportbench.facts.identifiers",
    "supportbench.checks.embedding",
    "supportbench.checks.intent",
    "supportbench.checks.language",
    "supportbench.checks.repetition",
)
VERSIONED = ("lm_eval", "transformers", "torch", "peft", "scikit-learn", "py3langid")
RESULT_KEYS = {"metrics", "samples", "n", "perplexity_items"}  # what eval reads from a base model's cached scores
# what the base model's test scores never depend on (the profile counts by its hash, not its path)
NOT_BASE_SETTINGS = ("base_model", "twcs", "validation_limit", "choose_decoding", "profile")
PARALLELISM = ("tensor_parallel_size", "data_parallel_size")  # how the work is spread, never what it scores


def _canonical(data: Any) -> bytes:
    return json.dumps(data, sort_keys=True, ensure_ascii=False, default=str).encode("utf-8")


def _folder_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(
        p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".") and "__pycache__" not in p.parts
    ):
        digest.update(f"{path.relative_to(folder)}\0{sha256_file(path)}\n".encode())
    return digest.hexdigest()


def weights_digest(model: str) -> str:
    """A content hash of a model folder (weights, config, tokenizer), or of a hub model's cached snapshot."""
    folder = Path(model)
    if not folder.is_dir():
        from huggingface_hub import snapshot_download

        folder = Path(snapshot_download(model, local_files_only=True))
    return _folder_digest(folder)


def base_score_key(model: str, metadata: dict[str, Any], config: EvalConfig) -> str:
    """The cache key of a base model's scores under these task metadata and eval settings."""
    parts = {
        "weights": weights_digest(model),
        "template": metadata["template"],
        "profile": metadata.get("profile_sha256"),
        "data": metadata.get("sha256") or sha256_file(Path(metadata["twcs"])),
        "task": _folder_digest(include_path() / "customer_support"),
        "code": {name: sha256_file(Path(importlib.util.find_spec(name).origin)) for name in SCORING_CODE},
        "settings": {
            **{k: v for k, v in asdict(config).items() if k not in (*NOT_BASE_SETTINGS, *PARALLELISM)},
            # the exact runtime is used only where its scores equal transformers': one key for both
            "backend": "vllm" if config.backend == "vllm" else "transformers",
        },
        "versions": {name: importlib.metadata.version(name) for name in VERSIONED},
    }
    return hashlib.sha256(_canonical(parts)).hexdigest()


def _entry(key: str) -> Path:
    return cache_root().parent / "scores" / f"{key}.json"


def load_scores(key: str) -> dict[str, Any] | None:
    """The cached scores for key, or None when there are none or the entry fails its checksum."""
    path = _entry(key)
    if not path.is_file():
        return None
    try:
        entry = read_json(path)
        intact = entry["key"] == key and hashlib.sha256(_canonical(entry["result"])).hexdigest() == entry["sha256"]
        # a checksum recomputed over junk still needs the shape of scores
        intact = intact and isinstance(entry["result"], dict) and RESULT_KEYS <= set(entry["result"])
    except (SupportBenchError, KeyError, TypeError):
        intact = False
    if not intact:
        print(f"the cached base scores {path} are damaged; scoring the base model again")
        return None
    print(f"base model scores reused from the cache: {path}")
    return entry["result"]


def store_scores(key: str, result: dict[str, Any]) -> None:
    """Cache a base model's scores (atomically) with a checksum of their content."""
    stored = json.loads(_canonical(result))  # what a later load returns, so the checksum covers exactly that
    write_json(_entry(key), {"key": key, "sha256": hashlib.sha256(_canonical(stored)).hexdigest(), "result": stored})

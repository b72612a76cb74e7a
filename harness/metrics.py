"""The metrics, declared once (name, label, direction, task), and their library implementations."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

GEN_TASK, PPL_TASK = "customer_support_gen", "customer_support_ppl"
PLACEHOLDER = re.compile(r"\{\{\s*([^{}]*?)\s*\}\}")


@dataclass(frozen=True)
class Metric:
    """How a metric is shown and read: its label, whether higher is better, and the lm-eval task reporting it."""

    label: str
    higher_is_better: bool
    task: str


# The one list of metrics; the task YAMLs' metric_list must name the same ones (a test checks).
METRICS = {
    "rouge1": Metric("ROUGE-1", True, GEN_TASK),
    "rouge2": Metric("ROUGE-2", True, GEN_TASK),
    "rougeL": Metric("ROUGE-L", True, GEN_TASK),
    "bleu": Metric("BLEU-4", True, GEN_TASK),
    "runon": Metric("run-on share", False, GEN_TASK),
    "placeholder_leak": Metric("placeholder leak share", False, GEN_TASK),
    "response_words": Metric("mean reply words", True, GEN_TASK),
    "at_cap": Metric("share of replies at the token cap", False, GEN_TASK),
    # an identifier (phone, e-mail, URL, order-like code, amount) neither the conversation nor the profile gave
    "invented_facts": Metric("invented-fact share", False, GEN_TASK),
    # where the customer gave an identifier that the reference uses: the reply uses that exact value
    "copied_facts": Metric("copied-fact share", True, GEN_TASK),
    # the declared slots (slots.yaml) the reference states that the reply states too, and the converse
    "slot_recall": Metric("slot recall", True, GEN_TASK),
    "slot_precision": Metric("slot precision", True, GEN_TASK),
    # what a customer sees (supportbench.checks): meaning, intent, language, loops
    "semantic_similarity": Metric("semantic similarity (embedding cosine)", True, GEN_TASK),
    "intent_fidelity": Metric("intent fidelity", True, GEN_TASK),
    "rougeL_multi": Metric("ROUGE-L, best over the intent's references", True, GEN_TASK),
    "language_match": Metric("language match share", True, GEN_TASK),
    "repetition": Metric("repetition share", False, GEN_TASK),
    "perplexity": Metric("perplexity (reply tokens)", False, PPL_TASK),
    "perplexity_fulltext": Metric("perplexity (full text, prompt included)", False, PPL_TASK),
}
ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")
# per-reply scores that get intervals and paired differences like ROUGE; all but invented_facts apply to some replies
# only (None elsewhere), and are compared on the examples where both models have one
FACT_METRICS = ("invented_facts", "copied_facts", "slot_recall", "slot_precision")
# how a reply reads to the customer; intent fidelity, multi-reference ROUGE-L and language match need labels
CUSTOMER_METRICS = ("semantic_similarity", "intent_fidelity", "rougeL_multi", "language_match", "repetition")
REPLY_METRICS = (*FACT_METRICS, *CUSTOMER_METRICS)


@lru_cache(maxsize=1)
def _rouge_scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=False)


def rouge(prediction: str, reference: str) -> dict[str, float]:
    """ROUGE-1/2/L F-measure for one pair (rouge_score, default tokenizer, no stemming)."""
    scores = _rouge_scorer().score(reference, prediction)
    return {name: scores[name].fmeasure for name in ROUGE_TYPES}


@lru_cache(maxsize=1)
def _rouge_l_scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def best_rouge_l(prediction: str, references: Sequence[str]) -> float:
    """The best ROUGE-L F-measure of a reply against several references (rouge_score's score_multi)."""
    return _rouge_l_scorer().score_multi(list(references), prediction)["rougeL"].fmeasure


def corpus_bleu(predictions: list[str], references: list[str]) -> float:
    """Corpus BLEU-4 in 0..1 as `evaluate`'s bleu computes it: sacrebleu, 13a tokens, no smoothing."""
    import sacrebleu

    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")
    return sacrebleu.corpus_bleu(predictions, [references], smooth_method="none", tokenize="13a").score / 100


def sentence_bleu(prediction: str, reference: str) -> float:
    """BLEU-4 of one reply in 0..1 (sacrebleu's sentence BLEU, 13a tokens, its default exponential smoothing)."""
    import sacrebleu

    return sacrebleu.sentence_bleu(prediction, [reference], tokenize="13a").score / 100


def bleu_statistics(predictions: list[str], references: list[str]) -> list[list[int]]:
    """Per-reply BLEU sufficient statistics (length, reference length, 1-4-gram matches, 1-4-gram totals) from
    sacrebleu; summed over any subset, they give that subset's corpus BLEU (bleu_from_statistics)."""
    import sacrebleu

    rows = []
    for prediction, reference in zip(predictions, references, strict=True):
        score = sacrebleu.corpus_bleu([prediction], [[reference]], smooth_method="none", tokenize="13a")
        rows.append([score.sys_len, score.ref_len, *score.counts, *score.totals])
    return rows


def bleu_from_statistics(rows: Sequence[Sequence[int]]) -> float:
    """Corpus BLEU-4 in 0..1 of the replies whose statistics are given, as sacrebleu's corpus score computes it."""
    from sacrebleu.metrics.bleu import BLEU

    sys_len, ref_len, *counts = (int(sum(column)) for column in zip(*rows, strict=True))
    return BLEU.compute_bleu(counts[:4], counts[4:], sys_len, ref_len, smooth_method="none").score / 100


def leaks_placeholder(text: str) -> bool:
    """True when a reply still contains a raw {{…}} placeholder."""
    return bool(PLACEHOLDER.search(text))


def word_count(text: str) -> int:
    """Whitespace-separated words in a reply."""
    return len(text.split())


def token_cap(lengths: Sequence[int], q: float) -> int:
    """The q-th percentile of token lengths (numpy's default interpolation), rounded up to a multiple of 8."""
    import numpy

    return int(math.ceil(numpy.percentile(lengths, q) / 8) * 8)

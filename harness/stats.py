"""Uncertainty for eval numbers: seeded bootstrap intervals, paired differences with p-values, slices, a planner."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import stats

from supportbench.checks.invariance import tag_letters
from supportbench.metrics import CUSTOMER_METRICS, REPLY_METRICS, ROUGE_TYPES, bleu_from_statistics, bleu_statistics

if TYPE_CHECKING:
    from supportbench.layout import StatsRecord

CONFIDENCE = 0.95
RESAMPLES = 9999
CORPUS_RESAMPLES = 1000  # corpus BLEU is recomputed per resample: 1,000 keeps it to seconds
MIN_SLICE = 10  # below this many examples a slice is shown but not judged
POWER = 0.8


def _mean(values: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(values, axis=axis)


def _bounds(result: Any) -> tuple[float, float]:
    low, high = result.confidence_interval
    return float(low), float(high)


def mean_interval(values: Sequence[float], seed: int) -> dict[str, float]:
    """The mean with its 95% percentile-bootstrap interval (scipy.stats.bootstrap, seeded)."""
    data = np.asarray(values, dtype=float)
    result = stats.bootstrap(
        (data,), _mean, n_resamples=RESAMPLES, confidence_level=CONFIDENCE, method="percentile", rng=seed
    )
    low, high = _bounds(result)
    return {"mean": float(data.mean()), "low": low, "high": high, "n": len(data)}


def paired_difference(base: Sequence[float], tuned: Sequence[float], seed: int) -> dict[str, float]:
    """tuned - base on the same examples: mean, 95% paired-bootstrap interval, and a paired permutation p-value."""
    b, t = np.asarray(base, dtype=float), np.asarray(tuned, dtype=float)
    difference = mean_interval(t - b, seed)
    test = stats.permutation_test(
        (b, t),
        lambda x, y, axis=-1: np.mean(y - x, axis=axis),
        permutation_type="samples",  # swaps base and tuned within an example: the paired (sign-flip) test
        n_resamples=RESAMPLES,
        vectorized=True,
        rng=seed,
    )
    return {**difference, "p_value": float(test.pvalue)}


def wilson_interval(passed: float, n: int) -> dict[str, float]:
    """A share with its 95% Wilson score interval; `passed` may count ties as halves."""
    if n == 0:
        return {"mean": math.nan, "low": math.nan, "high": math.nan, "n": 0}
    z = float(stats.norm.ppf(1 - (1 - CONFIDENCE) / 2))
    share = passed / n
    centre = (share + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(share * (1 - share) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return {"mean": share, "low": max(0.0, centre - half), "high": min(1.0, centre + half), "n": n}


def mcnemar_exact(only_first: int, only_second: int) -> float:
    """The exact McNemar p-value of paired pass/fail outcomes from the two discordant counts (a two-sided binomial
    test of one against their sum; 1 when there is no discordant pair)."""
    discordant = only_first + only_second
    return float(stats.binomtest(only_second, discordant).pvalue) if discordant else 1.0


def corpus_interval(statistic: Callable[[np.ndarray], float], n: int, seed: int) -> dict[str, float]:
    """A corpus-level statistic of example indices (e.g. corpus BLEU) with its 95% interval over resampled corpora."""
    indices = np.arange(n)
    result = stats.bootstrap(
        (indices,),
        statistic,
        vectorized=False,
        n_resamples=CORPUS_RESAMPLES,
        confidence_level=CONFIDENCE,
        method="percentile",
        rng=seed,
    )
    low, high = _bounds(result)
    return {"mean": float(statistic(indices)), "low": low, "high": high, "n": n}


def examples_needed(differences: Sequence[float], effect: float) -> int:
    """Examples a paired difference of `effect` needs to be detected at 95% confidence with 80% power (normal approximation)."""
    spread = float(np.std(differences, ddof=1))
    z = stats.norm.ppf(1 - (1 - CONFIDENCE) / 2) + stats.norm.ppf(POWER)
    return max(2, math.ceil((z * spread / effect) ** 2))


def examples_for_half_width(differences: Sequence[float], half_width: float) -> int:
    """Examples for which the paired difference's 95% interval is at most ±half_width wide (normal approximation)."""
    spread = float(np.std(differences, ddof=1))
    return max(2, math.ceil((stats.norm.ppf(1 - (1 - CONFIDENCE) / 2) * spread / half_width) ** 2))


def slices(samples: list[dict[str, Any]], key: str, seed: int, metric: str = "rougeL") -> list[dict[str, Any]]:
    """Per-slice n, a metric's means and paired difference (over the examples where both models have the metric);
    slices under MIN_SLICE examples are marked, not judged."""
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for sample in samples:
        groups[sample.get(key) or "(unknown)"].append(sample)  # samples of older evals carry no language
    rows = []
    for name, members in sorted(groups.items()):
        base, tuned = _paired(members, metric)
        if not base:
            continue
        row: dict[str, Any] = {
            key: name,
            "n": len(base),
            "base": float(np.mean(base)),
            "finetuned": float(np.mean(tuned)),
        }
        row["judged"] = len(base) >= MIN_SLICE
        if len(base) > 1:  # an interval needs two examples; judging one needs MIN_SLICE
            row["difference"] = paired_difference(base, tuned, seed)
        rows.append(row)
    return rows


def tag_slices(samples: list[dict[str, Any]], seed: int, metric: str) -> list[dict[str, Any]]:
    """slices() by Bitext variation tag: an example counts in every tag it carries (B basic, Z typos, ...)."""
    tagged = [{**s, "tag": letter} for s in samples for letter in tag_letters(s.get("tags", ""))]
    return slices(tagged, "tag", seed, metric)


def _paired(samples: list[dict[str, Any]], metric: str) -> tuple[list[float], list[float]]:
    """Base and fine-tuned values of a metric on the examples where both have one (a check may not apply)."""
    pairs = [
        (s[f"base_{metric}"], s[f"finetuned_{metric}"])
        for s in samples
        if s.get(f"base_{metric}") is not None and s.get(f"finetuned_{metric}") is not None
    ]
    return [b for b, _ in pairs], [t for _, t in pairs]


def perplexity_intervals(pairs: Sequence[Sequence[float]], seed: int) -> dict[str, dict[str, float]]:
    """Corpus perplexity of base and fine-tuned, and their paired difference, over resampled examples; `pairs` holds
    (base log-likelihood, base tokens, fine-tuned log-likelihood, fine-tuned tokens) per example."""
    table = np.asarray(pairs, dtype=float)

    def perplexity(ll: int, tokens: int) -> Callable[[np.ndarray], float]:
        return lambda i: float(np.exp(-table[i, ll].sum() / table[i, tokens].sum()))

    base, tuned = perplexity(0, 1), perplexity(2, 3)
    n = len(table)
    return {
        "base": corpus_interval(base, n, seed),
        "finetuned": corpus_interval(tuned, n, seed),
        "difference": corpus_interval(lambda i: tuned(i) - base(i), n, seed),
    }


def eval_statistics(
    samples: list[dict[str, Any]], perplexity_pairs: Sequence[Sequence[float]], seed: int
) -> dict[str, Any]:
    """Intervals, paired differences, win rate, slices and the sample-size planner from eval's side-by-side samples
    and the per-example perplexity log-likelihoods."""
    n = len(samples)
    metrics: dict[str, Any] = {}
    for metric in (*ROUGE_TYPES, *REPLY_METRICS):
        base, tuned = _paired(samples, metric)  # an older eval's samples carry no fact metrics
        if metric in REPLY_METRICS and len(base) < 2:  # a bootstrap interval needs two examples
            continue
        metrics[metric] = {
            "base": mean_interval(base, seed),
            "finetuned": mean_interval(tuned, seed),
            "difference": paired_difference(base, tuned, seed),
        }
    references = [s["reference"] for s in samples]
    counts = {
        side: np.asarray(bleu_statistics([s[side] for s in samples], references)) for side in ("base", "finetuned")
    }

    def bleu(side: str) -> Callable[[np.ndarray], float]:
        return lambda i: bleu_from_statistics(counts[side][i])

    metrics["bleu"] = {
        "base": corpus_interval(bleu("base"), n, seed),
        "finetuned": corpus_interval(bleu("finetuned"), n, seed),
        "difference": corpus_interval(lambda i: bleu("finetuned")(i) - bleu("base")(i), n, seed),
    }
    metrics["perplexity"] = perplexity_intervals(perplexity_pairs, seed)
    differences = [s["finetuned_rougeL"] - s["base_rougeL"] for s in samples]
    wins = [float(d > 0) for d in differences]
    by_intent = slices(samples, "intent", seed)
    judged = sorted((r for r in by_intent if r["judged"]), key=lambda r: r["difference"]["mean"])
    return {
        "confidence": CONFIDENCE,
        "resamples": {"bootstrap": RESAMPLES, "corpus_bleu": CORPUS_RESAMPLES, "permutation": RESAMPLES},
        "seed": seed,
        "n": n,
        "metrics": metrics,
        "win_rate_rougeL": {**mean_interval(wins, seed), "ties": sum(d == 0 for d in differences)},
        "by_category": slices(samples, "category", seed),
        "by_intent": by_intent,
        "by_intent_invented_facts": slices(samples, "intent", seed, "invented_facts"),
        "by_intent_checks": {metric: slices(samples, "intent", seed, metric) for metric in CUSTOMER_METRICS},
        "by_tag": {metric: tag_slices(samples, seed, metric) for metric in ("rougeL", *CUSTOMER_METRICS)},
        "by_language": slices(samples, "language", seed),
        "min_slice": MIN_SLICE,
        "worst_intents": [r["intent"] for r in judged[:5]],
        "planner_rougeL": {
            "difference_sd": float(np.std(differences, ddof=1)),
            "examples_to_detect": {
                str(effect): examples_needed(differences, effect) for effect in (0.01, 0.02, 0.03, 0.05)
            },
            "examples_for_half_width_0.03": examples_for_half_width(differences, 0.03),
        },
    }


def interval_text(estimate: dict[str, float], digits: int = 4) -> str:
    """An estimate with its interval: 0.2659 [0.2438, 0.2899]."""
    return f"{estimate['mean']:.{digits}f} [{estimate['low']:.{digits}f}, {estimate['high']:.{digits}f}]"


def signed_interval(estimate: dict[str, float]) -> str:
    """A difference with its interval: +0.1150 [+0.0863, +0.1461]."""
    return f"{estimate['mean']:+.4f} [{estimate['low']:+.4f}, {estimate['high']:+.4f}]"


def evidence_lines(stats: StatsRecord) -> list[str]:
    """What a verdict rests on: the ROUGE-L difference, the win rate, the slices that can be judged, the planner."""
    d, wins, planner = stats.metrics["rougeL"].difference, stats.win_rate_rougeL, stats.planner_rougeL
    assert d is not None  # StatsRecord requires the paired ROUGE-L difference
    judged = [r for r in stats.by_intent if r.judged]
    worst = stats.worst_intents
    return [
        f"ROUGE-L fine-tuned minus base {signed_interval(d.model_dump())}, paired permutation p = {d.p_value:.4f}, "
        f"n = {d.n}",
        f"fine-tuned wins on ROUGE-L in {wins.mean:.0%} of examples ({wins.low:.0%} to {wins.high:.0%})",
        f"{len(judged)} of {len(stats.by_intent)} intents have the {stats.min_slice}+ examples to be judged"
        + (f"; smallest difference: {', '.join(worst)}" if worst else ""),
        f"planner: a ±0.03 ROUGE-L interval needs {planner.examples_for_half_width} examples, detecting a "
        f"0.02 difference {planner.examples_to_detect['0.02']}",
    ]

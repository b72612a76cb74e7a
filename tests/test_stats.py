"""Statistics against known cases: a known difference, no difference, seeded reproducibility, slices, the planner."""

from __future__ import annotations

import math

import numpy as np
import pytest

from supportbench.metrics import bleu_from_statistics, bleu_statistics, corpus_bleu
from supportbench.stats import MIN_SLICE, eval_statistics, examples_needed, mean_interval, paired_difference


def _samples(base: np.ndarray, tuned: np.ndarray, intents: list[str]) -> list[dict]:
    replies = ["I can help you cancel order ORD-98765 today.", "Please visit our website to track the refund."]
    return [
        {
            "category": intent.split("_")[0],
            "intent": intent,
            "reference": "I can help you cancel your order ORD-98765.",
            "base": replies[i % 2],
            "finetuned": replies[(i + 1) % 2],
            **{f"base_{m}": float(b) for m in ("rouge1", "rouge2", "rougeL")},
            **{f"finetuned_{m}": float(t) for m in ("rouge1", "rouge2", "rougeL")},
        }
        for i, (b, t, intent) in enumerate(zip(base, tuned, intents, strict=True))
    ]


def test_a_known_constant_difference_is_recovered_exactly():
    base = np.linspace(0.1, 0.4, 30)
    result = paired_difference(base, base + 0.05, seed=1)
    assert result["mean"] == pytest.approx(0.05)
    assert result["low"] == pytest.approx(0.05) and result["high"] == pytest.approx(0.05)
    assert result["p_value"] < 0.001  # every sign flip of 30 equal positive differences lowers the mean


def test_no_difference_gives_a_zero_interval_and_p_one():
    base = np.linspace(0.1, 0.4, 30)
    result = paired_difference(base, base.copy(), seed=1)
    assert (result["mean"], result["low"], result["high"], result["p_value"]) == (0.0, 0.0, 0.0, 1.0)


def test_a_noisy_known_difference_is_covered_and_detected():
    rng = np.random.default_rng(0)
    base = rng.uniform(0.1, 0.3, 400)
    tuned = base + 0.03 + rng.normal(0, 0.05, 400)
    result = paired_difference(base, tuned, seed=3)
    assert result["low"] < 0.03 < result["high"] and result["low"] > 0
    assert result["p_value"] < 0.01
    same = paired_difference(base, base + rng.normal(0, 0.05, 400), seed=3)
    assert same["low"] < 0 < same["high"] and same["p_value"] > 0.05


def test_the_seeded_bootstrap_reproduces_exactly():
    rng = np.random.default_rng(1)
    base = rng.uniform(0, 0.3, 40)
    samples = _samples(base, base + rng.normal(0.05, 0.05, 40), [f"intent_{i % 3}" for i in range(40)])
    pairs = [[-12.0 - i % 5, 6, -9.0 - i % 3, 6] for i in range(40)]
    assert eval_statistics(samples, pairs, seed=5) == eval_statistics(samples, pairs, seed=5)
    assert mean_interval(base, seed=5) != mean_interval(base, seed=6)


def test_small_slices_are_marked_not_judged():
    base = np.full(25, 0.2)
    intents = ["big"] * MIN_SLICE + ["small"] * (25 - MIN_SLICE - 10) + ["mid"] * 10
    stats = eval_statistics(_samples(base, base + 0.1, intents), [[-10.0, 5, -8.0, 5]] * 25, seed=0)
    judged = {row["intent"]: row["judged"] for row in stats["by_intent"]}
    assert judged == {"big": True, "mid": True, "small": False}

    assert stats["win_rate_rougeL"]["mean"] == 1.0


def test_perplexity_interval_of_a_known_corpus():
    from supportbench.stats import perplexity_intervals

    pairs = [[-20.0, 10, -10.0, 10]] * 8  # every example: base exp(2), fine-tuned exp(1)
    result = perplexity_intervals(pairs, seed=0)
    assert result["base"]["mean"] == pytest.approx(math.exp(2)) and result["finetuned"]["mean"] == pytest.approx(
        math.e
    )
    assert result["difference"]["low"] == pytest.approx(math.e - math.exp(2))


def test_the_planner_matches_the_normal_approximation():
    differences = np.array([0.0, 0.2] * 50)  # standard deviation 0.1005
    spread = np.std(differences, ddof=1)
    expected = math.ceil(((1.959964 + 0.841621) * spread / 0.03) ** 2)
    assert examples_needed(differences, 0.03) == expected


def test_bleu_from_per_reply_statistics_equals_corpus_bleu():
    predictions = ["I can help you cancel order ORD-98765 today.", "Call us any time.", "Please visit our website."]
    references = [
        "I can help you cancel your order ORD-98765.",
        "Our team is available 9 to 6.",
        "Visit our website now.",
    ]
    rows = bleu_statistics(predictions, references)
    assert bleu_from_statistics(rows) == corpus_bleu(predictions, references)
    assert bleu_from_statistics(rows[:1]) == corpus_bleu(predictions[:1], references[:1])


def test_a_check_that_applies_to_some_replies_is_paired_only_where_both_models_have_it():
    base = np.full(30, 0.2)
    samples = _samples(base, base + 0.1, ["a_x"] * 20 + ["b_y"] * 10)
    for i, sample in enumerate(samples):
        sample["base_invented_facts"], sample["finetuned_invented_facts"] = float(i < 20), float(i < 5)
        applies = i % 3 == 0  # the customer gave an identifier the reference uses in 10 of the 30
        sample["base_copied_facts"] = 0.0 if applies else None
        sample["finetuned_copied_facts"] = (1.0 if i < 15 else 0.0) if applies else None
        sample["base_slot_recall"] = sample["finetuned_slot_recall"] = None  # no reference states a slot
    stats = eval_statistics(samples, [[-10.0, 5, -8.0, 5]] * 30, seed=0)
    copied = stats["metrics"]["copied_facts"]
    assert copied["difference"]["n"] == 10 and copied["base"]["mean"] == 0.0
    assert copied["finetuned"]["mean"] == pytest.approx(5 / 10)  # i = 0, 3, 6, 9, 12 copy; 15 .. 27 do not
    assert "slot_recall" not in stats["metrics"]  # applies to no example: absent, not zero
    invented = {row["intent"]: row for row in stats["by_intent_invented_facts"]}
    assert invented["a_x"]["base"] == 1.0 and invented["a_x"]["finetuned"] == 0.25 and invented["b_y"]["base"] == 0.0
    assert stats["metrics"]["invented_facts"]["difference"]["mean"] == pytest.approx(5 / 30 - 20 / 30)

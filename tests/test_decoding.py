"""Decoding: the reply budget and the choice among candidates."""

from __future__ import annotations

import dataclasses

import pytest

from supportbench.decoding import (
    Decoding,
    budget_check,
    candidates,
    compare_to_greedy,
    first_fitting,
    fits,
    pick,
    reply_budget,
)


def test_the_reply_budget_is_the_training_replies_p99_rounded_up_to_8():
    lengths = list(range(1, 201))
    budget = reply_budget(lengths)
    assert budget["p99"] == pytest.approx(198.01)
    assert budget["max_new_tokens"] == 200 and budget["max"] == 200


def _scored(
    p: float, n: int, per_example: list[float], at_cap: float, invented_facts: float = 0.0, repetition: float = 0.0
) -> dict:
    rouge = {"mean": sum(per_example) / len(per_example)}
    return {
        "decoding": dataclasses.asdict(Decoding(64, p, n)),
        "rougeL": rouge,
        "per_example_rougeL": per_example,
        "at_cap": at_cap,
        "repetition": repetition,
        "invented_facts": invented_facts,
    }


def test_the_budget_check_passes_greedy_within_the_cap_share_and_without_loops_and_the_search_stops_at_a_fit():
    replies = [0.3] * 24
    assert fits(_scored(1.0, 0, replies, 0.0)) and fits(_scored(1.0, 0, replies, 0.02))
    assert not fits(_scored(1.0, 0, replies, 1 / 24)) and not fits(_scored(1.0, 0, replies, 0.0, repetition=1 / 24))
    assert budget_check(_scored(1.0, 0, replies, 0.0), 24).startswith("plain greedy passes the budget check on 24")
    assert "fails" in budget_check(_scored(1.0, 0, replies, 0.0, repetition=0.125), 24)
    assert first_fitting([_scored(1.0, 0, replies, 0.0)])[0] == Decoding(64)
    looping = _scored(1.0, 0, replies, 0.0, repetition=0.1)
    assert first_fitting([looping, _scored(1.1, 0, replies, 0.1)]) is None
    choice, reason = first_fitting([looping, _scored(1.1, 0, replies, 0.1), _scored(1.0, 6, replies, 0.0)])
    assert choice == Decoding(64, 1.0, 6) and "first candidate that fits" in reason
    inventing = _scored(1.1, 0, replies, 0.0, invented_facts=0.1)
    assert first_fitting([looping, inventing]) is None  # never one that invents more facts than greedy


def test_plain_greedy_stays_unless_a_candidate_beats_it_with_a_paired_interval_above_zero():
    greedy = [0.30, 0.32, 0.28, 0.35, 0.31, 0.29, 0.33, 0.30] * 3
    noisy = [g + d for g, d in zip(greedy, [0.04, -0.03, 0.02, -0.02, 0.03, -0.01, 0.0, 0.01] * 3, strict=True)]
    better = [g + 0.05 for g in greedy]
    scored = compare_to_greedy([_scored(1.0, 0, greedy, 0.0), _scored(1.1, 0, noisy, 0.0)], seed=1)
    assert scored[1]["rougeL"]["mean"] > scored[0]["rougeL"]["mean"]  # higher on average, but within the noise
    choice, reason = pick(scored)
    assert choice == Decoding(64) and "no candidate beat it" in reason
    scored = compare_to_greedy(
        [_scored(1.0, 0, greedy, 0.0), _scored(1.1, 0, noisy, 0.0), _scored(1.0, 6, better, 0.0)], seed=1
    )
    choice, reason = pick(scored)
    assert choice == Decoding(64, 1.0, 6) and reason.startswith("beat plain greedy by +0.0500")
    scored = compare_to_greedy([_scored(1.0, 0, greedy, 0.0), _scored(1.0, 6, better, 0.10)], seed=1)
    assert pick(scored)[0] == Decoding(64)  # a winner that leaves too many replies at the cap is not taken


def test_a_decoding_that_invents_more_facts_than_plain_greedy_is_never_chosen():
    greedy, better = [0.30] * 24, [0.36] * 24
    inventing = _scored(1.0, 6, better, 0.0, invented_facts=0.125)  # 3 of 24 replies change a customer's number
    scored = compare_to_greedy([_scored(1.0, 0, greedy, 0.0, invented_facts=0.0), inventing], seed=1)
    assert pick(scored)[0] == Decoding(64)
    scored = compare_to_greedy([_scored(1.0, 0, greedy, 0.10), inventing, _scored(1.1, 0, greedy, 0.0)], seed=1)
    assert pick(scored)[0] == Decoding(64, 1.1, 0)  # greedy at the cap: the best that fits and keeps the facts


def test_greedy_with_too_many_replies_at_the_cap_gives_way_to_the_best_within_the_cap_share():
    greedy, other = [0.30] * 24, [0.28] * 24
    scored = compare_to_greedy([_scored(1.0, 0, greedy, 0.10), _scored(1.1, 0, other, 0.0)], seed=1)
    choice, reason = pick(scored)
    assert choice == Decoding(64, 1.1, 0) and "left 10% of validation replies at the cap" in reason
    scored = compare_to_greedy([_scored(1.0, 0, greedy, 0.5), _scored(1.1, 0, other, 0.3)], seed=1)
    assert pick(scored)[0] == Decoding(64, 1.1, 0)  # none fits: fewest at the cap
    assert candidates(64, ngram_controls=False) == [Decoding(64, 1.0, 0), Decoding(64, 1.1, 0)]

"""Decoding: the reply budget and the choice among candidates."""

from __future__ import annotations

import dataclasses

import pytest

from supportbench.decoding import Decoding, candidates, pick, reply_budget


def test_the_reply_budget_is_the_training_replies_p99_rounded_up_to_8():
    lengths = list(range(1, 201))
    budget = reply_budget(lengths)
    assert budget["p99"] == pytest.approx(198.01)
    assert budget["max_new_tokens"] == 200 and budget["max"] == 200


def test_pick_takes_the_best_validation_rouge_among_candidates_within_the_cap_share():
    def scored(p: float, n: int, rouge: float, at_cap: float) -> dict:
        return {"decoding": dataclasses.asdict(Decoding(64, p, n)), "rougeL": {"mean": rouge}, "at_cap": at_cap}

    assert pick([scored(1.0, 0, 0.30, 0.10), scored(1.1, 0, 0.28, 0.0), scored(1.0, 6, 0.25, 0.02)]) == Decoding(
        64, 1.1, 0
    )
    # none fits: fewest at cap
    assert pick([scored(1.0, 0, 0.30, 0.5), scored(1.1, 0, 0.20, 0.3)]) == Decoding(64, 1.1, 0)
    assert pick([scored(1.0, 0, 0.3, 0.0), scored(1.1, 0, 0.3, 0.0)]) == Decoding(64)  # a tie keeps plain greedy
    assert candidates(64, ngram_controls=False) == [Decoding(64, 1.0, 0), Decoding(64, 1.1, 0)]

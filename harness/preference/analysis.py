"""What the votes say: win rates per pair of variants (ties as half) with Wilson intervals, Bradley–Terry ratings
with bootstrap intervals for three or more variants, position bias, agreement between raters, and the votes still
needed to tell two variants apart."""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats

from supportbench.stats import CONFIDENCE, wilson_interval

BT_RESAMPLES = 1000
ELO_SCALE = 400 / math.log(10)  # ratings on the Elo scale, as Chatbot Arena shows them


def winner(vote: dict[str, Any]) -> str | None:
    """The variant a vote prefers; None for a tie or "both bad"."""
    return {"A": vote["variant_a"], "B": vote["variant_b"]}.get(vote["choice"])


def variants_of(vote: dict[str, Any]) -> tuple[str, str]:
    """The vote's two variants, sorted: the key of its pair of variants."""
    return tuple(sorted((vote["variant_a"], vote["variant_b"])))  # type: ignore[return-value]


def votes_to_separate(share: float, n: int) -> int | None:
    """Votes at which a win share like this one has a 95% interval that excludes one half (normal approximation);
    None when the share is one half (nothing to separate), and at least n when they already are."""
    if abs(share - 0.5) < 1e-12:
        return None
    z = stats.norm.ppf(1 - (1 - CONFIDENCE) / 2)
    return max(2, math.ceil(z * z * share * (1 - share) / (share - 0.5) ** 2))


def pair_table(votes: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per pair of variants: votes, wins of each, ties and both-bad, the first variant's win rate (ties as half)
    with its Wilson interval, and the planner's votes needed."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for vote in votes:
        groups[variants_of(vote)].append(vote)
    rows = []
    for (first, second), members in sorted(groups.items()):
        wins = {first: 0, second: 0}
        for vote in members:
            if (won := winner(vote)) is not None:
                wins[won] += 1
        ties = sum(v["choice"] == "tie" for v in members)
        both_bad = sum(v["choice"] == "both_bad" for v in members)
        rate = wilson_interval(wins[first] + (ties + both_bad) / 2, len(members))
        needed = votes_to_separate(rate["mean"], len(members))
        rows.append(
            {
                "variants": [first, second],
                "votes": len(members),
                "wins": wins,
                "ties": ties,
                "both_bad": both_bad,
                "win_rate": {"variant": first, **rate},
                "separated": rate["low"] > 0.5 or rate["high"] < 0.5,
                "votes_to_separate": needed,
                "more_votes_needed": None if needed is None else max(0, needed - len(members)),
            }
        )
    return rows


def _strengths(names: list[str], wins: np.ndarray) -> np.ndarray:
    """Bradley–Terry strengths by Hunter's MM iterations; wins[i, j] counts i over j (ties as halves)."""
    games = wins + wins.T
    strength = np.ones(len(names))
    for _ in range(1000):
        denominators = (games / (strength[:, None] + strength[None, :] + 1e-300)).sum(axis=1)
        updated = (wins.sum(axis=1) + 0.5) / np.maximum(
            denominators, 1e-300
        )  # +0.5: a variant that never won stays finite
        updated /= np.exp(np.log(updated).mean())
        if np.allclose(updated, strength, rtol=1e-9, atol=0):
            break
        strength = updated
    return strength


def _win_matrix(names: list[str], votes: Sequence[dict[str, Any]]) -> np.ndarray:
    index = {name: i for i, name in enumerate(names)}
    wins = np.zeros((len(names), len(names)))
    for vote in votes:
        a, b = index[vote["variant_a"]], index[vote["variant_b"]]
        won = winner(vote)
        if won is None:
            wins[a, b] += 0.5
            wins[b, a] += 0.5
        else:
            wins[index[won], b if index[won] == a else a] += 1
    return wins


def bradley_terry(votes: Sequence[dict[str, Any]], seed: int) -> dict[str, dict[str, float]] | None:
    """Bradley–Terry ratings (Elo scale, mean 0) with 95% percentile intervals over votes resampled with replacement;
    None for fewer than three variants (a win rate says it all)."""
    names = sorted({v["variant_a"] for v in votes} | {v["variant_b"] for v in votes})
    if len(names) < 3:
        return None
    ratings = lambda sample: ELO_SCALE * np.log(_strengths(names, _win_matrix(names, sample)))  # noqa: E731
    point = ratings(votes)
    rng = np.random.default_rng(seed)
    resampled = np.array(
        [ratings([votes[i] for i in rng.integers(0, len(votes), len(votes))]) for _ in range(BT_RESAMPLES)]
    )
    low, high = np.percentile(resampled, [2.5, 97.5], axis=0)
    return {n: {"rating": float(point[i]), "low": float(low[i]), "high": float(high[i])} for i, n in enumerate(names)}


def position_bias(votes: Sequence[dict[str, Any]]) -> dict[str, float]:
    """The share of decisive votes won by the left reply (A), with its Wilson interval; one half is no bias."""
    decisive = [v for v in votes if v["choice"] in ("A", "B")]
    return wilson_interval(sum(v["choice"] == "A" for v in decisive), len(decisive))


JUDGE_PREFIX = "judge:"  # the rater name of a model judge's votes (supportbench judge)


def is_human(vote: dict[str, Any]) -> bool:
    """True for a person's vote, False for a model judge's."""
    return not vote["rater"].startswith(JUDGE_PREFIX)


def _verdicts(votes: Sequence[dict[str, Any]]) -> dict[str, dict[str, str]]:
    """Each pair's verdict (the variant preferred, or "tie") by rater, their first vote on it."""
    by_pair: dict[str, dict[str, str]] = defaultdict(dict)
    for vote in votes:
        by_pair[vote["pair"]].setdefault(vote["rater"], winner(vote) or "tie")
    return by_pair


def _agreement(shared: list[tuple[str, str]]) -> dict[str, Any]:
    from sklearn.metrics import cohen_kappa_score

    if not shared:
        return {"shared_pairs": 0, "agreement": None, "cohen_kappa": None}
    first, second = zip(*shared, strict=True)
    agree = sum(a == b for a, b in shared)
    kappa = float(cohen_kappa_score(first, second)) if len(set(first) | set(second)) > 1 else 1.0
    return {"shared_pairs": len(shared), "agreement": wilson_interval(agree, len(shared)), "cohen_kappa": kappa}


def rater_agreement(votes: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Where two people voted on the same pair: how often their verdicts (the variant preferred, or a tie) agree,
    and Cohen's kappa over those pairs (the first two raters of each pair)."""
    by_pair = _verdicts([v for v in votes if is_human(v)])
    return _agreement([tuple(list(r.values())[:2]) for r in by_pair.values() if len(r) >= 2])  # type: ignore[misc]


def judge_agreement(votes: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per model judge: on the pairs a person also voted on, how often the judge's verdict is the person's (the
    judge's accuracy) and Cohen's kappa."""
    by_pair = _verdicts(votes)
    judges = sorted({v["rater"] for v in votes if not is_human(v)})
    table = {}
    for judge in judges:
        shared = []
        for raters in by_pair.values():
            people = [verdict for rater, verdict in raters.items() if not rater.startswith(JUDGE_PREFIX)]
            if judge in raters and people:
                shared.append((people[0], raters[judge]))
        table[judge] = _agreement(shared)
    return table


def summarize(votes: Sequence[dict[str, Any]], seed: int = 1234) -> dict[str, Any]:
    """Everything `supportbench ratings` reports, from the store's votes."""
    human = [v for v in votes if is_human(v)]
    return {
        "votes": len(human),
        "raters": sorted({v["rater"] for v in human}),
        "judge_votes": len(votes) - len(human),
        "pairs": pair_table(human),
        "bradley_terry": bradley_terry(human, seed),
        "position_bias_left": position_bias(human),
        "rater_agreement": rater_agreement(human),
        "judges": judge_agreement(votes),
        "reasons": dict(sorted(Counter(r for v in human for r in v["reasons"]).items())),
    }


def summary_lines(summary: dict[str, Any]) -> list[str]:
    """The votes per pair of variants with the win rate, then position bias and rater agreement."""
    lines = [f"{summary['votes']} votes by {len(summary['raters'])} rater(s)"]
    if summary["judge_votes"]:
        lines.append(f"{summary['judge_votes']} model-judge votes, kept apart from the people's")
    for row in summary["pairs"]:
        first, second = row["variants"]
        rate = row["win_rate"]
        more = row["more_votes_needed"]
        plan = (
            "no difference seen"
            if more is None
            else ("separated" if row["separated"] else f"about {more} more votes to separate")
        )
        lines.append(
            f"{first} vs {second}: {row['votes']} votes, {first} wins {row['wins'][first]}, {second} wins "
            f"{row['wins'][second]}, ties {row['ties']}, both bad {row['both_bad']}; {first} win rate "
            f"{rate['mean']:.0%} [{rate['low']:.0%}, {rate['high']:.0%}] ({plan})"
        )
    for name, r in (summary["bradley_terry"] or {}).items():
        lines.append(f"Bradley-Terry {name}: {r['rating']:+.0f} [{r['low']:+.0f}, {r['high']:+.0f}]")
    bias = summary["position_bias_left"]
    if bias["n"]:
        lines.append(
            f"left reply wins {bias['mean']:.0%} [{bias['low']:.0%}, {bias['high']:.0%}] of {bias['n']} decisive votes"
        )
    agreement = summary["rater_agreement"]
    if agreement["shared_pairs"]:
        a = agreement["agreement"]
        lines.append(
            f"raters agree on {a['mean']:.0%} of {agreement['shared_pairs']} shared pairs "
            f"(Cohen's kappa {agreement['cohen_kappa']:.2f})"
        )
    for judge, row in summary["judges"].items():
        if row["shared_pairs"]:
            a = row["agreement"]
            lines.append(
                f"{judge} agrees with the people on {a['mean']:.0%} [{a['low']:.0%}, {a['high']:.0%}] of "
                f"{row['shared_pairs']} pairs (Cohen's kappa {row['cohen_kappa']:.2f})"
            )
        else:
            lines.append(f"{judge}: no pair a person also voted on")
    agreement = summary.get("metric_agreement")
    if agreement:
        lines.append(
            f"which metric prefers what the people prefer ({agreement['votes_with_a_winner']} votes with a winner; "
            f"{agreement['without_reference_excluded']} on typed queries without a reference excluded):"
        )
        for name, row in agreement["metrics"].items():
            a = row["agreement"]
            shown = (
                "no pair to judge" if not row["pairs_judged"] else f"{a['mean']:.0%} [{a['low']:.0%}, {a['high']:.0%}]"
            )
            lines.append(
                f"  {name:<22}{shown} of {row['pairs_judged']} pairs ({row['metric_ties_excluded']} metric ties excluded)"
            )
    return lines


def metric_agreement(
    votes: Sequence[dict[str, Any]], scorers: dict[str, tuple[Any, bool]], references: dict[str, dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """For each automatic metric, how often its preference on a rated pair is the people's: over the votes with a
    winner on pairs whose query has a reference (a test query), the metric prefers the reply it scores better
    (`scorers`: name -> (score(reply, reference_row), higher is better)). Votes without a winner, pairs without a
    reference, and pairs the metric scores equal are excluded and counted."""
    human = [v for v in votes if is_human(v)]
    decided = [v for v in human if winner(v) is not None]
    referenced = [v for v in decided if v["query"] in references]
    table = {}
    for name, (score, higher_is_better) in scorers.items():
        agree = equal = 0
        for vote in referenced:
            row = references[vote["query"]]
            a, b = score(vote["reply_a"], row), score(vote["reply_b"], row)
            if a is None or b is None or a == b:
                equal += 1
                continue
            metric_choice = "A" if (a > b) == higher_is_better else "B"
            agree += metric_choice == vote["choice"]
        judged = len(referenced) - equal
        table[name] = {
            "agreement": wilson_interval(agree, judged),
            "pairs_judged": judged,
            "metric_ties_excluded": equal,
        }
    return {
        "votes_with_a_winner": len(decided),
        "people_ties_excluded": len(human) - len(decided),
        "without_reference_excluded": len(decided) - len(referenced),
        "metrics": table,
    }

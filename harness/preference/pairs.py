"""Preference pairs for DPO: the Rate tab's votes (people's, a judge's only when named) and the reply policy's
overrides (the guarded reply chosen over the raw one). Replies are kept in the trained form, company facts as
{{Slot}}, so a profile still fills them at serve time."""

from __future__ import annotations

import dataclasses
import random
from collections import Counter
from pathlib import Path
from typing import Any

from supportbench.files import SupportBenchError, read_bundled_yaml
from supportbench.layout import RunDir

SOURCES = ("guarded", "ratings")
GUARD_QUERIES = 24  # per group of the behaviour set: 24 of each refusal, request and escalation, 6 x 14 handoffs


def parse_source(entry: str, run: RunDir) -> tuple[str, Path | None]:
    """`guarded`, `ratings` (the run's ratings.sqlite) or `ratings=FILE` as (kind, file); a file that is not there
    is refused before any work."""
    kind, _, path = entry.partition("=")
    if kind not in SOURCES or (kind == "guarded" and path):
        raise SupportBenchError(f"--pairs {entry!r}: choose guarded, ratings or ratings=FILE")
    if kind == "guarded":
        return kind, None
    store = Path(path) if path else run.ratings_store
    if not store.is_file():
        raise SupportBenchError(f"--pairs {entry}: no ratings store at {store} (the Rate tab writes it)")
    return kind, store


def vote_pairs(store: Path, judge: str | None, profile: dict[str, str]) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """One pair per rated pair whose counted votes prefer one reply: people's votes, and the named judge's; ties,
    'both bad' and split votes give none (counted)."""
    from supportbench.facts.slots import as_slots
    from supportbench.preference.store import PreferenceStore

    counted = lambda rater: not rater.startswith("judge:") or (judge and rater == f"judge:{judge}")  # noqa: E731
    votes = PreferenceStore(store).votes()
    tally: dict[str, Counter[str]] = {}
    shown: dict[str, dict[str, Any]] = {}
    for vote in votes:
        if counted(vote["rater"]):
            tally.setdefault(vote["pair"], Counter())[vote["choice"]] += 1
            shown[vote["pair"]] = vote
    pairs, undecided = [], 0
    for pair_id, choices in tally.items():
        if choices["A"] == choices["B"]:
            undecided += 1
            continue
        vote = shown[pair_id]
        better, worse = ("reply_a", "reply_b") if choices["A"] > choices["B"] else ("reply_b", "reply_a")
        pairs.append(
            {
                "turns": [vote["query"]],
                "chosen": as_slots(vote[better], profile),
                "rejected": as_slots(vote[worse], profile),
                "source": "ratings",
                "why": f"{max(choices['A'], choices['B'])} of {sum(choices.values())} votes",
            }
        )
    skipped_judge = sum(not counted(v["rater"]) for v in votes)
    return pairs, {"votes": len(votes), "judge_votes_left_out": skipped_judge, "undecided_pairs": undecided}


def guard_queries(seed: int) -> list[str]:
    """The queries the guarded source asks: a seeded sample of GUARD_QUERIES from each POLICY group of the bundled
    behaviour set, where the policy is meant to step in (generation is the cost: about 1.5 s a reply on 2 CPU cores);
    the contrast groups, whose queries give an order number, are left out."""
    from supportbench.prepare.mix import BUNDLED

    groups = read_bundled_yaml("supportbench.prepare", BUNDLED["behaviour"])
    rng = random.Random(seed)
    return [
        q
        for group in groups.values()
        if group["category"] == "POLICY"
        for q in rng.sample(group["queries"], min(GUARD_QUERIES, len(group["queries"])))
    ]


def guarded_pairs(
    run: RunDir, profile: str | None, batch_size: int, seed: int
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """The run's raw replies to guard_queries() that the reply policy overrode, each against the guarded reply;
    filled with a profile whose values are their own slots, so both stay in the trained form."""
    from supportbench.config import BehaviorConfig
    from supportbench.evaluation.behavior import SuiteRunner
    from supportbench.facts.slots import slot_profile
    from supportbench.serve.policy import ReplyPolicy
    from supportbench.templates import Turn

    runner = SuiteRunner(run, BehaviorConfig(batch_size=batch_size), profile)
    runner.profile = dataclasses.replace(runner.profile, values=slot_profile(runner.profile.values))
    policy = ReplyPolicy.for_run(run, runner.profile)
    if policy is None:
        raise SupportBenchError("--pairs guarded needs the reply policy, which the profile switches off")
    queries = guard_queries(seed)
    raw = [replies[0] for replies in runner.replies([[Turn(q)] for q in queries], finetuned=True)]
    pairs, reasons = [], Counter()
    for query, reply in zip(queries, raw, strict=True):
        guarded = policy.guard(reply, [query])
        reasons[guarded.reason] += 1
        if guarded.reason != "model" and guarded.text.strip() != reply.strip():
            pairs.append(
                {
                    "turns": [query],
                    "chosen": guarded.text,
                    "rejected": reply,
                    "source": "guarded",
                    "why": guarded.reason,
                }
            )
    return pairs, {"queries": len(queries), **{f"policy_{k}": n for k, n in sorted(reasons.items())}}


def collect(
    entries: list[str], run: RunDir, judge: str | None, limit: int | None, seed: int, profile: str | None = None
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Every source's pairs (a seeded sample of `limit` when given) and a record of what each gave; zero pairs in
    all is refused, naming what each source found."""
    from supportbench.facts.profile import profile_for_run

    sources = [parse_source(entry, run) for entry in entries]  # every file checked before any generation
    pairs: list[dict[str, Any]] = []
    record: dict[str, Any] = {}
    for (kind, store), entry in zip(sources, entries, strict=True):
        if kind == "guarded":
            found, counts = guarded_pairs(run, profile, batch_size=16, seed=seed)
        else:
            found, counts = vote_pairs(store, judge, profile_for_run(run.data, profile).values)
        pairs += found
        record[entry] = {"pairs": len(found), **counts}
    if not pairs:
        shown = "; ".join(f"{entry}: {counts}" for entry, counts in record.items())
        raise SupportBenchError(f"--method dpo: the --pairs sources gave 0 pairs, nothing to train on ({shown})")
    if limit is not None and limit < len(pairs):
        pairs = random.Random(seed).sample(pairs, limit)
    record["used"] = len(pairs)
    record["by_source"] = dict(Counter(p["source"] for p in pairs))
    record["by_reason"] = dict(Counter(p["why"] for p in pairs if p["source"] == "guarded"))
    return pairs, record

"""`supportbench ratings`: what the blind pairwise votes in a preference store say."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def agreement_with_metrics(run: Any, votes: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Which automatic metric prefers what the raters prefer, scored against the run's test references; None for a
    run folder without a prepared split."""
    from supportbench.checks import intent
    from supportbench.checks.embedding import similarity
    from supportbench.facts.profile import profile_for_run
    from supportbench.metrics import METRICS, rouge, sentence_bleu
    from supportbench.preference.analysis import metric_agreement
    from supportbench.tasks.customer_support.utils import intent_classifier, read_reference

    if not run.data.is_prepared:
        return None
    profile = profile_for_run(run.data, None)
    references = {
        row["instruction"]: {**row, "reference": read_reference(row, profile)} for row in run.data.rows("test")
    }
    classifier = intent_classifier(str(run.data.path), "")
    scorers = {
        "rougeL": (lambda reply, row: rouge(reply, row["reference"])["rougeL"], True),
        "bleu": (lambda reply, row: sentence_bleu(reply, row["reference"]), True),
        "semantic_similarity": (lambda reply, row: similarity(reply, row["reference"]), True),
    }
    if classifier:
        scorers["intent_fidelity"] = (
            lambda reply, row: float(intent.predict(classifier, reply) == row["intent"]),
            True,
        )
    return {**metric_agreement(votes, scorers, references), "labels": {m: METRICS[m].label for m in scorers}}


def run(args: argparse.Namespace) -> None:
    """Summarize the store's votes; print them and write eval/ratings.json."""
    from supportbench.files import SupportBenchError, write_json
    from supportbench.layout import RunDir
    from supportbench.preference.analysis import summarize, summary_lines
    from supportbench.preference.store import PreferenceStore

    run_dir = RunDir(Path(args.run))
    path = Path(args.ratings) if args.ratings else run_dir.ratings_store
    if not path.is_file():
        raise SupportBenchError(f"no preference store at {path}: cast votes in the app's Rate tab first")
    votes = PreferenceStore(path).votes()
    summary = {"store": str(path), **summarize(votes), "metric_agreement": agreement_with_metrics(run_dir, votes)}
    write_json(run_dir.eval.ratings, summary)
    print("\n".join(summary_lines(summary)))


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the command."""
    from supportbench.cli.options import add_command

    p = add_command(
        sub,
        "ratings",
        run,
        "what the blind pairwise votes say: win rates, Bradley-Terry, position bias, rater agreement",
        "Read the preference store (the app's Rate tab writes RUN/ratings.sqlite) and report votes per pair of "
        "variants, the win rate with ties as half and its Wilson interval, Bradley-Terry ratings with bootstrap "
        "intervals for three or more variants, the left slot's share of wins (position bias), agreement between "
        "raters on shared pairs, and the votes still needed to separate two variants; writes eval/ratings.json.",
        run_folder="the run whose store (or whose report) the votes belong to",
    )
    p.add_argument(
        "--ratings", metavar="DB", help="a preference store shared across runs (default: RUN/ratings.sqlite)"
    )

"""The preference store on a real SQLite file (concurrent writers included) and what `supportbench ratings` says."""

from __future__ import annotations

import multiprocessing
import random

import pytest
from scipy import stats

from supportbench.cli import main
from supportbench.files import SupportBenchError, read_json
from supportbench.layout import RunDir
from supportbench.preference.analysis import bradley_terry, pair_table, rater_agreement, summarize
from supportbench.preference.store import PreferenceStore


def _pair(store: PreferenceStore, rng: random.Random, first: str = "base", second: str = "finetuned"):
    return store.add_pair(
        "where is my order?", {first: f"{first} reply", second: f"{second} reply"}, {"max_new_tokens": 8}, rng
    )


def _vote_for(store: PreferenceStore, pair, variant: str, rater: str = "ana") -> int:
    return store.vote(pair.id, rater, "A" if pair.variant_a == variant else "B")


def test_a_vote_keeps_everything_about_its_pair_and_bad_votes_are_refused(tmp_path):
    store = PreferenceStore(tmp_path / "ratings.sqlite")
    pair = _pair(store, random.Random(0))
    store.vote(pair.id, "ana", "tie", ["incomplete", "rude"])
    [vote] = PreferenceStore(tmp_path / "ratings.sqlite").votes()  # a second handle reads what the first wrote
    assert vote["rater"] == "ana" and vote["choice"] == "tie" and vote["reasons"] == ["incomplete", "rude"]
    assert {vote["variant_a"], vote["variant_b"]} == {"base", "finetuned"}
    assert vote["reply_a"] == f"{vote['variant_a']} reply" and vote["settings"] == {"max_new_tokens": 8}
    with pytest.raises(SupportBenchError, match="unknown pair 'nope'"):
        store.vote("nope", "ana", "A")
    with pytest.raises(SupportBenchError, match="unknown choice 'C'"):
        store.vote(pair.id, "ana", "C")
    with pytest.raises(SupportBenchError, match="unknown reason 'boring'"):
        store.vote(pair.id, "ana", "A", ["boring"])
    with pytest.raises(SupportBenchError, match="rater name"):
        store.vote(pair.id, "  ", "A")
    assert len(store.votes()) == 1


def test_the_order_of_a_pair_is_random(tmp_path):
    store = PreferenceStore(tmp_path / "ratings.sqlite")
    rng = random.Random(3)
    lefts = {_pair(store, rng).variant_a for _ in range(20)}
    assert lefts == {"base", "finetuned"}


def _writer(path: str, pair_id: str, rater: str, count: int) -> None:
    store = PreferenceStore(path)
    for _ in range(count):
        store.vote(pair_id, rater, "A")


def test_concurrent_writers_lose_no_vote(tmp_path):
    path = tmp_path / "ratings.sqlite"
    pair = _pair(PreferenceStore(path), random.Random(0))
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_writer, args=(str(path), pair.id, f"tab-{i}", 40)) for i in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
        assert worker.exitcode == 0
    votes = PreferenceStore(path).votes()
    assert len(votes) == 160 and {v["rater"] for v in votes} == {f"tab-{i}" for i in range(4)}
    assert len({v["vote"] for v in votes}) == 160


def test_win_rate_counts_ties_as_half_with_a_wilson_interval(tmp_path):
    store = PreferenceStore(tmp_path / "ratings.sqlite")
    rng = random.Random(1)
    for _ in range(14):
        _vote_for(store, _pair(store, rng), "finetuned")
    for _ in range(4):
        _vote_for(store, _pair(store, rng), "base")
    for _ in range(2):
        store.vote(_pair(store, rng).id, "ana", "tie")
    [row] = pair_table(store.votes())
    assert row["variants"] == ["base", "finetuned"] and row["votes"] == 20 and row["ties"] == 2
    assert row["wins"] == {"base": 4, "finetuned": 14}
    rate = row["win_rate"]  # base's: (4 + 2/2) / 20
    assert rate["variant"] == "base" and rate["mean"] == pytest.approx(0.25)
    low, high = stats.binomtest(5, 20).proportion_ci(method="wilson")  # 5 of 20: the same counts, no halves
    assert (rate["low"], rate["high"]) == (pytest.approx(low), pytest.approx(high))
    assert row["separated"] and row["more_votes_needed"] == 0


def test_bradley_terry_orders_three_variants_and_rater_agreement_reads_shared_pairs(tmp_path):
    store = PreferenceStore(tmp_path / "ratings.sqlite")
    rng = random.Random(2)
    for better, worse, times in (
        ("tuned", "base", 12),
        ("export", "base", 10),
        ("tuned", "export", 7),
        ("export", "tuned", 5),
    ):
        for _ in range(times):
            _vote_for(store, _pair(store, rng, better, worse), better)
    ratings = bradley_terry(store.votes(), seed=0)
    assert ratings["tuned"]["rating"] > ratings["export"]["rating"] > ratings["base"]["rating"]
    assert all(r["low"] <= r["rating"] <= r["high"] for r in ratings.values())
    assert bradley_terry([v for v in store.votes() if "export" not in (v["variant_a"], v["variant_b"])], 0) is None
    shared = [_pair(store, rng) for _ in range(4)]
    for i, pair in enumerate(shared):
        _vote_for(store, pair, "finetuned", "ana")
        _vote_for(store, pair, "finetuned" if i < 3 else "base", "ben")
    agreement = rater_agreement(store.votes())
    assert agreement["shared_pairs"] == 4 and agreement["agreement"]["mean"] == 0.75


def test_supportbench_ratings_reports_the_store(tmp_path, capsys):
    run = RunDir(tmp_path / "run")
    store = PreferenceStore(run.ratings_store)
    rng = random.Random(4)
    for variant in ["finetuned"] * 6 + ["base"] * 2:
        _vote_for(store, _pair(store, rng), variant)
    assert main(["ratings", "--run", str(run.path)]) == 0
    out = capsys.readouterr().out
    assert "8 votes by 1 rater(s)" in out and "base vs finetuned: 8 votes, base wins 2, finetuned wins 6" in out
    written = read_json(run.eval.ratings)
    assert written == {"store": str(run.ratings_store), **summarize(store.votes()), "metric_agreement": None}
    assert main(["ratings", "--run", str(tmp_path / "other")]) == 2
    assert "no preference store" in capsys.readouterr().err


def test_the_report_says_which_metric_prefers_what_the_raters_prefer(tiny_run, tmp_path, capsys):
    """People prefer the reference-like reply on test queries: every metric that reads the reference agrees; a
    typed query and a tie are excluded and counted."""
    from helpers import trained_copy

    from supportbench.facts.profile import profile_for_run
    from supportbench.reports.render import write_run_report
    from supportbench.tasks.customer_support.utils import read_reference

    run = RunDir(trained_copy(tiny_run, tmp_path / "run"))
    store = PreferenceStore(run.ratings_store)
    rng = random.Random(5)
    profile = profile_for_run(run.data, None)
    for row in run.data.rows("test")[:6]:
        replies = {"finetuned": read_reference(row, profile), "base": "Hello there."}
        _vote_for(store, store.add_pair(row["instruction"], replies, {}, rng), "finetuned")
    store.vote(_pair(store, rng).id, "ana", "tie")  # "where is my order?" is typed, not a test query
    _vote_for(store, _pair(store, rng), "finetuned")
    assert main(["ratings", "--run", str(run.path)]) == 0
    agreement = read_json(run.eval.ratings)["metric_agreement"]
    assert agreement["votes_with_a_winner"] == 7 and agreement["people_ties_excluded"] == 1
    assert agreement["without_reference_excluded"] == 1
    for name in ("rougeL", "bleu", "semantic_similarity"):
        assert (
            agreement["metrics"][name]["agreement"]["mean"] == 1.0 and agreement["metrics"][name]["pairs_judged"] == 6
        )
    assert "rougeL                100% [" in capsys.readouterr().out
    markdown = write_run_report(run.path)[1].read_text()
    preference = markdown.split("## Human preference")[1].split("## Quality")[0]
    assert "| ROUGE-L | 100% [61%, 100%] | 6 | 0 |" in preference and "| perplexity | — |" in preference

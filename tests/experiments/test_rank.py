"""rank: leaderboards, failures, reuse, and --only jobs gathered by --collect."""

from __future__ import annotations

from helpers import fixture_rows, write_csv

from supportbench.cli import main
from supportbench.config import DataConfig, RankConfig
from supportbench.experiments.rank import collect, rank, rank_job
from supportbench.files import read_json
from supportbench.layout import BoardDir
from supportbench.prepare.dataset import prepare
from supportbench.reports.render import write_leaderboard


def test_rank_lists_failures_and_reuses_finished_models(tiny_model_dir, tmp_path):
    out = tmp_path / "board"
    data = write_csv(tmp_path / "d.csv", fixture_rows())
    prepare(
        DataConfig(source=str(data), test_size=16, validation_size=8), BoardDir(out).run(str(tiny_model_dir)).data.path
    )
    config = RankConfig(models=(str(tiny_model_dir), "no-such-model"), preset="ci", limit=3, max_steps=2)
    board = rank(config, out)
    assert [r["status"] for r in board["rows"]] == ["ok", "failed"]
    assert "unknown model 'no-such-model'" in board["rows"][1]["error"]
    html, markdown = write_leaderboard(board, out)
    assert "no-such-model" in markdown.read_text() and "failed: SupportBenchError" in markdown.read_text()
    assert 'id="chart"' in html.read_text()
    before = BoardDir(out).run(str(tiny_model_dir)).manifest_path.stat().st_mtime
    assert rank(config, out)["rows"][0]["finetuned"] == board["rows"][0]["finetuned"]
    assert BoardDir(out).run(str(tiny_model_dir)).manifest_path.stat().st_mtime == before


def test_rank_only_jobs_then_collect_build_the_leaderboard(tiny_model_dir, tmp_path):
    out = tmp_path / "board"
    data = write_csv(tmp_path / "d.csv", fixture_rows())
    model = str(tiny_model_dir)
    prepare(DataConfig(source=str(data), test_size=16, validation_size=8), BoardDir(out).run(model).data.path)
    config = RankConfig(models=(model, "no-such-model", "never-run"), preset="ci", limit=3, max_steps=2)
    options = ["--out", str(out), "--preset", "ci", "--limit", "3", "--max-steps", "2"]
    assert main(["rank", *options, "--only", model]) == 0
    assert main(["rank", *options, "--only", "no-such-model"]) == 1
    assert not BoardDir(out).page("json").exists()  # a job writes its run folder, never the leaderboard
    assert main(["rank", *options, "--models", ",".join(config.models), "--collect"]) == 0
    board = read_json(BoardDir(out).page("json"))
    assert [(r["model"], r["status"]) for r in board["rows"]] == [
        (model, "ok"),
        ("no-such-model", "failed"),
        ("never-run", "missing"),
    ]
    assert "unknown model 'no-such-model'" in board["rows"][1]["error"]
    assert board["rows"][0]["finetuned"] == read_json(BoardDir(out).run(model).eval.metrics)["metrics"]["finetuned"]
    assert "missing: no finished job" in BoardDir(out).page("md").read_text()
    # a run scored with other eval settings than the leaderboard's is not collected until its job runs again
    wider = RankConfig(models=(model,), preset="ci", limit=4, max_steps=2)
    assert collect(wider, out)["rows"][0]["status"] == "missing"
    assert rank_job(model, out, wider)["status"] == "ok"
    assert collect(wider, out)["rows"][0]["status"] == "ok"


def test_the_leaderboard_takes_the_human_preference_between_ranked_runs(tmp_path):
    import random

    from supportbench.experiments.rank import add_preference
    from supportbench.preference.store import PreferenceStore
    from supportbench.reports.render import preference_cell

    board = BoardDir(tmp_path / "board")
    models = ["org/model-a", "model-b", "model-c"]
    names = [board.run(m).path.name for m in models]  # the runs' folder names, as app --rate-against names them
    store = PreferenceStore(tmp_path / "votes.sqlite")
    rng = random.Random(0)

    def votes(winner: str, loser: str, times: int) -> None:
        for _ in range(times):
            pair = store.add_pair("q", {winner: "w", loser: "l"}, {}, rng)
            store.vote(pair.id, "ana", "A" if pair.variant_a == winner else "B")

    votes(names[0], names[1], 9)
    votes(names[1], names[0], 3)
    rows = [{"model": m} for m in models[:2]]
    add_preference(rows, board, tmp_path / "votes.sqlite")
    assert rows[0]["human_preference"]["kind"] == "win_rate" and rows[0]["human_preference"]["mean"] == 0.75
    assert rows[1]["human_preference"]["mean"] == 0.25 and rows[1]["human_preference"]["votes"] == 12
    assert preference_cell(rows[0]["human_preference"]).startswith("75% [") and preference_cell(None) == "—"
    votes(names[0], names[2], 8)
    votes(names[1], names[2], 6)
    rows = [{"model": m} for m in models]
    add_preference(rows, board, tmp_path / "votes.sqlite")
    ratings = [r["human_preference"]["rating"] for r in rows]
    assert rows[0]["human_preference"]["kind"] == "bradley_terry" and ratings[0] > ratings[1] > ratings[2]
    assert "BT, 26 votes" in preference_cell(rows[0]["human_preference"])

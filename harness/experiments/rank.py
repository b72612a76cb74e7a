"""The rank stage: train, evaluate and benchmark several base models with one preset, then a leaderboard."""

from __future__ import annotations

import traceback
from dataclasses import asdict
from pathlib import Path
from typing import Any

from supportbench.bench.latency import run_suite
from supportbench.config import EvalConfig, RankConfig, load_train_config
from supportbench.decoding import Decoding, given_settings
from supportbench.evaluation.evaluator import evaluate_run
from supportbench.files import SupportBenchError, read_json, write_json
from supportbench.layout import BoardDir
from supportbench.metrics import METRICS
from supportbench.trainers.lora import train


def _wanted_eval(config: RankConfig) -> EvalConfig:
    return EvalConfig(limit=config.limit, ppl_limit=config.ppl_limit)


def scored_as_wanted(stored: EvalConfig, config: RankConfig) -> bool:
    """Whether an eval's settings are the leaderboard's; the decoding each run froze for itself counts as wanted."""
    wanted = asdict(_wanted_eval(config))
    left_to_run = Decoding.__dataclass_fields__.keys() - given_settings(wanted).keys()
    return all(getattr(stored, k) == v for k, v in wanted.items() if k not in left_to_run)


def rank_one(model: str, board: BoardDir, config: RankConfig) -> dict[str, Any]:
    """Train, eval and bench one model, reusing whatever an earlier rank already finished; its leaderboard row."""
    run = board.run(model)
    train(
        load_train_config(config.preset, model=model, max_steps=config.max_steps),
        run.path,
        data=config.data,
        reuse=True,
    )
    if not run.eval.metrics.is_file() or not scored_as_wanted(run.eval.settings(), config):
        evaluate_run(run.path, _wanted_eval(config))
    if not run.bench_summary.is_file():
        run_suite(run.path, quick=True)
    return board_row(model, board, config)


def board_row(model: str, board: BoardDir, config: RankConfig) -> dict[str, Any]:
    """One model's leaderboard row, read from its finished run folder."""
    run = board.run(model)
    evaluation, bench, trained = run.eval.summary(), run.bench_record(), run.trained()
    if not scored_as_wanted(evaluation.config, config):
        raise SupportBenchError(f"{run.eval.metrics} was scored with other settings than this leaderboard's")
    merged = bench.variants["merged"]
    return {
        "model": model,
        "run": str(run.path),
        "status": "ok",
        "base": evaluation.metrics["base"],
        "finetuned": evaluation.metrics["finetuned"],
        "n_generation": evaluation.n["finetuned"].generation,
        "n_perplexity": evaluation.n["finetuned"].perplexity,
        "bench_mode": "quick" if bench.quick else "full",  # a full summary from an earlier bench is kept, and said
        "train_wall_time_s": trained.wall_time_s,
        "trainable_parameters": trained.parameters.trainable,
        "ttft_p50_s": merged.ttft_p50_s,
        "e2e_p50_s": merged.e2e_p50_s,
        "tokens_per_s_batch1": merged.tokens_per_s_batch1,
        "peak_rss_mib": merged.peak_rss_mib,
    }


def rank_job(model: str, out_dir: Path, config: RankConfig) -> dict[str, Any]:
    """One model's job (`rank --only`): its row, or its error, which is kept in the board for `rank --collect`."""
    config.validate()
    board = BoardDir(Path(out_dir))
    print(f"== {model}", flush=True)
    try:
        row = rank_one(model, board, config)
    except Exception as err:  # noqa: BLE001 - one model's failure must not stop the leaderboard
        traceback.print_exc()
        row = {"model": model, "status": "failed", "error": f"{type(err).__name__}: {err}"}
        write_json(board.failure(model), row)
        return row
    board.failure(model).unlink(missing_ok=True)  # an earlier failure of this model is superseded
    return row


def collect(config: RankConfig, out_dir: Path) -> dict[str, Any]:
    """The leaderboard of config.models from their finished run folders (`rank --collect`); a model whose job failed
    is listed with its error, one with no finished job as missing."""
    config.validate()
    board = BoardDir(Path(out_dir))
    rows = []
    for model in config.models:
        if board.failure(model).is_file():
            rows.append(read_json(board.failure(model)))
            continue
        try:
            rows.append(board_row(model, board, config))
        except SupportBenchError as err:
            rows.append({"model": model, "status": "missing", "error": f"no finished job ({err})"})
    ok = sorted(
        (r for r in rows if r["status"] == "ok"),
        key=lambda r: r["finetuned"][config.metric],
        reverse=METRICS[config.metric].higher_is_better,
    )
    if config.ratings:
        add_preference(ok, board, Path(config.ratings))
    leaderboard = {**asdict(config), "rows": ok + [r for r in rows if r["status"] != "ok"]}
    write_json(board.page("json"), leaderboard)
    return leaderboard


def add_preference(rows: list[dict[str, Any]], board: BoardDir, store: Path) -> None:
    """Each row's human-preference rating from the store's people's votes between the ranked runs (variants named
    by run folder): Bradley–Terry on the Elo scale with its interval for three or more models, else the win rate."""
    from supportbench.preference.analysis import summarize
    from supportbench.preference.store import PreferenceStore

    if not store.is_file():
        raise SupportBenchError(f"--ratings {store}: no preference store there")
    names = {board.run(r["model"]).path.name: r for r in rows}
    votes = [v for v in PreferenceStore(store).votes() if {v["variant_a"], v["variant_b"]} <= names.keys()]
    summary = summarize(votes)
    for name, row in names.items():
        if summary["bradley_terry"] and name in summary["bradley_terry"]:
            rating = summary["bradley_terry"][name]
            row["human_preference"] = {"kind": "bradley_terry", **rating, "votes": len(votes)}
        for pair in summary["pairs"]:
            if not summary["bradley_terry"] and name in pair["variants"]:
                rate = pair["win_rate"]
                share = rate["mean"] if rate["variant"] == name else 1 - rate["mean"]
                low, high = (
                    (rate["low"], rate["high"]) if rate["variant"] == name else (1 - rate["high"], 1 - rate["low"])
                )
                row["human_preference"] = {
                    "kind": "win_rate",
                    "mean": share,
                    "low": low,
                    "high": high,
                    "votes": pair["votes"],
                }


def rank(config: RankConfig, out_dir: Path) -> dict[str, Any]:
    """Rank every model, one job after another; a model that fails is listed with its error and stops no other."""
    for model in config.models:
        rank_job(model, out_dir, config)
    return collect(config, out_dir)


def board_lines(board: dict[str, Any], config: RankConfig) -> list[str]:
    """One line per model: its fine-tuned score on the sorting metric, or its status and error."""
    return [
        f"{row['model']:<28} "
        + (f"{row['finetuned'][config.metric]:.4f}" if row["status"] == "ok" else f"{row['status']}: {row['error']}")
        for row in board["rows"]
    ]

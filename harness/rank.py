"""The rank stage: train, evaluate and benchmark several base models with one preset, then a leaderboard."""

from __future__ import annotations

import re
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from harness.bench import run_suite
from harness.io import read_json, write_json
from harness.scoring import EvalConfig, evaluate_run
from trainers.config import load_config
from trainers.lora import train

DEFAULT_MODELS = ("smollm2-135m", "gemma3-270m")
RANK_METRICS = ("rougeL", "rouge1", "rouge2", "bleu", "perplexity")


@dataclass
class RankConfig:
    """Which models, how each is trained and scored, and what the leaderboard sorts by."""

    models: tuple[str, ...] = DEFAULT_MODELS
    preset: str = "ci"
    metric: str = "rougeL"
    limit: int | None = 50
    ppl_limit: int | None = None
    max_steps: int | None = None
    data: str | None = None


def run_folder(out_dir: Path, model: str) -> Path:
    """The run folder of one model inside the leaderboard folder."""
    return Path(out_dir) / re.sub(r"[^A-Za-z0-9._-]+", "_", model.strip("/"))


def rank_one(model: str, out_dir: Path, config: RankConfig) -> dict[str, Any]:
    """Train, eval and bench one model, reusing whatever an earlier rank already finished."""
    run = run_folder(out_dir, model)
    train(load_config(config.preset, model=model, max_steps=config.max_steps), run, data=config.data, reuse=True)
    metrics_path = run / "eval" / "metrics.json"
    wanted = EvalConfig(limit=config.limit, ppl_limit=config.ppl_limit)
    if not metrics_path.is_file() or read_json(metrics_path)["config"] != asdict(wanted):
        evaluate_run(run, wanted)
    if not (run / "bench" / "summary.json").is_file():
        run_suite(run, quick=True)
    evaluation, bench, trained = read_json(metrics_path), read_json(run / "bench" / "summary.json"), read_json(run / "train.json")
    merged = bench["variants"]["merged"]
    return {
        "model": model,
        "run": str(run),
        "status": "ok",
        "base": evaluation["metrics"]["base"],
        "finetuned": evaluation["metrics"]["finetuned"],
        "n_generation": evaluation["n"]["finetuned"]["generation"],
        "train_wall_time_s": trained["wall_time_s"],
        "trainable_parameters": trained["parameters"]["trainable"],
        "ttft_p50_s": merged["ttft_p50_s"],
        "e2e_p50_s": merged["e2e_p50_s"],
        "tokens_per_s_batch1": merged["tokens_per_s_batch1"],
        "peak_rss_mib": merged["peak_rss_mib"],
    }


def rank(config: RankConfig, out_dir: Path) -> dict[str, Any]:
    """Rank every model; a model that fails is listed with its error and does not stop the others."""
    rows = []
    for model in config.models:
        print(f"== {model}", flush=True)
        try:
            rows.append(rank_one(model, out_dir, config))
        except Exception as err:  # noqa: BLE001 - one model's failure must not stop the leaderboard
            traceback.print_exc()
            rows.append({"model": model, "status": "failed", "error": f"{type(err).__name__}: {err}"})
    higher_is_better = config.metric != "perplexity"
    ok = sorted((r for r in rows if r["status"] == "ok"), key=lambda r: r["finetuned"][config.metric], reverse=higher_is_better)
    board = {
        "preset": config.preset,
        "metric": config.metric,
        "limit": config.limit,
        "ppl_limit": config.ppl_limit,
        "max_steps": config.max_steps,
        "rows": ok + [r for r in rows if r["status"] != "ok"],
    }
    write_json(Path(out_dir) / "leaderboard.json", board)
    return board

"""`supportbench rank`: train, score and benchmark several base models; render a leaderboard."""

from __future__ import annotations

import argparse
from pathlib import Path

from supportbench.cli.options import add_command, add_config_options, command_layers
from supportbench.config import RankConfig
from supportbench.files import SupportBenchError


def run(args: argparse.Namespace) -> int:
    """Train, evaluate and benchmark several base models and render a leaderboard."""
    from supportbench.config import layered
    from supportbench.experiments.rank import board_lines, collect, rank, rank_job
    from supportbench.reports.render import write_leaderboard

    if args.only and args.collect:
        raise SupportBenchError("--only runs one model's job and --collect gathers finished jobs; pass one of them")
    config = layered(RankConfig, *command_layers(RankConfig, args))
    if args.only:
        row = rank_job(args.only, Path(args.out), config)
        print(f"{row['model']}: {row['status']}" + (f" ({row['error']})" if row["status"] != "ok" else ""))
        return 0 if row["status"] == "ok" else 1
    board = (collect if args.collect else rank)(config, Path(args.out))
    print(
        "\n".join(
            [*(f"wrote {path}" for path in write_leaderboard(board, Path(args.out))), *board_lines(board, config)]
        )
    )
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the command."""
    p = add_command(
        sub,
        "rank",
        run,
        "train, score and benchmark several base models with one preset; render a leaderboard",
        "For each model: train the preset (reusing a finished run), eval, quick bench; then write leaderboard.json, "
        "leaderboard.html and leaderboard.md into --out. A failing model is listed with its error.",
    )
    p.add_argument("--out", required=True, help="leaderboard folder (one run folder per model inside)")
    p.add_argument(
        "--only",
        metavar="MODEL",
        help="run this one model's job and no leaderboard, so a scheduler (CI matrix, Slurm array) runs the models in "
        "parallel; exit 1 when the job fails (default: every model, one after another)",
    )
    p.add_argument(
        "--collect",
        action="store_true",
        help="train nothing: build the leaderboard of --models from their finished `--only` jobs",
    )
    add_config_options(p, RankConfig)

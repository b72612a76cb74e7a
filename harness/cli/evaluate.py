"""`supportbench eval`: score base and base+LoRA on the run's held-out split."""

from __future__ import annotations

import argparse
from pathlib import Path

from supportbench.cli.options import add_command, add_config_options, add_launch_options, command_layers
from supportbench.config import EvalConfig


def run(args: argparse.Namespace) -> None:
    """Score base and base+LoRA on the run's held-out split, or the exported model against fp32."""
    from supportbench.evaluation.evaluator import evaluate_run, exported_lines, score_exported, table_lines

    if args.exported:
        print("\n".join(exported_lines(score_exported(Path(args.run)))))
        return
    from supportbench.config import layered

    full = [("--full", {"limit": None})] if args.full else []
    summary = evaluate_run(Path(args.run), layered(EvalConfig, *command_layers(EvalConfig, args), *full))
    if summary is not None:  # None: a launched process other than the main one, which writes and prints the results
        print("\n".join(table_lines(summary)))


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the command."""
    p = add_command(
        sub,
        "eval",
        run,
        "score base and base+LoRA with the customer_support lm-eval tasks",
        "Run the customer_support lm-eval tasks for the base model and base+adapter with the same split, prompts "
        "and greedy decoding; write eval/ into the run folder.",
        run_folder="a finished training run folder",
    )
    p.add_argument("--full", action="store_true", help="generate for the whole held-out split (overrides --limit)")
    p.add_argument(
        "--exported",
        action="store_true",
        help="instead: score the exported model (`supportbench export`) with the settings of the run's eval, paired "
        "with its fp32 fine-tuned replies; writes eval/exported/",
    )
    add_launch_options(p, "--backend hf only: the examples are split over the processes, the scores are the same")
    add_config_options(p, EvalConfig)

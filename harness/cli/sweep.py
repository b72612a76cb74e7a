"""`supportbench sweep`: search LoRA settings with Optuna under a time budget."""

from __future__ import annotations

import argparse
from pathlib import Path

from supportbench.cli.options import add_command, add_config_options, command_layers
from supportbench.config import SweepConfig


def run(args: argparse.Namespace) -> None:
    """Search LoRA settings with Optuna under a time budget; write the table, Pareto chart and best preset."""
    from supportbench.config import layered
    from supportbench.experiments.sweep import summary_lines, sweep

    summary = sweep(layered(SweepConfig, *command_layers(SweepConfig, args)), Path(args.out))
    print("\n".join(summary_lines(summary, Path(args.out))))


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the command."""
    p = add_command(
        sub,
        "sweep",
        run,
        "search LoRA settings with Optuna under a time budget, scored on validation ROUGE-L",
        "Sample base model, learning rate, LoRA rank and targets, training examples, epochs and max length with "
        "Optuna (TPE, two objectives: validation ROUGE-L up, training minutes down). Each trial trains a run folder "
        "and scores the validation split as eval does. Writes study.db (every trial, failed and timed-out ones "
        "included; running the command again continues the study), trials.md, pareto.png, best.yaml (a preset "
        "file for `train --config`) and sweep.json into --out.",
    )
    p.add_argument("--out", required=True, help="sweep folder")
    add_config_options(p, SweepConfig)

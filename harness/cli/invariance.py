"""`supportbench invariance`: intent fidelity on perturbed test queries against the clean ones (CheckList INV)."""

from __future__ import annotations

import argparse
from pathlib import Path

from supportbench.cli.options import add_command, add_config_options, add_profile_option, command_layers
from supportbench.config import InvarianceConfig


def run(args: argparse.Namespace) -> None:
    """Answer test queries clean and perturbed with both models; write eval/invariance.json and print the drops."""
    from supportbench.config import layered
    from supportbench.evaluation.invariance import run_invariance, summary_lines

    config = layered(InvarianceConfig, *command_layers(InvarianceConfig, args))
    print("\n".join(summary_lines(run_invariance(Path(args.run), config, args.profile))))


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the command."""
    p = add_command(
        sub,
        "invariance",
        run,
        "invariance: intent fidelity on perturbed test queries (typos, casing, punctuation, politeness)",
        "Answer the first --limit test queries clean and under each seeded perturbation with the base and the "
        "fine-tuned model (the run's frozen decoding), and report how far intent fidelity and semantic similarity "
        "drop from the clean query, paired per example with 95% intervals; writes eval/invariance.json, which the "
        "report shows.",
        run_folder="a finished training run folder",
    )
    add_profile_option(p, "as the app would")
    add_config_options(p, InvarianceConfig)

"""`supportbench train`: fine-tune a LoRA adapter into a run folder."""

from __future__ import annotations

import argparse
from pathlib import Path

from supportbench.cli.options import (
    add_command,
    add_config_file_option,
    add_config_options,
    add_launch_options,
    given_values,
)
from supportbench.config import DEFAULT_PRESET, TrainConfig, preset_names


def run(args: argparse.Namespace) -> None:
    """Fine-tune a LoRA adapter into a run folder."""
    from supportbench.config import load_train_config
    from supportbench.device import process_state
    from supportbench.trainers.lora import summary_lines, train

    config = load_train_config(args.preset, args.config, **given_values(TrainConfig, args))
    manifest = train(config, Path(args.out), resume=args.resume, data=args.data, reuse=args.reuse)
    if process_state().is_main_process:
        print("\n".join(summary_lines(manifest, Path(args.out))))


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the command."""
    p = add_command(
        sub,
        "train",
        run,
        "fine-tune a LoRA adapter (TRL SFTTrainer + PEFT) into a run folder",
        "Train a LoRA adapter from a preset, then an optional YAML file, then the options below. The run folder "
        "gets data/, checkpoints/, adapter/, train.json, loss_history.json and loss_curve.png.",
    )
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument(
        "--preset", default=DEFAULT_PRESET, choices=preset_names(), help=f"bundled preset (default: {DEFAULT_PRESET})"
    )
    add_config_file_option(p, "the preset")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from its last checkpoint")
    p.add_argument(
        "--reuse", action="store_true", help="if the run folder holds a finished run of this config, keep it"
    )
    p.add_argument(
        "--data", help="data for a run folder without a prepared split (default: $SUPPORTBENCH_DATA, else the hub)"
    )
    add_launch_options(p, "data-parallel training; the preset's effective batch is kept by dividing its accumulation")
    add_config_options(p, TrainConfig, defaults_from="the preset's")

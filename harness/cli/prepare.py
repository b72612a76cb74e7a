"""`supportbench prepare`: clean, validate and split the support data."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from supportbench.cli.options import add_command, add_config_file_option, add_config_options, command_layers
from supportbench.config import DataConfig


def run(args: argparse.Namespace) -> None:
    """Prepare the train/validation/test split with a manifest."""
    from supportbench.config import layered
    from supportbench.prepare.dataset import prepare, summary_lines

    config = layered(DataConfig, *command_layers(DataConfig, args))
    if config.mode == "notebook":
        print("supportbench prepare: mode notebook is deprecated; use --mode sample (the same split)", file=sys.stderr)
    manifest = prepare(config, Path(args.out), force=args.force)
    print("\n".join(summary_lines(manifest, Path(args.out))))


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the command."""
    p = add_command(
        sub,
        "prepare",
        run,
        "clean, validate and split the support data",
        "Load a hub dataset or a local CSV/JSONL/Parquet file (exchange pairs, chat transcripts or one message per "
        "row), replace personal data, fill placeholders, and write a leak-free stratified train/validation/test split, "
        "data_card.md/.png and manifest.json. Only these six files are ever written or replaced.",
    )
    p.add_argument("--out", required=True, help="folder to write the splits and manifest into")
    p.add_argument("--force", action="store_true", help="replace a different split, or write beside other files")
    add_config_file_option(p, "the built-in defaults")
    add_config_options(p, DataConfig)

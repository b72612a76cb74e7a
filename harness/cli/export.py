"""`supportbench export`: merge the adapter and write deployable models into RUN/export/."""

from __future__ import annotations

import argparse
from pathlib import Path

from supportbench.cli.options import add_command, add_profile_option
from supportbench.deploy.runtime import FORMAT


def run(args: argparse.Namespace) -> None:
    """Merge the adapter and write deployable models into RUN/export/."""
    from supportbench.deploy.export import export_run, summary_lines

    print("\n".join(summary_lines(export_run(Path(args.run), to=args.to, force=args.force, profile=args.profile))))


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the command."""
    p = add_command(
        sub,
        "export",
        run,
        "merge the adapter and write deployable models (safetensors, CTranslate2 int8)",
        "Merge the LoRA adapter into its base and write RUN/export/merged (safetensors: transformers, vLLM, TGI); "
        "for ctranslate2-int8 also the fine-tuned and base models in CTranslate2 int8, which bench, eval "
        "--exported and app then use. Writes RUN/export/export.json and RUN/export/profile.yaml.",
        run_folder="a finished training run folder",
    )
    p.add_argument(
        "--to",
        default=FORMAT,
        choices=("merged", FORMAT),
        help="format beside the merged folder (default: %(default)s)",
    )
    p.add_argument("--force", action="store_true", help="export again even if export.json matches the adapter")
    add_profile_option(p, "checked against the run and copied to export/profile.yaml for deployments")

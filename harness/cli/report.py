"""`supportbench report`: render report.html and report.md for a run, or a comparison of several runs."""

from __future__ import annotations

import argparse
from pathlib import Path

from supportbench.cli.options import add_command


def run(args: argparse.Namespace) -> None:
    """Render report.html and report.md for a run, or a comparison of several runs."""
    from supportbench.reports.render import write_comparison, write_run_report

    paths = write_comparison([Path(args.run), *map(Path, args.compare)], Path(args.run)) if args.compare else []
    paths += write_run_report(Path(args.run))
    print("\n".join(f"wrote {p}" for p in paths))


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the command."""
    p = add_command(
        sub,
        "report",
        run,
        "render report.html and report.md for a run (and an experiment comparison)",
        "Render the run's JSON files through Jinja2 into report.html (self-contained) and report.md. With "
        "--compare, also write comparison.html/.md, the reference recipe's experiment table, for all the runs.",
        run_folder="a run folder",
    )
    p.add_argument(
        "--compare", nargs="+", default=[], metavar="RUN", help="other runs to compare with --run (default: none)"
    )

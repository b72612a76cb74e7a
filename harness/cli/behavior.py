"""`supportbench behavior`: behaviour cases (YAML suites) answered by base and fine-tuned, with pass rates."""

from __future__ import annotations

import argparse
from pathlib import Path

from supportbench.cli.options import add_command, add_config_options, add_profile_option, command_layers
from supportbench.config import BehaviorConfig


def run(args: argparse.Namespace) -> None:
    """Answer the suites' cases with both models, check them, write eval/behavior.json|md (and --junit)."""
    from supportbench.config import layered
    from supportbench.evaluation.behavior import default_suite, run_behavior, summary_lines, write_junit

    suites = ([] if args.no_default_suite else [default_suite()]) + [Path(s) for s in args.suite or []]
    if not suites:
        from supportbench.files import SupportBenchError

        raise SupportBenchError("--no-default-suite needs at least one --suite FILE")
    config = layered(BehaviorConfig, *command_layers(BehaviorConfig, args))
    summary = run_behavior(Path(args.run), suites, config, args.profile)
    print("\n".join(summary_lines(summary)))
    if args.junit:
        write_junit(summary, Path(args.junit))
        print(f"JUnit XML: {args.junit}")


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the command."""
    p = add_command(
        sub,
        "behavior",
        run,
        "behaviour cases: YAML suites of queries with expectations, base against fine-tuned",
        "Answer behaviour cases (the default suite shipped with the task, and each --suite FILE) with the base and "
        "the fine-tuned model, check every reply against its case's expectations, and write eval/behavior.json and "
        "eval/behavior.md: pass rates per tag group with Wilson intervals, base against fine-tuned with an exact "
        "McNemar test, pass^k with --samples K, and the failing cases with their replies.",
        run_folder="a finished training run folder",
    )
    p.add_argument(
        "--suite", action="append", metavar="FILE", help="a suite YAML file to run too, repeatable (default: none)"
    )
    p.add_argument("--no-default-suite", action="store_true", help="run only the --suite files")
    p.add_argument(
        "--junit", metavar="FILE", help="also write the fine-tuned model's verdicts as JUnit XML (default: none)"
    )
    add_profile_option(p, "as the app would")
    add_config_options(p, BehaviorConfig)

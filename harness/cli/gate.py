"""`supportbench gate`: the release gate's verdict on a run (exit 1 when a rule fails)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from supportbench.cli.options import add_command


def run(args: argparse.Namespace) -> int:
    """Apply the release gate's rules to a run; exit 1 when one fails."""
    from supportbench.evaluation.gate import apply_rules, verdict_lines, write_gate

    verdict = apply_rules(Path(args.run), baseline=args.baseline, rules_file=args.rules)
    print("\n".join(verdict_lines(verdict)))
    write_gate(Path(args.run), verdict)
    if args.junit:
        from supportbench.evaluation.gate import junit_xml
        from supportbench.files import atomic_write_text

        atomic_write_text(Path(args.junit), junit_xml(verdict))
    if verdict["failed"]:
        print(f"gate FAILED: {', '.join(verdict['failed'])}", file=sys.stderr)
        return 1
    print("gate passed")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the command."""
    p = add_command(
        sub,
        "gate",
        run,
        "release gate: check a run's eval against YAML rules (exit 1: a rule failed; 2: cannot judge)",
        "Check the run's eval against the release rules (default: the fine-tuned model beats its base on ROUGE-L "
        "with the paired interval's lower bound above 0, is non-inferior to --baseline within 0.02, and keeps "
        "run-on and placeholder-leak shares low). Writes gate.json and gate.md, and appends the Markdown to "
        "$GITHUB_STEP_SUMMARY when it is set. Exit codes: 0 passed, 1 judged and failed, 2 cannot judge (no eval, "
        "a damaged, mixed or wrongly shaped eval, a bad rules file, an incomparable baseline).",
        run_folder="an evaluated run folder",
    )
    p.add_argument(
        "--baseline", help="an approved run folder (or its eval/metrics.json) to be non-inferior to (default: none)"
    )
    p.add_argument("--rules", help="YAML rules file (default: the bundled gate_rules.yaml)")
    p.add_argument(
        "--junit", metavar="FILE", help="also write the verdict as JUnit XML, one testcase per rule (default: none)"
    )

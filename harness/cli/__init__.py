"""The `supportbench` command: one subcommand per stage, one module per subcommand; options come from typed configs."""

from __future__ import annotations

import argparse
import errno
import sys

from supportbench.cli import (
    app,
    behavior,
    bench,
    evaluate,
    export,
    gate,
    info,
    invariance,
    judge,
    prepare,
    rank,
    ratings,
    report,
    sweep,
    train,
)
from supportbench.files import SupportBenchError

COMMANDS = (
    prepare,
    train,
    evaluate,
    behavior,
    invariance,
    gate,
    bench,
    report,
    rank,
    sweep,
    export,
    app,
    ratings,
    judge,
    info,
)  # in --help's order


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand (imports no model library)."""
    parser = argparse.ArgumentParser(prog="supportbench", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point: run a subcommand; user errors become a message and exit code 2, a failed gate exit code 1."""
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    try:
        if hasattr(args, "num_processes"):
            from supportbench.launch import check_processes, relaunch

            if check_processes(args.num_processes, args.accelerate_config, getattr(args, "backend", "hf")):
                return relaunch(argv, args.num_processes, args.accelerate_config)
        return args.func(args) or 0
    except SupportBenchError as err:
        print(f"supportbench {args.command}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        where = f" writing {err.filename}" if err.filename else ""
        print(f"supportbench {args.command}: error: no space left on the device{where}", file=sys.stderr)
        return 2

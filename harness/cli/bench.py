"""`supportbench bench MODE`: latency and memory (pytest-benchmark), serving load, eval speed, training throughput."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

from supportbench.cli.options import add_command, add_profile_option
from supportbench.config import DEFAULT_PRESET, preset_names
from supportbench.files import SupportBenchError

MODES = ("latency", "serving", "train-throughput", "eval-speed")
DEPRECATED_FLAGS = {"serving": "serving", "train_throughput": "train-throughput"}  # old flag -> mode, for one release
BENCH_INSTALL_HINT = "supportbench bench latency needs pytest and pytest-benchmark: pip install 'supportbench[bench]'"


def chosen_mode(args: argparse.Namespace) -> str:
    """The mode from the positional argument, or from a deprecated --serving/--train-throughput/--eval-baseline flag."""
    old = [mode for flag, mode in DEPRECATED_FLAGS.items() if getattr(args, flag)]
    old += ["eval-speed"] if args.eval_baseline is not None else []
    if len(old) > 1 or old and args.mode and args.mode != old[0]:
        raise SupportBenchError(
            f"bench runs one mode at a time; got {sorted({*old, *([args.mode] if args.mode else [])})}"
        )
    if old:
        print(
            f"supportbench bench: the {old[0]} flag is deprecated; use `supportbench bench {old[0]}`", file=sys.stderr
        )
    return old[0] if old else args.mode or "latency"


def run(args: argparse.Namespace) -> None:
    """Run one benchmark mode on a finished run and print its table."""
    from supportbench.layout import RunDir

    run_dir = RunDir(Path(args.run))
    mode = chosen_mode(args)
    if mode == "eval-speed":
        from supportbench.bench.eval_speed import eval_speedup, summary_lines

        examples = args.eval_baseline if args.eval_baseline is not None else args.examples
        if examples <= 0:
            raise SupportBenchError(f"--examples needs a positive number of examples, not {examples}")
        print("\n".join(summary_lines(eval_speedup(run_dir.path, examples))))
    elif mode == "train-throughput":
        from supportbench.bench.train_throughput import run_benchmark, summary_lines
        from supportbench.config import load_train_config
        from supportbench.files import write_json

        result = run_benchmark(run_dir, load_train_config(args.preset), args.steps)
        write_json(run_dir.train_throughput, result)
        print("\n".join(summary_lines(result, run_dir)))
    elif mode == "serving":
        from supportbench.bench.serving import serving_load, summary_lines

        print("\n".join(summary_lines(serving_load(run_dir.path, profile=args.profile), run_dir)))
    else:
        if importlib.util.find_spec("pytest_benchmark") is None:
            raise SupportBenchError(BENCH_INSTALL_HINT)
        from supportbench.bench.latency import run_suite, summary_lines

        print("\n".join(summary_lines(run_suite(run_dir.path, quick=args.quick, profile=args.profile), run_dir)))


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register the command."""
    p = add_command(
        sub,
        "bench",
        run,
        "benchmarks: latency and memory (pytest-benchmark), serving load, eval speed, training throughput",
        "latency (the default): the pytest-benchmark suite on a finished run: cold/warm load, time to first token, "
        "per-token decode latency, p50/p95 reply latency, batch-1 and batched tokens/s, peak memory; writes "
        "bench/pytest_benchmark.json and bench/summary.json. serving: 1, 8 and 16 concurrent users of the app's "
        "assistant, served by transformers one at a time and by the exported model one at a time and batched "
        "(bench/serving.json; needs `supportbench export`). eval-speed: the reference recipe's one-at-a-time generation "
        "loop on --examples test examples against the run's eval (bench/eval_speed.json). train-throughput: "
        "training tokens/s of the reference recipe against ours, one change at a time (bench/train_throughput.json).",
        run_folder="a finished training run folder",
    )
    p.add_argument("mode", nargs="?", choices=MODES, help="what to measure (default: latency)")
    p.add_argument("--quick", action="store_true", help="latency: 3 queries and 16 new tokens instead of 8 and 64")
    p.add_argument(
        "--examples", type=int, default=8, metavar="N", help="eval-speed: test examples (default: %(default)s)"
    )
    p.add_argument(
        "--preset",
        default=DEFAULT_PRESET,
        choices=preset_names(),
        help="train-throughput: preset (default: %(default)s)",
    )
    p.add_argument(
        "--steps", type=int, default=3, help="train-throughput: timed optimizer steps per arm (default: %(default)s)"
    )
    add_profile_option(p, "latency and serving: recorded in the bench record; serving fills every reply with it")
    p.add_argument("--serving", action="store_true", help="deprecated: use `bench serving`")
    p.add_argument("--train-throughput", action="store_true", help="deprecated: use `bench train-throughput`")
    p.add_argument(
        "--eval-baseline", type=int, metavar="N", help="deprecated: use `bench eval-speed --examples N` (default: off)"
    )

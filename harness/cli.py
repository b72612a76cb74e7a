"""The `supportbench` command: one subcommand per stage, each reading and writing a run folder."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from harness.io import SupportBenchError


def cmd_prepare(args: argparse.Namespace) -> None:
    """Prepare the train/validation/test split with a manifest."""
    from harness.data import DataConfig, prepare, resolve_source, summary_lines

    config = DataConfig(
        source=resolve_source(args.data),
        seed=args.seed,
        mode=args.mode,
        test_size=args.test_size,
        validation_size=args.validation_size,
        sample_size=args.sample_size,
        placeholders=args.placeholders,
    )
    manifest = prepare(config, Path(args.out), force=args.force)
    print("\n".join(summary_lines(manifest, Path(args.out))))


def cmd_models(args: argparse.Namespace) -> None:
    """List registry models and whether each loads offline."""
    from harness.models import availability, cache_root, load_registry, resolve

    print(f"{'alias':<22} {'template':<8} {'availability':<34} description")
    for alias in load_registry():
        spec = resolve(alias)
        print(f"{alias:<22} {spec.template:<8} {availability(spec):<34} {spec.entry.get('description', '')}")
    print(f"\ncache: {cache_root()}   (any hub id or local folder also works as --model)")


def cmd_train(args: argparse.Namespace) -> None:
    """Fine-tune a LoRA adapter into a run folder."""
    from trainers.config import load_config
    from trainers.lora import summary_lines, train

    config = load_config(args.preset, args.config, max_steps=args.max_steps, model=args.model)
    manifest = train(config, Path(args.out), resume=args.resume, data=args.data, reuse=args.reuse)
    print("\n".join(summary_lines(manifest, Path(args.out))))


def cmd_eval(args: argparse.Namespace) -> None:
    """Score base and base+LoRA on the run's held-out split."""
    from harness.scoring import EvalConfig, evaluate_run, table_lines

    if args.limit is not None and args.limit <= 0:
        raise SupportBenchError("--limit must be a positive number of examples")
    config = EvalConfig(
        limit=None if args.full else args.limit,
        ppl_limit=args.ppl_limit,
        gen_batch_size=args.gen_batch_size,
        ppl_batch_size=args.ppl_batch_size,
        max_new_tokens=args.max_new_tokens,
        base_model=args.model,
        twcs=args.twcs,
    )
    summary = evaluate_run(Path(args.run), config)
    print("\n".join(table_lines(summary)))


def cmd_bench(args: argparse.Namespace) -> None:
    """Measure load time, latency, throughput and memory of base, LoRA and merged models."""
    from harness.bench import eval_speedup, run_suite

    if args.eval_baseline:
        speed = eval_speedup(Path(args.run), args.eval_baseline)
        print(
            f"batched eval generation: {speed['batched_seconds']:.1f}s for {speed['generation_examples']} examples x 2 models; "
            f"one at a time: {speed['one_at_a_time_seconds_for_n']:.1f}s (from {speed['measured_examples_one_at_a_time']} "
            f"measured); speedup {speed['speedup']:.1f}x"
        )
        return
    summary = run_suite(Path(args.run), quick=args.quick)
    print(
        f"{'variant':<8}{'warm load s':>12}{'TTFT s':>9}{'ms/token':>10}{'p50 s':>8}{'p95 s':>8}{'tok/s b1':>10}"
        f"{'tok/s batch':>12}{'peak RSS MiB':>14}"
    )
    for name, row in summary["variants"].items():
        print(
            f"{name:<8}{row['warm_load_s']:>12.2f}{row['ttft_p50_s']:>9.3f}{row['decode_ms_per_token_p50']:>10.1f}"
            f"{row['e2e_p50_s']:>8.2f}{row['e2e_p95_s']:>8.2f}{row['tokens_per_s_batch1']:>10.1f}"
            f"{row['tokens_per_s_batched']:>12.1f}{row['peak_rss_mib']:>14.0f}"
        )
    print(f"written to {Path(args.run) / 'bench'}")


def cmd_report(args: argparse.Namespace) -> None:
    """Render report.html and report.md for a run, or a comparison of several runs."""
    from reports.render import write_comparison, write_run_report

    paths = write_comparison([Path(args.run), *map(Path, args.compare)], Path(args.run)) if args.compare else []
    paths += write_run_report(Path(args.run))
    print("\n".join(f"wrote {p}" for p in paths))


def cmd_rank(args: argparse.Namespace) -> None:
    """Train, evaluate and benchmark several base models and render a leaderboard."""
    from harness.rank import RankConfig, rank
    from reports.render import write_leaderboard

    models = tuple(m.strip() for m in args.models.split(",") if m.strip())
    if not models:
        raise SupportBenchError("--models needs at least one model")
    config = RankConfig(
        models=models,
        preset=args.preset,
        metric=args.metric,
        limit=args.limit,
        ppl_limit=args.ppl_limit,
        max_steps=args.max_steps,
        data=args.data,
    )
    board = rank(config, Path(args.out))
    for path in write_leaderboard(board, Path(args.out)):
        print(f"wrote {path}")
    for row in board["rows"]:
        shown = f"{row['finetuned'][args.metric]:.4f}" if row["status"] == "ok" else row["error"]
        print(f"{row['model']:<28} {shown}")


def cmd_app(args: argparse.Namespace) -> None:
    """Serve the Gradio app for a run."""
    from harness.app import serve

    serve(Path(args.run), port=args.port, share=args.share)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand."""
    parser = argparse.ArgumentParser(prog="supportbench", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "prepare",
        help="clean, validate and split the support data",
        description="Load a hub dataset or local CSV/JSONL/Parquet, fill placeholders, and write a "
        "leak-free stratified train/validation/test split plus manifest.json.",
    )
    p.add_argument("--data", help="hub dataset id or local file (default: $SUPPORTBENCH_DATA, else the Bitext hub id)")
    p.add_argument("--out", required=True, help="folder to write the splits and manifest into")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument(
        "--mode",
        choices=["heldout", "notebook"],
        default="heldout",
        help="heldout: fixed-size held-out test set (default); notebook: sample N then 90/10",
    )
    p.add_argument("--test-size", type=int, default=500)
    p.add_argument("--validation-size", type=int, default=100)
    p.add_argument("--sample-size", type=int, default=5000, help="rows sampled in notebook mode")
    p.add_argument("--placeholders", help="YAML map of {{placeholder}} values merged over the defaults")
    p.add_argument("--force", action="store_true", help="replace a folder that holds a different split")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser(
        "train",
        help="fine-tune a LoRA adapter (TRL SFTTrainer + PEFT) into a run folder",
        description="Train a LoRA adapter from a preset (and optional YAML overrides). The run folder "
        "gets data/, checkpoints/, adapter/, train.json, loss_history.json and loss_curve.png.",
    )
    p.add_argument("--preset", help="bundled preset name (ci, cpu-best, seed-exp1, seed-exp2, gemma3-270m)")
    p.add_argument("--config", help="YAML file whose keys override the preset")
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--model", help="override the preset's model (registry alias, hub id or folder)")
    p.add_argument("--max-steps", type=int, help="stop after this many optimizer steps")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from its last checkpoint")
    p.add_argument("--reuse", action="store_true", help="if the run folder holds a finished run of this config, keep it")
    p.add_argument("--data", help="data for a run folder without a prepared split (default: $SUPPORTBENCH_DATA)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "eval",
        help="score base and base+LoRA with the customer_support lm-eval tasks",
        description="Run the customer_support lm-eval tasks for the base model and base+adapter with the "
        "same split, prompts and greedy decoding; write eval/ into the run folder.",
    )
    p.add_argument("--run", required=True, help="a finished training run folder")
    p.add_argument("--model", help="score another base model (registry alias, hub id or folder) alone on the run's split")
    p.add_argument("--limit", type=int, default=50, help="generation examples (default 50, as the notebook)")
    p.add_argument("--full", action="store_true", help="generate for the whole held-out split")
    p.add_argument("--ppl-limit", type=int, help="perplexity examples (default: the whole split)")
    p.add_argument("--gen-batch-size", type=int, default=32, help="generation batch (left-padded)")
    p.add_argument("--ppl-batch-size", type=int, default=8, help="perplexity scoring batch")
    p.add_argument("--max-new-tokens", type=int, default=100)
    p.add_argument("--twcs", help="score the out-of-domain TWCS tweet pairs (CSV) instead; written to eval/ood/")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser(
        "bench",
        help="latency and memory benchmarks (pytest-benchmark) for base, LoRA and merged models",
        description="Run the pytest-benchmark latency suite on a finished run: cold/warm load, time to first token, "
        "per-token decode latency, p50/p95 reply latency, batch-1 and batched tokens/s, peak memory. "
        "Writes bench/pytest_benchmark.json and bench/summary.json into the run folder.",
    )
    p.add_argument("--run", required=True, help="a finished training run folder")
    p.add_argument("--quick", action="store_true", help="3 queries and 16 new tokens instead of 8 and 64")
    p.add_argument(
        "--eval-baseline",
        type=int,
        metavar="N",
        help="instead: time the notebook's one-at-a-time generation loop on N test examples against the run's eval",
    )
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser(
        "report",
        help="render report.html and report.md for a run (and an experiment comparison)",
        description="Render the run's JSON files through Jinja2 into report.html (self-contained) and report.md. "
        "With --compare, also write comparison.html/.md, the notebook's experiment table, for all the runs.",
    )
    p.add_argument("--run", required=True, help="a run folder")
    p.add_argument("--compare", nargs="+", default=[], metavar="RUN", help="other runs to compare with --run")
    p.set_defaults(func=cmd_report)

    from harness.rank import DEFAULT_MODELS, RANK_METRICS

    p = sub.add_parser(
        "rank",
        help="train, score and benchmark several base models with one preset; render a leaderboard",
        description="For each model: train the preset (reusing a finished run), eval, quick bench; then write "
        "leaderboard.json, leaderboard.html and leaderboard.md into --out. A failing model is listed with its error.",
    )
    p.add_argument("--models", default=",".join(DEFAULT_MODELS), help="comma-separated aliases, hub ids or folders")
    p.add_argument("--preset", default="ci")
    p.add_argument("--out", required=True, help="leaderboard folder (one run folder per model inside)")
    p.add_argument("--metric", choices=RANK_METRICS, default="rougeL")
    p.add_argument("--limit", type=int, default=50, help="generation examples per model")
    p.add_argument("--ppl-limit", type=int, help="perplexity examples per model (default: the whole split)")
    p.add_argument("--max-steps", type=int, help="cap training steps per model")
    p.add_argument("--data", help="data for runs without a prepared split (default: $SUPPORTBENCH_DATA)")
    p.set_defaults(func=cmd_rank)

    p = sub.add_parser(
        "app",
        help="serve the Gradio assistant (Chat, Base vs Fine-Tuned, Model Performance)",
        description="Start the Gradio app for a run on 127.0.0.1: the fine-tuned model in Chat, base and fine-tuned side "
        "by side, and the run's metrics, loss curve, latency and memory.",
    )
    p.add_argument("--run", required=True, help="a finished training run folder")
    p.add_argument("--port", type=int, help="port (default: Gradio's, 7860 or the next free one)")
    p.add_argument("--share", action="store_true", help="also create a public Gradio share link (off by default)")
    p.set_defaults(func=cmd_app)

    p = sub.add_parser(
        "models",
        help="list registry models and their offline availability",
        description="List the model registry (bundled plus $SUPPORTBENCH_REGISTRY) and what loads offline.",
    )
    p.set_defaults(func=cmd_models)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point: run a subcommand and turn user errors into a message and exit code 2."""
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except SupportBenchError as err:
        print(f"supportbench {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

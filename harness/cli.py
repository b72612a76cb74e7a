"""The `supportbench` command: one subcommand per stage; each stage's options come from its typed config."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import types
import typing
from pathlib import Path
from typing import Any

from supportbench.config import DEFAULT_PRESET, DataConfig, EvalConfig, RankConfig, SweepConfig, TrainConfig, preset_names
from supportbench.io import SupportBenchError
from supportbench.runtime import FORMAT


def add_config_options(parser: argparse.ArgumentParser, cls: type, overrides: bool = False) -> None:
    """One option per documented field of cls, typed from its annotation; `overrides` options default to None."""
    hints = typing.get_type_hints(cls)
    group = parser.add_argument_group(f"{cls.__name__} options")
    for f in dataclasses.fields(cls):
        meta = f.metadata
        if "help" not in meta:
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        shown = "none" if default is None else ",".join(default) if isinstance(default, (list, tuple)) else default
        hint = hints[f.name]
        options = set(typing.get_args(hint)) if isinstance(hint, types.UnionType) else {hint}
        parse = meta.get("parse") or next(t for t in (int, float, str) if t in options)
        choices = meta.get("choices")
        if overrides:
            help_text, value = f"{meta['help']} (default: the preset's; built-in {shown})", None
        elif "env" in meta:
            help_text, value = f"{meta['help']} (default: ${meta['env']}, else {shown})", None
        else:
            help_text, value = f"{meta['help']} (default: {shown})", default
        group.add_argument(
            meta.get("flag", "--" + f.name.replace("_", "-")),
            dest=f.name,
            type=parse,
            default=value,
            choices=choices() if callable(choices) else choices,
            help=help_text.replace("%", "%%"),
        )


def add_launch_options(parser: argparse.ArgumentParser, what: str) -> None:
    """--num-processes and --accelerate-config, which rerun the command under `accelerate launch`."""
    parser.add_argument(
        "--num-processes",
        type=int,
        default=1,
        metavar="N",
        help=f"run as N processes under `accelerate launch` (one per GPU; CPU processes over gloo without GPUs): {what} "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--accelerate-config",
        metavar="NAME|FILE",
        help="accelerate config for --num-processes: ddp, fsdp, zero2 (bundled) or a file (default: accelerate's "
        "multi-process launcher with no config)",
    )


def config_values(cls: type, args: argparse.Namespace) -> dict[str, Any]:
    """The parsed values of cls's options."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if "help" in f.metadata}


def cmd_prepare(args: argparse.Namespace) -> None:
    """Prepare the train/validation/test split with a manifest."""
    from supportbench.config import resolve_source
    from supportbench.data import prepare, summary_lines

    values = config_values(DataConfig, args)
    if args.config:  # the file's keys, then the options given on the command line
        from supportbench.config import read_config_file

        given = {k: v for k, v in values.items() if v is not None and v != DataConfig.__dataclass_fields__[k].default}
        values = {**values, **read_config_file(DataConfig, Path(args.config)), **given}
    config = DataConfig(**{**values, "source": resolve_source(values["source"])})
    manifest = prepare(config, Path(args.out), force=args.force)
    print("\n".join(summary_lines(manifest, Path(args.out))))


def cmd_models(args: argparse.Namespace) -> None:
    """List registry models and whether each loads offline."""
    from supportbench.models import availability, cache_root, load_registry, resolve

    print(f"{'alias':<22} {'template':<8} {'availability':<34} description")
    for alias in load_registry():
        spec = resolve(alias)
        print(f"{alias:<22} {spec.template:<8} {availability(spec):<34} {spec.entry.get('description', '')}")
    print(f"\ncache: {cache_root()}   (any hub id or local folder also works as --model)")


def cmd_tasks_path(args: argparse.Namespace) -> None:
    """Print the installed lm-eval task folder (for lm_eval --include_path)."""
    from supportbench.tasks import include_path

    print(include_path())


def cmd_accelerate_configs(args: argparse.Namespace) -> None:
    """Print the folder of the bundled accelerate configs (for accelerate launch --config_file)."""
    from supportbench.launch import config_folder

    print(config_folder())


def cmd_train(args: argparse.Namespace) -> None:
    """Fine-tune a LoRA adapter into a run folder."""
    from supportbench.config import load_train_config
    from supportbench.launch import is_main_process
    from supportbench.trainers.lora import summary_lines, train

    config = load_train_config(args.preset, args.config, **config_values(TrainConfig, args))
    manifest = train(config, Path(args.out), resume=args.resume, data=args.data, reuse=args.reuse)
    if is_main_process():
        print("\n".join(summary_lines(manifest, Path(args.out))))


def cmd_eval(args: argparse.Namespace) -> None:
    """Score base and base+LoRA on the run's held-out split."""
    from supportbench.io import read_json
    from supportbench.run import RunDir
    from supportbench.scoring import evaluate_run, table_lines
    from supportbench.stats import evidence_lines

    if args.exported:
        from supportbench.scoring import score_exported
        from supportbench.stats import signed_interval

        summary = score_exported(Path(args.run))
        exported, fp32 = summary["metrics"]["exported"], summary["metrics"]["fp32"]
        print(f"{summary['format']} against the fp32 fine-tuned model, {summary['n']} examples (same prompts, greedy):")
        for metric in ("rougeL", "bleu", "runon", "placeholder_leak"):
            print(f"{metric:<22}{fp32[metric]:>10.4f}{exported[metric]:>12.4f}")
        print(f"ROUGE-L exported - fp32: {signed_interval(summary['rougeL_difference'])}")
        return
    values = config_values(EvalConfig, args)
    config = EvalConfig(**{**values, "limit": None if args.full else values["limit"]})
    config.validate()
    summary = evaluate_run(Path(args.run), config)
    if summary is None:  # a launched process other than the main one, which writes and prints the results
        return
    print("\n".join(table_lines(summary)))
    if "finetuned" in summary["metrics"]:
        print("\n".join(evidence_lines(read_json(RunDir(Path(args.run)).evaluation(ood=bool(config.twcs)).stats))[:2]))


def cmd_gate(args: argparse.Namespace) -> int:
    """Apply the release gate's rules to a run; exit 1 when one fails."""
    from supportbench.gate import apply_rules, write_gate

    verdict = apply_rules(Path(args.run), baseline=args.baseline, rules_file=args.rules)
    print("\n".join(verdict["evidence"]))
    for check in verdict["checks"]:
        state = "pass" if check["passed"] else ("not applied" if check["passed"] is None else "FAIL")
        print(f"{state:<12} {check['rule']:<28} {check['value']}  (needs {check['needs']})")
    write_gate(Path(args.run), verdict)
    if verdict["failed"]:
        print(f"gate FAILED: {', '.join(verdict['failed'])}", file=sys.stderr)
        return 1
    print("gate passed")
    return 0


def cmd_bench(args: argparse.Namespace) -> None:
    """Measure load time, latency, throughput and memory of base, LoRA and merged models."""
    from supportbench.run import RunDir

    run = RunDir(Path(args.run))
    if args.eval_baseline is not None:
        from supportbench.bench import eval_speedup

        if args.eval_baseline <= 0:
            raise SupportBenchError(f"--eval-baseline needs a positive number of examples, not {args.eval_baseline}")
        speed = eval_speedup(run.path, args.eval_baseline)
        print(
            f"batched eval generation: {speed['batched_seconds']:.1f}s for {speed['generation_examples']} examples x 2 models; "
            f"one at a time: {speed['one_at_a_time_seconds_for_n']:.1f}s (from {speed['measured_examples_one_at_a_time']} "
            f"measured); speedup {speed['speedup']:.1f}x"
        )
        return
    if args.train_throughput:
        from supportbench.config import load_train_config
        from supportbench.io import write_json
        from supportbench.trainers.throughput import run_benchmark

        result = run_benchmark(run, load_train_config(args.preset), args.steps)
        write_json(run.train_throughput, result)
        print(f"ours / notebook: {result['ratio_tokens_per_s']}x tokens/s, {result['ratio_examples_per_s']}x examples/s")
        print(f"written to {run.train_throughput}")
        return
    if args.serving:
        from supportbench.bench import serving_load

        result = serving_load(run.path)
        print(f"{'backend':<14}{'batch':>6}{'users':>6}{'tokens/s':>10}{'p50 s':>8}{'p95 s':>8}{'vs transformers':>17}")
        for arm in result["arms"]:
            print(
                f"{arm['backend']:<14}{arm['max_batch']:>6}{arm['users']:>6}{arm['tokens_per_s']:>10.1f}"
                f"{arm['reply_p50_s']:>8.2f}{arm['reply_p95_s']:>8.2f}{arm['throughput_vs_transformers']:>16.2f}x"
            )
        print(f"written to {run.serving_load}")
        return
    from supportbench.bench import run_suite

    summary = run_suite(run.path, quick=args.quick)
    print(
        f"{'variant':<10}{'warm load s':>12}{'TTFT s':>9}{'ms/token':>10}{'p50 s':>8}{'p95 s':>8}{'tok/s b1':>10}"
        f"{'tok/s batch':>12}{'CPU-s/1k b1':>12}{'CPU-s/1k bat':>13}{'peak RSS MiB':>14}{'disk MiB':>10}"
    )
    for name, row in summary["variants"].items():
        disk = "n/a" if row["size_on_disk_mib"] is None else f"{row['size_on_disk_mib']:.0f}"
        print(
            f"{name:<10}{row['warm_load_s']:>12.2f}{row['ttft_p50_s']:>9.3f}{row['decode_ms_per_token_p50']:>10.1f}"
            f"{row['e2e_p50_s']:>8.2f}{row['e2e_p95_s']:>8.2f}{row['tokens_per_s_batch1']:>10.1f}"
            f"{row['tokens_per_s_batched']:>12.1f}{row['cpu_s_per_1k_replies']:>12.0f}{row['cpu_s_per_1k_replies_batched']:>13.0f}"
            f"{row['peak_rss_mib']:>14.0f}{disk:>10}"
        )
    print(f"written to {run.bench_dir}")


def cmd_report(args: argparse.Namespace) -> None:
    """Render report.html and report.md for a run, or a comparison of several runs."""
    from supportbench.reports.render import write_comparison, write_run_report

    paths = write_comparison([Path(args.run), *map(Path, args.compare)], Path(args.run)) if args.compare else []
    paths += write_run_report(Path(args.run))
    print("\n".join(f"wrote {p}" for p in paths))


def cmd_rank(args: argparse.Namespace) -> int:
    """Train, evaluate and benchmark several base models and render a leaderboard."""
    from supportbench.rank import collect, rank, rank_job
    from supportbench.reports.render import write_leaderboard

    config = RankConfig(**config_values(RankConfig, args))
    if args.only and args.collect:
        raise SupportBenchError("--only runs one model's job and --collect gathers finished jobs; pass one of them")
    if args.only:
        row = rank_job(args.only, Path(args.out), config)
        print(f"{row['model']}: {row['status']}" + (f" ({row['error']})" if row["status"] != "ok" else ""))
        return 0 if row["status"] == "ok" else 1
    board = (collect if args.collect else rank)(config, Path(args.out))
    for path in write_leaderboard(board, Path(args.out)):
        print(f"wrote {path}")
    for row in board["rows"]:
        shown = f"{row['finetuned'][config.metric]:.4f}" if row["status"] == "ok" else f"{row['status']}: {row['error']}"
        print(f"{row['model']:<28} {shown}")
    return 0


def cmd_sweep(args: argparse.Namespace) -> None:
    """Search LoRA settings with Optuna under a time budget; write the table, Pareto chart and best preset."""
    from supportbench.run import SweepDir
    from supportbench.sweep import sweep

    summary = sweep(SweepConfig(**config_values(SweepConfig, args)), Path(args.out))
    folder = SweepDir(Path(args.out))
    print(folder.table.read_text(encoding="utf-8"))
    print(", ".join(f"{n} {state}" for state, n in summary["states"].items()))
    for path in (folder.table, folder.chart, folder.best_preset, folder.summary, folder.study):
        if path.is_file():
            print(f"wrote {path}")


def cmd_export(args: argparse.Namespace) -> None:
    """Merge the adapter and write deployable models into RUN/export/."""
    from supportbench.export import export_run

    manifest = export_run(Path(args.run), to=args.to, force=args.force)
    for name, written in manifest["formats"].items():
        detail = written.get("quantization", written.get("dtype"))
        print(f"{name:<18} {detail:<8} {written['size_mib']:>8.1f} MiB  {written['path']}")


def cmd_app(args: argparse.Namespace) -> None:
    """Serve the Gradio app for a run."""
    from supportbench.app import serve

    serve(Path(args.run), port=args.port, share=args.share, backend=args.serve)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand (imports no model library)."""
    parser = argparse.ArgumentParser(prog="supportbench", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def stage(name: str, func: Any, help: str, description: str, run: str | None = None) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=description)
        p.set_defaults(func=func)
        if run:
            p.add_argument("--run", required=True, help=run)
        return p

    p = stage(
        "prepare",
        cmd_prepare,
        "clean, validate and split the support data",
        "Load a hub dataset or a local CSV/JSONL/Parquet file (exchange pairs, chat transcripts or one message per "
        "row), replace personal data, fill placeholders, and write a leak-free stratified train/validation/test split, "
        "data_card.md/.png and manifest.json. Only these six files are ever written or replaced.",
    )
    p.add_argument("--out", required=True, help="folder to write the splits and manifest into")
    p.add_argument("--force", action="store_true", help="replace a different split, or write beside other files")
    p.add_argument("--config", help="YAML file of the options below, named with underscores; flags override it (default: none)")
    add_config_options(p, DataConfig)

    p = stage(
        "train",
        cmd_train,
        "fine-tune a LoRA adapter (TRL SFTTrainer + PEFT) into a run folder",
        "Train a LoRA adapter from a preset, then an optional YAML file, then the options below. The run folder "
        "gets data/, checkpoints/, adapter/, train.json, loss_history.json and loss_curve.png.",
    )
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--preset", default=DEFAULT_PRESET, choices=preset_names(), help=f"bundled preset (default: {DEFAULT_PRESET})")
    p.add_argument("--config", help="YAML file whose keys override the preset (default: none)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from its last checkpoint")
    p.add_argument("--reuse", action="store_true", help="if the run folder holds a finished run of this config, keep it")
    p.add_argument("--data", help="data for a run folder without a prepared split (default: $SUPPORTBENCH_DATA, else the hub)")
    add_launch_options(p, "data-parallel training; the preset's effective batch is kept by dividing its accumulation")
    add_config_options(p, TrainConfig, overrides=True)

    p = stage(
        "eval",
        cmd_eval,
        "score base and base+LoRA with the customer_support lm-eval tasks",
        "Run the customer_support lm-eval tasks for the base model and base+adapter with the same split, prompts "
        "and greedy decoding; write eval/ into the run folder.",
        run="a finished training run folder",
    )
    p.add_argument("--full", action="store_true", help="generate for the whole held-out split (overrides --limit)")
    p.add_argument(
        "--exported",
        action="store_true",
        help="instead: score the exported model (`supportbench export`) with the settings of the run's eval, paired "
        "with its fp32 fine-tuned replies; writes eval/exported/",
    )
    add_launch_options(p, "--backend hf only: the examples are split over the processes, the scores are the same")
    add_config_options(p, EvalConfig)

    p = stage(
        "gate",
        cmd_gate,
        "release gate: check a run's eval against YAML rules (exit 1 when one fails)",
        "Check the run's eval against the release rules (default: the fine-tuned model beats its base on ROUGE-L "
        "with the paired interval's lower bound above 0, is non-inferior to --baseline within 0.02, and keeps "
        "run-on and placeholder-leak shares low). Writes gate.json and gate.md, and appends the Markdown to "
        "$GITHUB_STEP_SUMMARY when it is set.",
        run="an evaluated run folder",
    )
    p.add_argument("--baseline", help="an approved run folder (or its eval/metrics.json) to be non-inferior to (default: none)")
    p.add_argument("--rules", help="YAML rules file (default: the bundled gate_rules.yaml)")

    p = stage(
        "bench",
        cmd_bench,
        "latency and memory benchmarks (pytest-benchmark), or the training-throughput benchmark",
        "Run the pytest-benchmark latency suite on a finished run: cold/warm load, time to first token, per-token "
        "decode latency, p50/p95 reply latency, batch-1 and batched tokens/s, peak memory. Writes "
        "bench/pytest_benchmark.json and bench/summary.json into the run folder.",
        run="a finished training run folder",
    )
    p.add_argument("--quick", action="store_true", help="3 queries and 16 new tokens instead of 8 and 64")
    p.add_argument(
        "--eval-baseline",
        type=int,
        metavar="N",
        help="instead: time the notebook's one-at-a-time generation loop on N test examples against the run's eval "
        "(default: off)",
    )
    p.add_argument(
        "--train-throughput",
        action="store_true",
        help="instead: training tokens/s of the notebook's recipe against ours, one change at a time "
        "(writes bench/train_throughput.json)",
    )
    p.add_argument(
        "--serving",
        action="store_true",
        help="instead: 1, 8 and 16 concurrent users of the app's assistant, served by transformers one at a time and by "
        "the exported model one at a time and batched (writes bench/serving.json; needs `supportbench export`)",
    )
    p.add_argument(
        "--preset", default=DEFAULT_PRESET, choices=preset_names(), help="preset for --train-throughput (default: %(default)s)"
    )
    p.add_argument("--steps", type=int, default=3, help="timed optimizer steps per --train-throughput arm (default: %(default)s)")

    p = stage(
        "report",
        cmd_report,
        "render report.html and report.md for a run (and an experiment comparison)",
        "Render the run's JSON files through Jinja2 into report.html (self-contained) and report.md. With "
        "--compare, also write comparison.html/.md, the notebook's experiment table, for all the runs.",
        run="a run folder",
    )
    p.add_argument("--compare", nargs="+", default=[], metavar="RUN", help="other runs to compare with --run (default: none)")

    p = stage(
        "rank",
        cmd_rank,
        "train, score and benchmark several base models with one preset; render a leaderboard",
        "For each model: train the preset (reusing a finished run), eval, quick bench; then write leaderboard.json, "
        "leaderboard.html and leaderboard.md into --out. A failing model is listed with its error.",
    )
    p.add_argument("--out", required=True, help="leaderboard folder (one run folder per model inside)")
    p.add_argument(
        "--only",
        metavar="MODEL",
        help="run this one model's job and no leaderboard, so a scheduler (CI matrix, Slurm array) runs the models in "
        "parallel; exit 1 when the job fails (default: every model, one after another)",
    )
    p.add_argument(
        "--collect",
        action="store_true",
        help="train nothing: build the leaderboard of --models from their finished `--only` jobs",
    )
    add_config_options(p, RankConfig)

    p = stage(
        "sweep",
        cmd_sweep,
        "search LoRA settings with Optuna under a time budget, scored on validation ROUGE-L",
        "Sample base model, learning rate, LoRA rank and targets, training examples, epochs and max length with "
        "Optuna (TPE, two objectives: validation ROUGE-L up, training minutes down). Each trial trains a run folder "
        "and scores the validation split as eval does. Writes study.db (every trial, failed and timed-out ones "
        "included; running the command again continues the study), trials.md, pareto.png, best.yaml (a preset "
        "file for `train --config`) and sweep.json into --out.",
    )
    p.add_argument("--out", required=True, help="sweep folder")
    add_config_options(p, SweepConfig)

    p = stage(
        "export",
        cmd_export,
        "merge the adapter and write deployable models (safetensors, CTranslate2 int8)",
        "Merge the LoRA adapter into its base and write RUN/export/merged (safetensors: transformers, vLLM, TGI); "
        "for ctranslate2-int8 also the fine-tuned and base models in CTranslate2 int8, which bench, eval "
        "--exported and app then use. Writes RUN/export/export.json.",
        run="a finished training run folder",
    )
    p.add_argument(
        "--to", default=FORMAT, choices=("merged", FORMAT), help="format beside the merged folder (default: %(default)s)"
    )
    p.add_argument("--force", action="store_true", help="export again even if export.json matches the adapter")

    p = stage(
        "app",
        cmd_app,
        "serve the Gradio assistant (Chat, Base vs Fine-Tuned, Model Performance)",
        "Start the Gradio app for a run on 127.0.0.1: the fine-tuned model in Chat, base and fine-tuned side by "
        "side, and the run's metrics, loss curve, latency and memory.",
        run="a finished training run folder",
    )
    p.add_argument("--port", type=int, help="port (default: Gradio's, 7860 or the next free one)")
    p.add_argument("--share", action="store_true", help="also create a public Gradio share link (default: off)")
    p.add_argument(
        "--serve",
        default="auto",
        choices=("auto", "exported", "transformers"),
        help="auto: the exported model when `supportbench export` wrote one, else transformers (default: %(default)s)",
    )

    stage(
        "models",
        cmd_models,
        "list registry models and their offline availability",
        "List the model registry (bundled plus $SUPPORTBENCH_REGISTRY) and what loads offline.",
    )
    stage(
        "tasks-path",
        cmd_tasks_path,
        "print the installed lm-eval task folder (for lm_eval --include_path)",
        "Print the folder holding the customer_support lm-eval task YAMLs, for lm_eval --include_path.",
    )
    stage(
        "accelerate-configs",
        cmd_accelerate_configs,
        "print the folder of the bundled accelerate configs (ddp, fsdp, zero2)",
        "Print the folder holding the bundled accelerate configs, for `accelerate launch --config_file` (see the "
        "README's Scaling up).",
    )
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


if __name__ == "__main__":
    sys.exit(main())

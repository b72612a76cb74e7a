"""Collect a run's JSON files and render them through Jinja2 into report.html and report.md."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined

from supportbench.checks.invariance import TAG_NAMES
from supportbench.files import (
    SupportBenchError,
    atomic_write_bytes,
    atomic_write_text,
    read_bundled_yaml,
    read_json,
    read_jsonl,
)
from supportbench.layout import BoardDir, RunDir
from supportbench.metrics import METRICS
from supportbench.stats import interval_text

SAMPLES_SHOWN = 8
PAIRED_METRICS = ("rougeL", "semantic_similarity", "intent_fidelity")  # compared example by example across runs
KINDS = ("html", "md")


def _optional_json(path: Path) -> Any:
    return read_json(path) if path.is_file() else None


def _optional_png(path: Path) -> str | None:
    return base64.b64encode(path.read_bytes()).decode("ascii") if path.is_file() else None


def _demoted(markdown: str) -> str:
    """A standalone Markdown page to sit inside a report section: headings two levels down, images left to the
    report (which embeds them itself)."""
    return re.sub(r"^(#+) ", r"##\1 ", re.sub(r"^!\[.*\n\n?", "", markdown, flags=re.M), flags=re.M)


def published_reference() -> dict[str, Any]:
    """The reference recipe's published figures, labelled with their source."""
    return read_bundled_yaml("supportbench.reports", "reference_recipe.yaml")


def collect_run(run_dir: Path) -> dict[str, Any]:
    """Everything a report shows, read from the run's files; a part that does not exist is None."""
    run = RunDir(run_dir)
    if not run.path.is_dir():
        raise SupportBenchError(f"run folder not found: {run.path}")
    return {
        "name": run.path.name,
        "path": str(run.path),
        "train": _optional_json(run.manifest_path),
        "data": _optional_json(run.data.manifest_path),
        "data_card": _demoted(run.data.data_card.read_text(encoding="utf-8"))
        if run.data.data_card.is_file()
        else None,
        "data_card_png": _optional_png(run.data.data_card_png),
        "data_card_file": str(run.data.data_card_png.relative_to(run.path)),
        "eval": run.eval.summary().model_dump() if run.eval.metrics.is_file() else None,
        "per_category": _optional_json(run.eval.per_category),
        "samples": read_jsonl(run.eval.samples, limit=SAMPLES_SHOWN) if run.eval.samples.is_file() else None,
        "stats": _optional_json(run.eval.stats),
        "gate": _optional_json(run.gate("json")),
        "guarded": _optional_json(run.eval.guarded),
        "behavior": _optional_json(run.eval.behavior),
        "invariance": _optional_json(run.eval.invariance),
        "ratings": _optional_json(run.eval.ratings),
        "judge": _optional_json(run.eval.judge),
        "forest_png": _optional_png(run.eval.forest),
        "forest_file": str(run.eval.forest.relative_to(run.path)),
        "ood": _optional_json(run.ood.metrics),
        "bench": _optional_json(run.bench_summary),
        "exported": _optional_json(run.exported_eval.metrics),
        "serving": _optional_json(run.serving_load),
        "quality_latency_png": _optional_png(run.quality_latency),
        "quality_latency_file": str(run.quality_latency.relative_to(run.path)),
        "throughput": _optional_json(run.train_throughput),
        "loss_curve_png": _optional_png(run.loss_curve),
        "loss_curve_file": run.loss_curve.name,
    }


def fmt(value: Any, digits: int = 4) -> str:
    """Format a number for a table; None and missing values show as an em dash."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def pct(value: Any) -> str:
    """Format a relative change in percent, with its sign."""
    return "—" if value is None else f"{value:+.1f}%"


def share(value: float) -> str:
    """A share as a whole percentage."""
    return f"{100 * value:.0f}%"


def mdcell(value: Any) -> str:
    """A value as one Markdown table cell: newlines folded, pipes escaped."""
    return " ".join(str(value).split()).replace("|", "\\|")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]], numeric_from: int = 1) -> list[str]:
    """A Markdown table's lines: the header, the rule (columns from `numeric_from` on right-aligned), one line per row
    (a `|` inside a cell becomes `/`)."""
    rule = "|" + "".join("---|" if i < numeric_from else "---:|" for i in range(len(header)))
    cells = [[str(cell).replace("|", "/") for cell in row] for row in rows]
    return ["| " + " | ".join(header) + " |", rule, *("| " + " | ".join(row) + " |" for row in cells)]


def render(template: str, kind: str, **context: Any) -> str:
    """Render one template as HTML (autoescaped) or Markdown."""
    env = Environment(
        loader=PackageLoader("supportbench.reports", "templates"),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=kind == "html",
        extensions=["jinja2.ext.do"],
    )
    env.filters.update(
        fmt=fmt,
        pct=pct,
        interval=interval_text,
        interval_share=lambda v: f"{share(v['mean'])} [{share(v['low'])}, {share(v['high'])}]",
        basename=lambda path: Path(path).name,
        share=share,
        mdcell=mdcell,
        signed=lambda v: f"{v:+.4f}",
        tojson_compact=lambda v: json.dumps(v, sort_keys=True),
    )
    env.globals.update(metrics=METRICS, reference=published_reference(), tag_names=TAG_NAMES)
    return env.get_template(template).render(kind=kind, **context)


def variant_quality(run: dict[str, Any]) -> dict[str, float]:
    """Held-out ROUGE-L of each bench variant that was scored: base, the fp32 fine-tuned weights, the exported model."""
    if not run["eval"]:
        return {}
    tuned = run["eval"]["metrics"]["finetuned"]["rougeL"]  # base+LoRA and merged are the same weights
    scores = {"base": run["eval"]["metrics"]["base"]["rougeL"], "lora": tuned, "merged": tuned}
    if run["exported"]:
        scores["exported"] = run["exported"]["metrics"]["exported"]["rougeL"]
    return scores


def write_quality_latency(run_dir: Path, run: dict[str, Any]) -> None:
    """Write bench/quality_latency.png (one point per variant, sized by peak memory) when bench and eval exist."""
    from supportbench.reports.plots import quality_latency_png

    quality = variant_quality(run)
    variants = (run["bench"] or {}).get("variants", {})
    points = [(name, row["e2e_p50_s"], quality[name], row["peak_rss_mib"] / 10) for name, row in variants.items()]
    points = [point for point in points if point[0] in quality]
    if points:
        png = quality_latency_png(points, "reply latency p50 (s)", "ROUGE-L (held-out)")
        atomic_write_bytes(RunDir(run_dir).quality_latency, png)


def write_run_report(run_dir: Path) -> list[Path]:
    """Render report.html and report.md into the run folder (atomically) and return their paths."""
    write_quality_latency(run_dir, collect_run(run_dir))
    run = collect_run(run_dir)
    if run["train"] is None and run["eval"] is None:
        raise SupportBenchError(f"{run_dir} has neither a training manifest nor an eval: nothing to report")
    paths = []
    for kind in KINDS:
        path = RunDir(run_dir).report(kind)
        atomic_write_text(path, render("report.j2", kind, run=run, show_loss_curve=True))
        paths.append(path)
    return paths


def comparison_rows(runs: list[dict[str, Any]]) -> list[tuple[str, list[str]]]:
    """The reference recipe's "Experiment 1 vs Experiment 2" rows, one column per run, formatted."""

    def config(key: str) -> list[str]:
        return [str(r["train"]["config"][key]) for r in runs]

    def train(key: str, digits: int = 4) -> list[str]:
        return [fmt(r["train"][key], digits) for r in runs]

    rows = [
        ("base model", config("model")),
        ("LoRA r", config("lora_r")),
        ("LoRA alpha", config("lora_alpha")),
        ("LoRA targets", config("lora_targets")),
        ("learning rate", config("learning_rate")),
        ("epochs", config("epochs")),
        (
            "effective batch",
            [fmt(r["train"]["config"]["batch_size"] * r["train"]["config"]["gradient_accumulation"]) for r in runs],
        ),
        ("train examples", train("train_examples")),
        ("optimizer steps", train("steps")),
        ("trainable parameters", [fmt(r["train"]["parameters"]["trainable"]) for r in runs]),
        ("training time (s)", train("wall_time_s", 1)),
        ("final train loss", train("final_train_loss")),
        ("best validation loss", train("best_eval_loss")),
    ]
    rows += [
        ("method", [r["train"].get("method", "sft") for r in runs]),
        ("of which behaviour-mix examples", [fmt(r["train"].get("mix_examples", 0)) for r in runs]),
        ("preference pairs", [fmt((r["train"].get("pairs") or {}).get("used")) for r in runs]),
    ]
    for key, metric in METRICS.items():
        rows.append(
            (
                f"{metric.label}, fine-tuned",
                [fmt(r["eval"]["metrics"]["finetuned"].get(key)) if r["eval"] else "—" for r in runs],
            )
        )
    first = runs[0]["name"]
    for key in PAIRED_METRICS:
        rows.append((f"{METRICS[key].label}, paired against {first}", paired_column(runs, key)))
    groups = sorted({g for r in runs if r["behavior"] for g in r["behavior"]["pass_rate"]["finetuned"]})
    for group in groups:
        rates = [r["behavior"]["pass_rate"]["finetuned"].get(group) if r["behavior"] else None for r in runs]
        rows.append((f"behaviour, raw model: {group}", [interval_text(rate, 2) if rate else "—" for rate in rates]))
    return rows


def paired_column(runs: list[dict[str, Any]], metric: str) -> list[str]:
    """Each run's fine-tuned score minus the first run's on the same test examples, with its 95% paired interval
    (bootstrapped with the first run's statistics seed, as the gate's baseline comparison is with the run's)."""
    from supportbench.stats import paired_difference, signed_interval

    def scores(run: dict[str, Any]) -> dict[str, float] | None:
        return RunDir(Path(run["path"])).eval.finetuned_scores(metric) if run["eval"] else None

    column = ["(the reference)"]
    first = scores(runs[0])
    if first is None:
        return column + ["—"] * (len(runs) - 1)
    seed = RunDir(Path(runs[0]["path"])).eval.statistics().seed
    for run in runs[1:]:
        theirs = scores(run)
        shared = sorted(set(first) & set(theirs or {}))
        if not shared:
            column.append("—")
            continue
        d = paired_difference([first[i] for i in shared], [theirs[i] for i in shared], seed)
        column.append(f"{signed_interval(d)} on {len(shared)}")
    return column


def write_table(
    paths: dict[str, Path], title: str, columns: list[str], rows: list[tuple[str, list[str]]], **page: Any
) -> list[Path]:
    """Render a column-per-item table page to each kind's path (atomically); `page` holds notes and an optional chart."""
    context = {
        "title": title,
        "columns": columns,
        "rows": rows,
        "notes": [],
        "chart_png": None,
        "chart_file": None,
        **page,
    }
    for kind, path in paths.items():
        atomic_write_text(path, render("table.j2", kind, table_id=path.stem, **context))
    return list(paths.values())


def write_comparison(run_dirs: list[Path], out_dir: Path) -> list[Path]:
    """Render the reference recipe's experiment comparison (comparison.html/.md) for several runs."""
    runs = [collect_run(r) for r in run_dirs]
    unfinished = [r["path"] for r in runs if r["train"] is None]
    if unfinished:
        raise SupportBenchError(f"cannot compare unfinished runs (no training manifest): {unfinished}")
    notes = ["Every figure is read from the runs' training manifests and evals; — marks a run without that part."]
    out = RunDir(out_dir)
    paths = {kind: out.comparison(kind) for kind in KINDS}
    return write_table(
        paths, "SupportBench experiment comparison", [r["name"] for r in runs], comparison_rows(runs), notes=notes
    )


def leaderboard_chart(rows: list[dict[str, Any]], metric: str, path: Path) -> dict[str, Any]:
    """Write the quality-against-latency PNG (point size by peak memory) to path; the page context that shows it."""
    from supportbench.reports.plots import quality_latency_png

    points = [
        (r["model"], r["e2e_p50_s"], r["finetuned"][metric], r["peak_rss_mib"] / 10)
        for r in rows
        if r["status"] == "ok"
    ]
    if not points:
        return {}
    png = quality_latency_png(points, "reply latency p50 (s, merged model)", f"{METRICS[metric].label} (fine-tuned)")
    atomic_write_bytes(path, png)
    return {"chart_png": base64.b64encode(png).decode("ascii"), "chart_file": path.name}


def preference_cell(rating: dict[str, Any] | None) -> str:
    """A leaderboard cell: the Bradley–Terry rating or the win rate, with its interval and votes."""
    if rating is None:
        return "—"
    if rating["kind"] == "bradley_terry":
        return f"{rating['rating']:+.0f} [{rating['low']:+.0f}, {rating['high']:+.0f}] BT, {rating['votes']} votes"
    return f"{share(rating['mean'])} [{share(rating['low'])}, {share(rating['high'])}] wins, {rating['votes']} votes"


def write_leaderboard(leaderboard: dict[str, Any], out_dir: Path) -> list[Path]:
    """Render leaderboard.html and leaderboard.md from a leaderboard.json dict."""
    metric = leaderboard["metric"]
    rows = leaderboard["rows"]
    columns = [f"{i}. {r['model']}" if r["status"] == "ok" else f"– {r['model']}" for i, r in enumerate(rows, start=1)]

    def value(key: str, digits: int = 4, side: str | None = None) -> list[str]:
        return [fmt((r[side][key] if side else r[key]), digits) if r["status"] == "ok" else "—" for r in rows]

    table = [("status", [r["status"] if r["status"] == "ok" else f"{r['status']}: {r['error']}" for r in rows])]
    for key, described in METRICS.items():
        table.append((f"{described.label}, base", value(key, side="base")))
        table.append((f"{described.label}, fine-tuned", value(key, side="finetuned")))
    table += [
        ("generated examples", value("n_generation")),
        ("perplexity examples", value("n_perplexity")),
        ("training time (s)", value("train_wall_time_s", 1)),
        ("trainable parameters", value("trainable_parameters")),
        ("benchmark mode", value("bench_mode")),
        ("TTFT p50 (s)", value("ttft_p50_s", 3)),
        ("reply p50 (s)", value("e2e_p50_s", 2)),
        ("tokens/s batch 1", value("tokens_per_s_batch1", 1)),
        ("peak RSS (MiB)", value("peak_rss_mib", 0)),
    ]
    if any("human_preference" in r for r in rows):
        table.append(("human preference (people's votes)", [preference_cell(r.get("human_preference")) for r in rows]))
    notes = [
        f"Ranked by fine-tuned {METRICS[metric].label}; preset {leaderboard['preset']}; latency and memory of the merged "
        "model, in the benchmark mode each row names. Figures come from each run's files."
    ]
    board = BoardDir(Path(out_dir))
    paths = {kind: board.page(kind) for kind in KINDS}
    chart = leaderboard_chart(rows, metric, board.chart)
    return write_table(paths, "SupportBench leaderboard", columns, table, notes=notes, **chart)

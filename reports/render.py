"""Collect a run's JSON files and render them through Jinja2 into report.html and report.md."""

from __future__ import annotations

import base64
import io
import json
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from jinja2 import Environment, PackageLoader, StrictUndefined

from harness.io import SupportBenchError, atomic_write_text, read_json

SAMPLES_SHOWN = 8
METRIC_LABELS = {
    "rouge1": "ROUGE-1",
    "rouge2": "ROUGE-2",
    "rougeL": "ROUGE-L",
    "bleu": "BLEU-4",
    "runon": "run-on share",
    "placeholder_leak": "placeholder leak share",
    "response_words": "mean reply words",
    "perplexity": "perplexity (reply tokens)",
    "perplexity_fulltext": "perplexity (full text, notebook's)",
}


def _optional_json(path: Path) -> Any:
    return read_json(path) if path.is_file() else None


def _optional_jsonl(path: Path, limit: int) -> list[dict[str, Any]] | None:
    if not path.is_file():
        return None
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()[:limit] if line.strip()]


def notebook_reference() -> dict[str, Any]:
    """The original notebook's published figures, labelled with their source."""
    return yaml.safe_load(resources.files("reports").joinpath("notebook_reference.yaml").read_text(encoding="utf-8"))


def collect_run(run_dir: Path) -> dict[str, Any]:
    """Everything a report shows, read from the run's files; a part that does not exist is None."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise SupportBenchError(f"run folder not found: {run_dir}")
    curve = run_dir / "loss_curve.png"
    return {
        "name": run_dir.name,
        "path": str(run_dir),
        "train": _optional_json(run_dir / "train.json"),
        "data": _optional_json(run_dir / "data" / "manifest.json"),
        "eval": _optional_json(run_dir / "eval" / "metrics.json"),
        "per_category": _optional_json(run_dir / "eval" / "per_category.json"),
        "samples": _optional_jsonl(run_dir / "eval" / "samples.jsonl", SAMPLES_SHOWN),
        "ood": _optional_json(run_dir / "eval" / "ood" / "metrics.json"),
        "bench": _optional_json(run_dir / "bench" / "summary.json"),
        "throughput": _optional_json(run_dir / "bench" / "train_throughput.json"),
        "loss_curve_png": base64.b64encode(curve.read_bytes()).decode("ascii") if curve.is_file() else None,
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


def environment() -> Environment:
    """The Jinja2 environment: package templates, strict undefined, number filters."""
    env = Environment(
        loader=PackageLoader("reports", "templates"),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )
    env.filters.update(fmt=fmt, pct=pct, tojson_compact=lambda v: json.dumps(v, sort_keys=True))
    env.globals.update(labels=METRIC_LABELS, reference=notebook_reference())
    return env


def render(template: str, **context: Any) -> str:
    """Render one template; HTML templates get autoescaping."""
    env = environment()
    env.autoescape = template.endswith(".html.j2")
    return env.get_template(template).render(**context)


def write_run_report(run_dir: Path) -> list[Path]:
    """Render report.html and report.md into the run folder (atomically) and return their paths."""
    run = collect_run(run_dir)
    if run["train"] is None and run["eval"] is None:
        raise SupportBenchError(f"{run_dir} has neither train.json nor eval/metrics.json: nothing to report")
    paths = []
    for kind in ("html", "md"):
        path = Path(run_dir) / f"report.{kind}"
        atomic_write_text(path, render(f"report.{kind}.j2", run=run))
        paths.append(path)
    return paths


def comparison_rows(runs: list[dict[str, Any]]) -> list[tuple[str, list[str]]]:
    """The notebook's "Experiment 1 vs Experiment 2" rows, one column per run, formatted."""

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
    for key, label in METRIC_LABELS.items():
        rows.append((f"{label}, fine-tuned", [fmt(r["eval"]["metrics"]["finetuned"][key]) if r["eval"] else "—" for r in runs]))
    return rows


def write_table(
    out_dir: Path,
    stem: str,
    title: str,
    columns: list[str],
    rows: list[tuple[str, list[str]]],
    notes: list[str],
    chart_png: str | None = None,
) -> list[Path]:
    """Render a column-per-item table as STEM.html and STEM.md into out_dir, atomically."""
    paths = []
    for kind in ("html", "md"):
        path = Path(out_dir) / f"{stem}.{kind}"
        text = render(f"comparison.{kind}.j2", title=title, columns=columns, rows=rows, notes=notes, chart_png=chart_png)
        atomic_write_text(path, text)
        paths.append(path)
    return paths


def write_comparison(run_dirs: list[Path], out_dir: Path) -> list[Path]:
    """Render the notebook-style experiment comparison (comparison.html/.md) for several runs."""
    runs = [collect_run(r) for r in run_dirs]
    unfinished = [r["path"] for r in runs if r["train"] is None]
    if unfinished:
        raise SupportBenchError(f"cannot compare unfinished runs (no train.json): {unfinished}")
    notes = ["Every figure is read from the runs' train.json and eval/metrics.json; — marks a run without that part."]
    return write_table(
        out_dir, "comparison", "SupportBench experiment comparison", [r["name"] for r in runs], comparison_rows(runs), notes
    )


def leaderboard_chart(rows: list[dict[str, Any]], metric: str) -> str | None:
    """A PNG (base64) of fine-tuned quality against reply latency, point size by peak memory."""
    ok = [r for r in rows if r["status"] == "ok"]
    if not ok:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=110)
    for row in ok:
        ax.scatter(row["e2e_p50_s"], row["finetuned"][metric], s=row["peak_rss_mib"] / 10, alpha=0.6)
        ax.annotate(row["model"], (row["e2e_p50_s"], row["finetuned"][metric]), fontsize=8)
    ax.set_xlabel("reply latency p50 (s, merged model)")
    ax.set_ylabel(f"{METRIC_LABELS[metric]} (fine-tuned)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def write_leaderboard(board: dict[str, Any], out_dir: Path) -> list[Path]:
    """Render leaderboard.html and leaderboard.md from a leaderboard.json dict."""
    metric = board["metric"]
    rows = board["rows"]
    columns = [f"{i}. {r['model']}" if r["status"] == "ok" else f"– {r['model']}" for i, r in enumerate(rows, start=1)]

    def value(key: str, digits: int = 4, side: str | None = None) -> list[str]:
        return [fmt((r[side][key] if side else r[key]), digits) if r["status"] == "ok" else "—" for r in rows]

    table = [("status", [r["status"] if r["status"] == "ok" else f"failed: {r['error']}" for r in rows])]
    for key in ("rougeL", "rouge1", "bleu", "perplexity"):
        table.append((f"{METRIC_LABELS[key]}, base", value(key, side="base")))
        table.append((f"{METRIC_LABELS[key]}, fine-tuned", value(key, side="finetuned")))
    table += [
        ("generated examples", value("n_generation")),
        ("training time (s)", value("train_wall_time_s", 1)),
        ("trainable parameters", value("trainable_parameters")),
        ("TTFT p50 (s)", value("ttft_p50_s", 3)),
        ("reply p50 (s)", value("e2e_p50_s", 2)),
        ("tokens/s batch 1", value("tokens_per_s_batch1", 1)),
        ("peak RSS (MiB)", value("peak_rss_mib", 0)),
    ]
    notes = [
        f"Ranked by fine-tuned {METRIC_LABELS[metric]}; preset {board['preset']}, {board['limit']} generated and "
        f"{board['ppl_limit'] or 'all'} perplexity examples per model, latency and memory of the merged model "
        "(quick benchmark). Figures come from each run's files."
    ]
    return write_table(out_dir, "leaderboard", "SupportBench leaderboard", columns, table, notes, leaderboard_chart(rows, metric))

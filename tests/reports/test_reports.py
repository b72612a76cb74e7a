"""Benchmarks run and write well-formed JSON; reports show exactly the run's numbers; leaderboards rank."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
from helpers import trained_copy

from supportbench.files import SupportBenchError, read_json
from supportbench.layout import RunDir
from supportbench.metrics import METRICS
from supportbench.reports.render import fmt, write_comparison, write_run_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _table(markdown: str, heading: str) -> dict[str, list[str]]:
    section = markdown.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| ---")]
    cells = [[c.strip() for c in row.strip("|").split("|")] for row in rows[1:]]
    return {c[0]: c[1:] for c in cells}


def test_report_numbers_equal_the_json(full_run):
    markdown = (full_run / "report.md").read_text()
    metrics = read_json(full_run / "eval" / "metrics.json")
    table = _table(markdown, "Quality: base vs fine-tuned")
    for key, metric in METRICS.items():
        assert table[metric.label][:2] == [
            fmt(metrics["metrics"]["base"][key]),
            fmt(metrics["metrics"]["finetuned"][key]),
        ], key
    bench = read_json(full_run / "bench" / "summary.json")["variants"]
    latency = _table(markdown, "Latency and memory")
    for variant, row in bench.items():
        assert latency[variant][1] == fmt(row["warm_load_s"], 2)
        assert latency[variant][2] == fmt(row["ttft_p50_s"], 3)
        assert latency[variant][8] == fmt(row["peak_rss_mib"], 1)
        assert latency[variant][9] == fmt(row["size_on_disk_mib"], 0)
    cost = _table(markdown, "Cost of 1,000 replies")
    for variant, row in bench.items():
        assert cost[variant][:2] == [fmt(row["cpu_s_per_1k_replies"], 0), fmt(row["cpu_s_per_1k_replies_batched"], 0)]
    exported = read_json(full_run / "eval" / "exported" / "metrics.json")
    deployment = _table(markdown, "Deployment: the exported model")
    for key in ("rougeL", "bleu"):
        sides = exported["metrics"]
        assert deployment[METRICS[key].label] == [fmt(sides["fp32"][key]), fmt(sides["exported"][key])]
    assert exported["metrics"]["fp32"]["rougeL"] == metrics["metrics"]["finetuned"]["rougeL"]
    assert (full_run / "bench" / "quality_latency.png").is_file()
    assert 'id="quality-latency"' in (full_run / "report.html").read_text()
    trained = read_json(full_run / "train.json")
    training = _table(markdown, "Training")
    assert training["final train loss"] == [fmt(trained["final_train_loss"])]
    assert training["tokens seen"] == [fmt(trained["tokens_seen"])]
    html = (full_run / "report.html").read_text()
    assert f'<td class="num">{fmt(metrics["metrics"]["finetuned"]["rougeL"])}</td>' in html
    assert "data:image/png;base64," in html and "<link" not in html and "<script" not in html


def test_missing_parts_are_shown_as_missing(tiny_run, tmp_path):
    run = tmp_path / "run"
    trained_copy(tiny_run, run)
    write_run_report(run)
    markdown = (run / "report.md").read_text()
    assert "_Missing: no eval yet" in markdown and "_Missing: no benchmark yet" in markdown
    assert "0.3407 → 0.4765" not in markdown  # no reference column without a run's own numbers


def test_comparison_table(full_run, tiny_run, tmp_path):
    plain = tmp_path / "plain"
    trained_copy(tiny_run, plain)
    paths = write_comparison([full_run, plain], tmp_path)
    markdown = paths[1].read_text()
    rows = _table("## T\n" + markdown.split("\n", 1)[1], "T")
    trained = read_json(full_run / "train.json")
    assert rows["LoRA r"][0] == str(trained["config"]["lora_r"])
    assert rows["trainable parameters"][0] == fmt(trained["parameters"]["trainable"])
    assert rows["ROUGE-L, fine-tuned"][1] == "—"  # the plain tiny run has no eval
    assert rows["method"] == ["sft", "sft"] and rows["of which behaviour-mix examples"] == ["0", "0"]
    twin = tmp_path / "twin"  # the same eval, so every paired difference is zero
    shutil.copytree(full_run, twin)
    markdown = write_comparison([full_run, twin, plain], tmp_path)[1].read_text()
    rows = _table("## T\n" + markdown.split("\n", 1)[1], "T")
    n = len((full_run / "eval" / "samples.jsonl").read_text().splitlines())
    paired = rows[f"ROUGE-L, paired against {full_run.name}"]
    assert paired == ["(the reference)", f"+0.0000 [+0.0000, +0.0000] on {n}", "—"]


@pytest.mark.e2e
@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")
def test_report_renders_in_headless_chromium(full_run, tmp_path):
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}",
    ]
    page = (full_run / "report.html").as_uri()
    shot = full_run / "report.png"
    subprocess.run(
        [CHROMIUM, *flags, f"--screenshot={shot}", "--window-size=1280,2400", page],
        check=True,
        capture_output=True,
        timeout=120,
    )
    assert shot.stat().st_size > 20_000
    dom = subprocess.run(
        [CHROMIUM, *flags, "--dump-dom", page], check=True, capture_output=True, text=True, timeout=120
    ).stdout
    for table in ("metrics", "per-category", "training", "latency", "samples", "data"):
        assert f'id="{table}"' in dom, table
    # an unrendered template expression (the data card names the `{{Slot}}` notation itself)
    leftover = re.search(r"\{\{(?!Slot\}\}`)|\{%|Undefined", dom)
    assert "loss-curve" in dom and not leftover, dom[leftover.start() - 100 : leftover.end() + 300]


def test_a_truncated_samples_file_is_named_in_report(tiny_run, tmp_path):
    run = RunDir(trained_copy(tiny_run, tmp_path / "run"))
    run.eval.path.mkdir()
    run.eval.samples.write_text('{"query": "where is my order", "reference": "It is')
    with pytest.raises(SupportBenchError, match=f"malformed JSON in {run.eval.samples}, line 1"):
        write_run_report(run.path)

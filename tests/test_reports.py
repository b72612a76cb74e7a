"""Benchmarks run and write well-formed JSON; reports show exactly the run's numbers; leaderboards rank."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import fixture_rows, tiny_config, trained_copy, write_csv

from supportbench.bench import run_suite
from supportbench.config import DataConfig, EvalConfig, RankConfig
from supportbench.data import prepare
from supportbench.export import export_run
from supportbench.io import read_json
from supportbench.metrics import METRICS
from supportbench.rank import rank
from supportbench.reports.render import fmt, write_comparison, write_leaderboard, write_run_report
from supportbench.run import VARIANTS, BoardDir
from supportbench.scoring import evaluate_run, score_exported

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def full_run(tiny_run, tmp_path_factory) -> Path:
    """The tiny run, evaluated, benchmarked (quick) and reported."""
    run = tmp_path_factory.mktemp("full") / "run"
    shutil.copytree(tiny_run, run)
    evaluate_run(run, EvalConfig(limit=4, gen_batch_size=4, max_new_tokens=8))
    export_run(run)
    score_exported(run)
    run_suite(run, quick=True)
    write_run_report(run)
    return run


def test_training_throughput_benchmark_measures_every_arm(tiny_run, tiny_model_dir, tmp_path):
    from supportbench.run import RunDir
    from supportbench.trainers.throughput import EFFECTIVE_BATCH, run_benchmark

    run = RunDir(tmp_path / "run")
    shutil.copytree(tiny_run, run.path)
    result = run_benchmark(run, tiny_config(tiny_model_dir, batch_size=2), steps=1)
    arms = ["notebook", "no_checkpointing", "length_grouped", "prompt_completion", "completion_logits"]
    assert [arm["arm"] for arm in result["arms"]] == arms
    assert all(arm["examples"] == EFFECTIVE_BATCH and arm["tokens_per_s"] > 0 for arm in result["arms"])
    assert result["matmul_limit"]["gflops"] > 0 and result["flops_per_token"] > 0
    for arm in result["arms"]:  # tokens/s x matmul work per token over the limit measured in the same run
        expected = arm["tokens_per_s"] * result["flops_per_token"] / result["matmul_limit"]["flops_per_s"]
        assert arm["matmul_limit_share"] == pytest.approx(expected, abs=1e-4)
    assert result["ratio_tokens_per_s"] == round(result["arms"][-1]["tokens_per_s"] / result["arms"][0]["tokens_per_s"], 2)


def _table(markdown: str, heading: str) -> dict[str, list[str]]:
    section = markdown.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| ---")]
    cells = [[c.strip() for c in row.strip("|").split("|")] for row in rows[1:]]
    return {c[0]: c[1:] for c in cells}


def test_bench_writes_well_formed_json(full_run):
    summary = read_json(full_run / "bench" / "summary.json")
    assert set(summary["variants"]) == {*VARIANTS, "exported"}
    for row in summary["variants"].values():
        for key in (
            "warm_load_s",
            "ttft_p50_s",
            "decode_ms_per_token_p50",
            "e2e_p50_s",
            "e2e_p95_s",
            "tokens_per_s_batch1",
            "tokens_per_s_batched",
            "peak_rss_mib",
            "cpu_s_per_1k_replies",
            "cpu_s_per_1k_replies_batched",
            "size_on_disk_mib",
        ):
            assert isinstance(row[key], float) and row[key] >= 0, key
        assert row["e2e_p95_s"] >= row["e2e_p50_s"]
    variants = summary["variants"]
    assert variants["exported"]["size_on_disk_mib"] < variants["merged"]["size_on_disk_mib"]  # int8 against fp32
    assert summary["machine"]["cores"] >= 1 and summary["machine"]["torch_threads"] >= 1
    raw = read_json(full_run / "bench" / "pytest_benchmark.json")
    assert len(raw["benchmarks"]) == 3 * len(variants)  # warm load, reply, batched per variant


def test_report_numbers_equal_the_json(full_run):
    markdown = (full_run / "report.md").read_text()
    metrics = read_json(full_run / "eval" / "metrics.json")
    table = _table(markdown, "Quality: base vs fine-tuned")
    for key, metric in METRICS.items():
        assert table[metric.label][:2] == [fmt(metrics["metrics"]["base"][key]), fmt(metrics["metrics"]["finetuned"][key])], key
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
        [CHROMIUM, *flags, f"--screenshot={shot}", "--window-size=1280,2400", page], check=True, capture_output=True, timeout=120
    )
    assert shot.stat().st_size > 20_000
    dom = subprocess.run([CHROMIUM, *flags, "--dump-dom", page], check=True, capture_output=True, text=True, timeout=120).stdout
    for table in ("metrics", "per-category", "training", "latency", "samples", "data"):
        assert f'id="{table}"' in dom, table
    assert "loss-curve" in dom and not re.search(r"\{\{|\{%|Undefined", dom)


def test_rank_lists_failures_and_reuses_finished_models(tiny_model_dir, tmp_path):
    out = tmp_path / "board"
    data = write_csv(tmp_path / "d.csv", fixture_rows())
    prepare(DataConfig(source=str(data), test_size=16, validation_size=8), BoardDir(out).run(str(tiny_model_dir)).data.path)
    config = RankConfig(models=(str(tiny_model_dir), "no-such-model"), preset="ci", limit=3, max_steps=2)
    board = rank(config, out)
    assert [r["status"] for r in board["rows"]] == ["ok", "failed"]
    assert "unknown model 'no-such-model'" in board["rows"][1]["error"]
    html, markdown = write_leaderboard(board, out)
    assert "no-such-model" in markdown.read_text() and "failed: SupportBenchError" in markdown.read_text()
    assert 'id="chart"' in html.read_text()
    before = BoardDir(out).run(str(tiny_model_dir)).manifest_path.stat().st_mtime
    assert rank(config, out)["rows"][0]["finetuned"] == board["rows"][0]["finetuned"]
    assert BoardDir(out).run(str(tiny_model_dir)).manifest_path.stat().st_mtime == before

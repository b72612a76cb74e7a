"""bench: the latency suite's JSON and the training-throughput arms."""

from __future__ import annotations

import shutil

import pytest
from helpers import tiny_config

from supportbench.files import read_json
from supportbench.layout import VARIANTS


def test_training_throughput_benchmark_measures_every_arm(tiny_run, tiny_model_dir, tmp_path):
    from supportbench.bench.train_throughput import EFFECTIVE_BATCH, run_benchmark
    from supportbench.layout import RunDir

    run = RunDir(tmp_path / "run")
    shutil.copytree(tiny_run, run.path)
    result = run_benchmark(run, tiny_config(tiny_model_dir, batch_size=2), steps=1)
    arms = ["reference_recipe", "no_checkpointing", "length_grouped", "prompt_completion", "completion_logits"]
    assert [arm["arm"] for arm in result["arms"]] == arms
    assert all(arm["examples"] == EFFECTIVE_BATCH and arm["tokens_per_s"] > 0 for arm in result["arms"])
    assert result["matmul_limit"]["gflops"] > 0 and result["flops_per_token"] > 0
    for arm in result["arms"]:  # tokens/s x matmul work per token over the limit measured in the same run
        expected = arm["tokens_per_s"] * result["flops_per_token"] / result["matmul_limit"]["flops_per_s"]
        assert arm["matmul_limit_share"] == pytest.approx(expected, abs=1e-4)
    assert result["ratio_tokens_per_s"] == round(
        result["arms"][-1]["tokens_per_s"] / result["arms"][0]["tokens_per_s"], 2
    )


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
    assert len(raw["benchmarks"]) == 3 * len(variants) + 1  # warm load, reply, batched per variant; the policy
    policy = summary["policy"]  # what the reply policy adds per reply, on the run's test replies
    assert policy["replies"] > 0 and 0 < policy["median_ms"] <= policy["max_ms"]


def test_eval_speed_measures_eval_on_both_runtimes_in_one_process(full_run, tmp_path, capsys):
    from supportbench.cli import main
    from supportbench.evaluation.exact_runtime import NAME

    run = tmp_path / "run"
    shutil.copytree(full_run, run)
    assert main(["bench", "eval-speed", "--run", str(run), "--examples", "2"]) == 0
    speed = read_json(run / "bench" / "eval_speed.json")
    runtimes = speed["runtimes"]
    assert set(runtimes["arms"]) == {"transformers", NAME}
    assert runtimes["arms"][NAME]["runtime"]["checks"]["greedy"]["exact"]  # the fast arm ran on CTranslate2
    assert runtimes["identical_replies"] == 2
    arms = runtimes["arms"]
    assert runtimes["generation_ratio"] == round(arms["transformers"]["generation_s"] / arms[NAME]["generation_s"], 2)
    assert runtimes["matmul"]["gflops"] > 0
    eval_flops = read_json(run / "eval" / "metrics.json")["flops"]
    assert speed["flops"] == eval_flops  # the tiny model's share rounds to 0.0 (tests/bench/test_flops.py)
    assert speed["flops"]["finetuned"]["generation"]["share_of_matmul_limit"] is not None
    shown = capsys.readouterr().out
    assert "ratio: generation" in shown and "finetuned generation: " in shown and "of the matmul limit" in shown

"""Latency and memory measurements for base, base+LoRA (unmerged) and merged models of a run."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from supportbench.decoding import serving_decoding
from supportbench.deploy import runtime
from supportbench.deploy.export import exported_format, folder_mib
from supportbench.device import machine_info
from supportbench.facts.profile import profile_for_run
from supportbench.files import SupportBenchError, read_json, write_json
from supportbench.layout import VARIANTS, RunDir
from supportbench.models import materialize, model_path, resolve
from supportbench.templates import Turn, get_template

EXPORTED = "exported"  # the bench variant of the exported runtime model


class TokenClock:
    """A generate() streamer that timestamps every new token (the first call carries the prompt)."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.stamps: list[float] = []
        self._prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        """Record a timestamp for each chunk after the prompt."""
        if self._prompt_seen:
            self.stamps.append(time.perf_counter())
        self._prompt_seen = True

    def end(self) -> None:
        """Nothing to flush."""


def bench_queries(run: RunDir, count: int) -> list[str]:
    """A fixed set of customer queries: the first `count` rows of the run's test split."""
    return [r["instruction"] for r in run.data.rows("test")[:count]]


def cold_materialize_seconds(model_name: str, cache: Path) -> float:
    """Seconds to materialize a bundled GGUF into an empty cache folder."""
    started = time.perf_counter()
    materialize(resolve(model_name), cache)
    return time.perf_counter() - started


def prompts_for(run: RunDir, tokenizer: Any, queries: list[str]) -> list[str]:
    """Render queries in the run's template."""
    template = get_template(run.trained().template)
    return [template.prompt([Turn(q)], tokenizer) for q in queries]


class TorchReplier:
    """Greedy replies from a transformers model (base, base+LoRA or merged), timed."""

    def __init__(self, model: Any, tokenizer: Any, controls: dict[str, Any]):
        self.model, self.tokenizer, self.controls = model, tokenizer, controls

    @torch.inference_mode()
    def timed_reply(self, prompt: str, max_new_tokens: int) -> dict[str, float]:
        """Generate one reply; return time to first token, per-token decode latency, end-to-end and CPU time."""
        inputs = self.tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to(self.model.device)
        clock, cpu = TokenClock(), time.process_time()
        options = {"do_sample": False, "pad_token_id": self.tokenizer.pad_token_id, **self.controls}
        self.model.generate(**inputs, max_new_tokens=max_new_tokens, streamer=clock, **options)
        return reply_timing(clock.started, clock.stamps, time.process_time() - cpu)

    @torch.inference_mode()
    def batched(self, prompts: list[str], max_new_tokens: int) -> dict[str, float]:
        """New tokens per second, and CPU seconds, with all prompts generated as one left-padded batch."""
        self.tokenizer.padding_side = "left"
        inputs = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(
            self.model.device
        )
        started, cpu = time.perf_counter(), time.process_time()
        pad = self.tokenizer.pad_token_id
        output = self.model.generate(
            **inputs, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad, **self.controls
        )
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
        produced = int((output[:, inputs["input_ids"].shape[1] :] != pad).sum())
        return {"tokens_per_s_batched": produced / elapsed, "cpu_s_per_reply_batched": cpu / len(prompts)}


class ExportedReplier:
    """Greedy replies from the exported CTranslate2 model, timed the same way."""

    def __init__(self, folder: Path, controls: dict[str, Any]):
        self.generator, self.tokenizer = runtime.load_exported(folder)
        self.controls = controls

    def timed_reply(self, prompt: str, max_new_tokens: int) -> dict[str, float]:
        """Generate one reply; return time to first token, per-token decode latency, end-to-end and CPU time."""
        stamps: list[float] = []
        started, cpu = time.perf_counter(), time.process_time()
        tokens = runtime.prompt_tokens(self.tokenizer, prompt)
        on_token = lambda index, token: stamps.append(time.perf_counter())  # noqa: E731
        runtime.generate(self.generator, [tokens], max_new_tokens, on_token, self.controls)
        return reply_timing(started, stamps, time.process_time() - cpu)

    def batched(self, prompts: list[str], max_new_tokens: int) -> dict[str, float]:
        """New tokens per second, and CPU seconds, with all prompts generated as one batch."""
        started, cpu = time.perf_counter(), time.process_time()
        tokens = [runtime.prompt_tokens(self.tokenizer, p) for p in prompts]
        produced = sum(map(len, runtime.generate(self.generator, tokens, max_new_tokens, controls=self.controls)))
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
        return {"tokens_per_s_batched": produced / elapsed, "cpu_s_per_reply_batched": cpu / len(prompts)}


def load_replier(run: RunDir, variant: str) -> TorchReplier | ExportedReplier:
    """The timed replier of one bench variant, decoding with the run's frozen repetition controls."""
    controls = serving_decoding(run).controls()
    if variant == EXPORTED:
        return ExportedReplier(run.exported(runtime.FORMAT), controls)
    return TorchReplier(*run.load_variant(variant), controls)


def bench_variants(run: RunDir) -> tuple[str, ...]:
    """base, lora and merged, plus the exported model when `supportbench export` wrote one for this adapter."""
    return (*VARIANTS, EXPORTED) if exported_format(run.path) else VARIANTS


def disk_mib(run: RunDir, variant: str) -> float | None:
    """What a variant needs on disk: the base weights, plus the adapter, or the merged or exported folder alone."""
    if variant == EXPORTED:
        return folder_mib(run.exported(runtime.FORMAT))
    if variant == "merged":
        return folder_mib(run.merged) if run.merged.is_dir() else None
    base = Path(model_path(run.base_model))
    if not base.is_dir():
        return None
    return folder_mib(base) + (folder_mib(run.adapter) if variant == "lora" else 0.0)


def reply_timing(started: float, stamps: list[float], cpu_s: float) -> dict[str, float]:
    """One reply's figures from the timestamps of its new tokens."""
    done = time.perf_counter()
    decode = (stamps[-1] - stamps[0]) / (len(stamps) - 1) if len(stamps) > 1 else float("nan")
    return {
        "ttft_s": stamps[0] - started,
        "decode_s_per_token": decode,
        "e2e_s": done - started,
        "new_tokens": len(stamps),
        "cpu_s": cpu_s,
    }


def summarize_replies(timings: list[dict[str, float]]) -> dict[str, float]:
    """p50/p95 end-to-end latency, median TTFT and decode latency, batch-1 tokens/s."""
    e2e = [t["e2e_s"] for t in timings]
    return {
        "replies": len(timings),
        "e2e_p50_s": statistics.median(e2e),
        "e2e_p95_s": float(np.percentile(e2e, 95)),
        "ttft_p50_s": statistics.median(t["ttft_s"] for t in timings),
        "decode_ms_per_token_p50": 1000 * statistics.median(t["decode_s_per_token"] for t in timings),
        "tokens_per_s_batch1": sum(t["new_tokens"] for t in timings) / sum(e2e),
        "cpu_s_per_reply": statistics.mean(t["cpu_s"] for t in timings),
    }


def run_suite(run_dir: Path, quick: bool, profile: str | Path | None = None) -> dict[str, Any]:
    """Run the pytest-benchmark suite against a run; write its JSON and a summary, naming the company profile the
    served replies are filled with (filling is not timed: it costs microseconds), into RUN/bench/."""
    run = RunDir(Path(run_dir).resolve())
    run.require_adapter()
    filled_with = profile_for_run(run.data, profile).record()  # refused before minutes of benchmarks
    run.bench_dir.mkdir(parents=True, exist_ok=True)
    env = {
        # not an xdist worker's identity (when called from one, as in the tests): pytest-benchmark would switch off
        **{name: value for name, value in os.environ.items() if not name.startswith("PYTEST_XDIST_")},
        "SUPPORTBENCH_BENCH_RUN": str(run.path),
        "SUPPORTBENCH_BENCH_QUICK": "1" if quick else "0",
        "SUPPORTBENCH_BENCH_PROFILE": str(profile or ""),
    }
    command = [
        sys.executable,
        "-m",
        "pytest",
        str(Path(__file__).with_name("latency_suite.py")),
        "-q",
        "-p",
        "no:cacheprovider",
        "--benchmark-enable",
        "--benchmark-only",
        f"--benchmark-json={run.bench_raw}",
        "-o",
        "addopts=",
        "--rootdir",
        str(run.bench_dir),
    ]
    if subprocess.run(command, env=env).returncode != 0:
        raise SupportBenchError(
            f"the benchmark suite failed; see the output above ({run.bench_raw} may be incomplete)"
        )
    summary = summarize_benchmarks(read_json(run.bench_raw))
    for variant, row in summary["variants"].items():
        row["size_on_disk_mib"] = disk_mib(run, variant)
    summary.update(
        {
            "machine": machine_info(),
            "quick": quick,
            "queries": bench_queries(run, 3 if quick else 8),
            "profile": filled_with,
        }
    )
    write_json(run.bench_summary, summary)
    return summary


def summarize_benchmarks(raw: dict[str, Any]) -> dict[str, Any]:
    """Fold pytest-benchmark JSON into one row per variant."""
    rows: dict[str, dict[str, Any]] = {}
    policy = None
    for bench in raw["benchmarks"]:
        info, stats = bench["extra_info"], bench["stats"]
        if info["measure"] == "policy":  # milliseconds the reply policy adds to one reply
            policy = {
                "replies": info["replies"],
                **{f"{k}_ms": 1000 * stats[k] for k in ("median", "mean", "max")},
            }
            continue
        row = rows.setdefault(info["variant"], {})
        if info["measure"] in ("cold_load", "warm_load"):
            row[f"{info['measure']}_s"] = stats["median"]
        else:
            row.update({k: v for k, v in info.items() if k not in ("variant", "measure")})
    for row in rows.values():  # what 1,000 replies like the bench's cost, one at a time and batched
        row["cpu_s_per_1k_replies"] = 1000 * row["cpu_s_per_reply"]
        row["cpu_s_per_1k_replies_batched"] = 1000 * row["cpu_s_per_reply_batched"]
    return {
        "variants": rows,
        "policy": policy,
        "pytest_benchmark": {"version": raw.get("version"), "datetime": raw.get("datetime")},
    }


def summary_lines(summary: dict[str, Any], run: RunDir) -> list[str]:
    """One table row per variant: load, latency, throughput, CPU cost, memory and disk."""
    lines = [
        f"{'variant':<10}{'warm load s':>12}{'TTFT s':>9}{'ms/token':>10}{'p50 s':>8}{'p95 s':>8}{'tok/s b1':>10}"
        f"{'tok/s batch':>12}{'CPU-s/1k b1':>12}{'CPU-s/1k bat':>13}{'peak RSS MiB':>14}{'disk MiB':>10}"
    ]
    for name, row in summary["variants"].items():
        disk = "n/a" if row["size_on_disk_mib"] is None else f"{row['size_on_disk_mib']:.0f}"
        lines.append(
            f"{name:<10}{row['warm_load_s']:>12.2f}{row['ttft_p50_s']:>9.3f}{row['decode_ms_per_token_p50']:>10.1f}"
            f"{row['e2e_p50_s']:>8.2f}{row['e2e_p95_s']:>8.2f}{row['tokens_per_s_batch1']:>10.1f}"
            f"{row['tokens_per_s_batched']:>12.1f}{row['cpu_s_per_1k_replies']:>12.0f}{row['cpu_s_per_1k_replies_batched']:>13.0f}"
            f"{row['peak_rss_mib']:>14.0f}{disk:>10}"
        )
    if policy := summary.get("policy"):
        lines.append(
            f"reply policy: {policy['median_ms']:.1f} ms p50 per reply (decide + screen, {policy['replies']} test replies)"
        )
    return [*lines, f"written to {run.bench_dir}"]

"""Latency and memory measurements for base, base+LoRA (unmerged) and merged models of a run."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from supportbench.device import machine_info
from supportbench.io import SupportBenchError, read_json, write_json
from supportbench.metrics import percentile
from supportbench.models import materialize, resolve
from supportbench.run import VARIANTS, RunDir
from supportbench.templates import Turn, get_template


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
    template = get_template(run.trained()["template"])
    return [template.prompt([Turn(q)], tokenizer) for q in queries]


@torch.inference_mode()
def timed_reply(model: Any, tokenizer: Any, prompt: str, max_new_tokens: int) -> dict[str, float]:
    """Greedy-generate one reply; return time to first token, per-token decode latency and end-to-end time."""
    inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to(model.device)
    clock = TokenClock()
    model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, streamer=clock, pad_token_id=tokenizer.pad_token_id)
    done = time.perf_counter()
    stamps = clock.stamps
    decode = (stamps[-1] - stamps[0]) / (len(stamps) - 1) if len(stamps) > 1 else float("nan")
    return {
        "ttft_s": stamps[0] - clock.started,
        "decode_s_per_token": decode,
        "e2e_s": done - clock.started,
        "new_tokens": len(stamps),
    }


@torch.inference_mode()
def batched_tokens_per_s(model: Any, tokenizer: Any, prompts: list[str], max_new_tokens: int) -> float:
    """New tokens per second when all prompts are generated as one left-padded batch."""
    tokenizer.padding_side = "left"
    inputs = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
    started = time.perf_counter()
    output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    elapsed = time.perf_counter() - started
    new = output[:, inputs["input_ids"].shape[1] :]
    produced = int((new != tokenizer.pad_token_id).sum())
    return produced / elapsed


def summarize_replies(timings: list[dict[str, float]]) -> dict[str, float]:
    """p50/p95 end-to-end latency, median TTFT and decode latency, batch-1 tokens/s."""
    e2e = [t["e2e_s"] for t in timings]
    return {
        "replies": len(timings),
        "e2e_p50_s": statistics.median(e2e),
        "e2e_p95_s": percentile(e2e, 95),
        "ttft_p50_s": statistics.median(t["ttft_s"] for t in timings),
        "decode_ms_per_token_p50": 1000 * statistics.median(t["decode_s_per_token"] for t in timings),
        "tokens_per_s_batch1": sum(t["new_tokens"] for t in timings) / sum(e2e),
    }


def run_suite(run_dir: Path, quick: bool) -> dict[str, Any]:
    """Run the pytest-benchmark suite against a run; write its JSON and a summary into RUN/bench/."""
    run = RunDir(Path(run_dir).resolve())
    run.require_adapter()
    run.bench_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "SUPPORTBENCH_BENCH_RUN": str(run.path), "SUPPORTBENCH_BENCH_QUICK": "1" if quick else "0"}
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
        raise SupportBenchError(f"the benchmark suite failed; see the output above ({run.bench_raw} may be incomplete)")
    summary = summarize_benchmarks(read_json(run.bench_raw))
    summary.update({"machine": machine_info(), "quick": quick, "queries": bench_queries(run, 3 if quick else 8)})
    write_json(run.bench_summary, summary)
    return summary


def summarize_benchmarks(raw: dict[str, Any]) -> dict[str, Any]:
    """Fold pytest-benchmark JSON into one row per variant."""
    rows: dict[str, dict[str, Any]] = {v: {} for v in VARIANTS}
    for bench in raw["benchmarks"]:
        info, stats = bench["extra_info"], bench["stats"]
        row = rows[info["variant"]]
        if info["measure"] in ("cold_load", "warm_load"):
            row[f"{info['measure']}_s"] = stats["median"]
        else:
            row.update({k: v for k, v in info.items() if k not in ("variant", "measure")})
    return {"variants": rows, "pytest_benchmark": {"version": raw.get("version"), "datetime": raw.get("datetime")}}


@torch.inference_mode()
def notebook_loop_seconds(run: RunDir, examples: int, max_new_tokens: int) -> dict[str, Any]:
    """The notebook's eval loop: one example at a time, greedy, base then fine-tuned; wall time per model."""
    rows = run.data.rows("test")[:examples]
    timings = {}
    for variant in ("base", "lora"):
        model, tokenizer = run.load_variant(variant)
        prompts = prompts_for(run, tokenizer, [r["instruction"] for r in rows])
        started = time.perf_counter()
        for prompt in prompts:
            inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to(model.device)
            model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        timings[variant] = time.perf_counter() - started
    return {
        "examples": len(rows),
        "max_new_tokens": max_new_tokens,
        "seconds": timings,
        "seconds_per_example": {k: v / len(rows) for k, v in timings.items()},
        "machine": machine_info(),
    }


def eval_speedup(run_dir: Path, examples: int) -> dict[str, Any]:
    """Compare the batched lm-eval generation timing of the run's eval with the one-at-a-time loop."""
    run = RunDir(run_dir)
    evaluation = read_json(run.eval.metrics)
    n = evaluation["n"]["base"]["generation"]
    batched = sum(evaluation["timing_s"][side]["generation"] for side in ("base", "finetuned"))
    loop = notebook_loop_seconds(run, examples, evaluation["caps"]["max_new_tokens"])
    loop_estimate = sum(loop["seconds_per_example"].values()) * n
    result = {
        "generation_examples": n,
        "batched_seconds": batched,
        "batch_size": evaluation["config"]["gen_batch_size"],
        "one_at_a_time": loop,
        "one_at_a_time_seconds_for_n": loop_estimate,
        "speedup": loop_estimate / batched,
        "measured_examples_one_at_a_time": loop["examples"],
    }
    write_json(run.eval_speed, result)
    return result

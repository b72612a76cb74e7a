"""Eval speed: the run's batched lm-eval generation against the reference recipe's one-at-a-time loop."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import torch

from supportbench.bench.flops import eval_lines, matmul_limit
from supportbench.bench.latency import prompts_for
from supportbench.device import machine_info
from supportbench.files import SupportBenchError, write_json
from supportbench.layout import RunDir


@torch.inference_mode()
def one_at_a_time_seconds(run: RunDir, examples: int, max_new_tokens: int) -> dict[str, Any]:
    """The reference recipe's eval loop: one example at a time, greedy, base then fine-tuned; wall time per model."""
    rows = run.data.rows("test")[:examples]
    timings = {}
    for variant in ("base", "lora"):
        model, tokenizer = run.load_variant(variant)
        prompts = prompts_for(run, tokenizer, [r["instruction"] for r in rows])
        started = time.perf_counter()
        for prompt in prompts:
            inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to(model.device)
            model.generate(
                **inputs, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id
            )
        timings[variant] = time.perf_counter() - started
    return {
        "examples": len(rows),
        "max_new_tokens": max_new_tokens,
        "seconds": timings,
        "seconds_per_example": {k: v / len(rows) for k, v in timings.items()},
        "machine": machine_info(),
    }


def runtime_arms(run: RunDir, examples: int) -> dict[str, Any]:
    """Eval's own scoring of the fine-tuned model on `examples` test examples, plain greedy at the run's budget, on
    transformers and on the exact runtime (its check of the first requests included), one after the other here."""
    from supportbench.config import EvalConfig
    from supportbench.decoding import Decoding, run_budget
    from supportbench.evaluation import exact_runtime
    from supportbench.evaluation.evaluator import (
        check_before_work,
        generation_scores,
        load_lm,
        perplexity_scores,
        runtime_record,
        with_decoding,
    )
    from supportbench.models import model_path

    why_not = exact_runtime.available()
    if why_not:
        raise SupportBenchError(
            f"eval-speed compares the exact runtime with transformers, which cannot run here: {why_not}"
        )
    config = with_decoding(EvalConfig(), Decoding(run_budget(run)))
    metadata = check_before_work(run, config)["metadata"]
    path = model_path(run.base_model)
    arms, replies = {}, {}
    for backend in ("hf", "ct2"):
        arm = dataclasses.replace(config, backend=backend)
        started = time.perf_counter()
        lm = load_lm(path, str(run.adapter), arm)
        load_s = time.perf_counter() - started
        gen = generation_scores(lm, path, metadata, arm, examples)
        started = time.perf_counter()
        perplexity_scores(lm, path, metadata, arm, examples)
        used = runtime_record(lm, arm)
        arms[used["generation"] if backend == "ct2" else "transformers"] = {
            "load_s": round(load_s, 1),
            "generation_s": gen["seconds"],
            "perplexity_s": round(time.perf_counter() - started, 3),  # to the ms: a tiny arm can take under 0.05 s
            "runtime": used,
        }
        replies[backend] = [s["resps"] for s in gen["samples"]]
    slow, fast = arms.values()
    return {
        "examples": examples,
        "decoding": "plain greedy at the run's budget",
        "arms": arms,
        "generation_ratio": round(slow["generation_s"] / fast["generation_s"], 2),
        "perplexity_ratio": round(slow["perplexity_s"] / fast["perplexity_s"], 2),
        "identical_replies": sum(a == b for a, b in zip(replies["hf"], replies["ct2"], strict=True)),
        "matmul": matmul_limit(),
    }


def eval_speedup(run_dir: Path, examples: int) -> dict[str, Any]:
    """Compare the batched lm-eval generation timing of the run's eval with the one-at-a-time loop, and, where the
    exact runtime can run, eval's scoring on it with transformers."""
    from supportbench.evaluation import exact_runtime

    run = RunDir(run_dir)
    evaluation = run.eval.summary()
    n = evaluation.n["base"].generation
    batched = evaluation.generation_seconds
    loop = one_at_a_time_seconds(run, examples, evaluation.caps.max_new_tokens)
    loop_estimate = sum(loop["seconds_per_example"].values()) * n
    result = {
        "generation_examples": n,
        "batched_seconds": batched,
        "batch_size": evaluation.config.gen_batch_size,
        "one_at_a_time": loop,
        "one_at_a_time_seconds_for_n": loop_estimate,
        "speedup": loop_estimate / batched,
        "measured_examples_one_at_a_time": loop["examples"],
        "runtimes": None if exact_runtime.available() else runtime_arms(run, examples),
        "flops": evaluation.flops,  # the eval's own account, with the rate measured then
    }
    write_json(run.eval_speed, result)
    return result


def summary_lines(result: dict[str, Any]) -> list[str]:
    """The batched and one-at-a-time seconds and their ratio, and the eval's FLOP shares of the matmul limit."""
    return (
        [
            f"batched eval generation: {result['batched_seconds']:.1f}s for {result['generation_examples']} examples x 2 "
            f"models; one at a time: {result['one_at_a_time_seconds_for_n']:.1f}s (from "
            f"{result['measured_examples_one_at_a_time']} measured); speedup {result['speedup']:.1f}x"
        ]
        + runtime_lines(result["runtimes"])
        + eval_lines(result.get("flops"))
    )


def runtime_lines(runtimes: dict[str, Any] | None) -> list[str]:
    """Eval's scoring on transformers against the exact runtime: seconds per arm and the ratios, with the matmul rate."""
    if runtimes is None:
        return ["exact runtime: not measured (CTranslate2 cannot run here)"]
    lines = [
        f"{name:<22} load {arm['load_s']:>6.1f}s  generation {arm['generation_s']:>7.1f}s  perplexity "
        f"{arm['perplexity_s']:>7.1f}s"
        for name, arm in runtimes["arms"].items()
    ]
    return [
        f"eval on {runtimes['examples']} test examples ({runtimes['decoding']}), fine-tuned model, same process:",
        *lines,
        f"ratio: generation {runtimes['generation_ratio']}x, perplexity {runtimes['perplexity_ratio']}x; "
        f"{runtimes['identical_replies']} of {runtimes['examples']} replies identical; "
        f"matmul {runtimes['matmul']['gflops']} GFLOP/s",
    ]

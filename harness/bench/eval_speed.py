"""Eval speed: the run's batched lm-eval generation against the notebook's one-example-at-a-time loop."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from supportbench.bench.latency import prompts_for
from supportbench.device import machine_info
from supportbench.files import write_json
from supportbench.layout import RunDir


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


def eval_speedup(run_dir: Path, examples: int) -> dict[str, Any]:
    """Compare the batched lm-eval generation timing of the run's eval with the one-at-a-time loop."""
    run = RunDir(run_dir)
    evaluation = run.eval.summary()
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


def summary_lines(result: dict[str, Any]) -> list[str]:
    """The batched and one-at-a-time seconds and their ratio."""
    return [
        f"batched eval generation: {result['batched_seconds']:.1f}s for {result['generation_examples']} examples x 2 "
        f"models; one at a time: {result['one_at_a_time_seconds_for_n']:.1f}s (from "
        f"{result['measured_examples_one_at_a_time']} measured); speedup {result['speedup']:.1f}x"
    ]

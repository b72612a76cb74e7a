"""Training-throughput benchmark (`supportbench bench --train-throughput`): the reference recipe's SFT against
ours, one change at a time. Each arm trains one warm-up optimizer step (not timed), then `steps` timed steps
on the same examples; the result holds non-padding tokens/s and examples/s per arm, each arm's gain over the
one before, its share of this CPU's matmul limit (measured in the same run), and the overall ratio of ours (the
last arm) to the reference recipe's.
"""

from __future__ import annotations

import dataclasses
import random
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from supportbench.bench.flops import matmul_limit
from supportbench.config import TrainConfig
from supportbench.device import machine_info, pick_device
from supportbench.files import SupportBenchError
from supportbench.layout import RunDir
from supportbench.models import load_model, resolve
from supportbench.trainers.lora import (
    SpeedKnobs,
    build_examples,
    choose_max_length,
    ensure_data,
    make_trainer,
    token_lengths,
)

REFERENCE_BATCH, REFERENCE_ACCUMULATION, TRL_DEFAULT_MAX_LENGTH = 2, 8, 1024
EFFECTIVE_BATCH = REFERENCE_BATCH * REFERENCE_ACCUMULATION  # every arm steps the optimizer on 16 examples


def arms(max_length: int, batch_size: int) -> list[tuple[str, str, SpeedKnobs, int]]:
    """(name, change, knobs, per-device batch) for each arm, each adding one change to the one before."""
    reference = SpeedKnobs(
        completion_only=False, gradient_checkpointing=True, group_by_length=False, max_length=TRL_DEFAULT_MAX_LENGTH
    )
    no_ckpt = dataclasses.replace(reference, gradient_checkpointing=False)
    grouped = dataclasses.replace(no_ckpt, group_by_length=True)
    ours = SpeedKnobs(
        completion_only=True,
        gradient_checkpointing=False,
        group_by_length=True,
        max_length=max_length,
        completion_logits_only=False,
    )
    return [
        (
            "reference_recipe",
            "SFTTrainer on full text, fp32, batch 2 x accumulation 8, TRL defaults (gradient checkpointing on)",
            reference,
            REFERENCE_BATCH,
        ),
        ("no_checkpointing", "gradient checkpointing off (CPU has memory to spare)", no_ckpt, REFERENCE_BATCH),
        ("length_grouped", "length-grouped batches", grouped, REFERENCE_BATCH),
        (
            "prompt_completion",
            f"batch {batch_size}, prompt-completion loss, max_length {max_length} from the length distribution",
            ours,
            batch_size,
        ),
        (
            "completion_logits",
            "the LM head only from the batch's first reply position (TRL's fused head on CPU scores every position)",
            dataclasses.replace(ours, completion_logits_only=True),
            batch_size,
        ),
    ]


def measure(
    config: TrainConfig, rows: list[dict[str, Any]], knobs: SpeedKnobs, batch: int, steps: int, workdir: Path
) -> dict[str, Any]:
    """Train one warm-up step plus `steps` timed optimizer steps of EFFECTIVE_BATCH examples each."""
    device = pick_device()
    model, tokenizer = load_model(config.model, device)
    arm_config = dataclasses.replace(
        config,
        batch_size=batch,
        gradient_accumulation=EFFECTIVE_BATCH // batch,
        max_steps=steps + 1,
        save_steps=10**6,
        logging_steps=10**6,
    )
    clock = StepClock()
    trainer = make_trainer(arm_config, model, tokenizer, rows, [], workdir, device, knobs, callbacks=[clock])
    trainer.train()
    (t0, tokens0), (t1, tokens1) = clock.marks[0], clock.marks[-1]
    wall, tokens, examples = t1 - t0, tokens1 - tokens0, steps * EFFECTIVE_BATCH
    return {
        "timed_wall_s": round(wall, 1),
        "warmup_step_s": round(t0 - clock.started, 1),
        "non_padding_tokens": tokens,
        "examples": examples,
        "tokens_per_s": round(tokens / wall, 1),
        "examples_per_s": round(examples / wall, 3),
    }


def linear_parameters(model_name: str) -> int:
    """Weights of the model's linear layers (the LM head included): its matmul work per token, in multiply-adds."""
    import torch

    model, _ = load_model(model_name)
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))


class StepClock(TrainerCallback):
    """Timestamps and token counts at the end of every optimizer step."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.marks: list[tuple[float, int]] = []

    def on_step_end(self, args, state, control, **kwargs):
        self.marks.append((time.perf_counter(), int(state.num_input_tokens_seen)))


def run_benchmark(run: RunDir, config: TrainConfig, steps: int) -> dict[str, Any]:
    """Measure every arm on the same model, data and machine; ours follows the config (a preset)."""
    if EFFECTIVE_BATCH % config.batch_size:
        raise SupportBenchError(
            f"the batch size {config.batch_size} must divide the effective batch {EFFECTIVE_BATCH}"
        )
    if steps <= 0:
        raise SupportBenchError(f"the throughput benchmark needs at least one timed step, not {steps}")
    rows = random.Random(config.seed).sample(ensure_data(run, None).rows("train"), (steps + 1) * EFFECTIVE_BATCH)
    _, tokenizer = load_model(config.model)
    template = config.template or resolve(config.model).template
    max_length, _ = choose_max_length(
        token_lengths(build_examples(rows, template, tokenizer), tokenizer), config.max_length_percentile
    )
    limit = matmul_limit()
    # forward + input gradients of the frozen base; LoRA's are tiny
    flops_per_token = 4 * linear_parameters(config.model)
    results = []
    for name, change, knobs, batch in arms(max_length, config.batch_size):
        print(f"[{name}] {change}", flush=True)
        result = measure(config, rows, knobs, batch, steps, run.bench_dir / f"ck-{name}")
        previous = results[-1]["tokens_per_s"] if results else result["tokens_per_s"]
        share = result["tokens_per_s"] * flops_per_token / limit["flops_per_s"]
        gain = round(result["tokens_per_s"] / previous, 2)
        results.append(
            {
                "arm": name,
                "change": change,
                **result,
                "gain_over_previous": gain,
                "matmul_limit_share": round(share, 4),
            }
        )
        print(f"    {result['tokens_per_s']} tok/s, {result['examples_per_s']} examples/s", flush=True)
    return {
        "model": config.model,
        "config": dataclasses.asdict(config),
        "optimizer_steps": steps,
        "effective_batch": EFFECTIVE_BATCH,
        "machine": machine_info(),
        "matmul_limit": limit,
        "flops_per_token": flops_per_token,
        "arms": results,
        "ratio_tokens_per_s": round(results[-1]["tokens_per_s"] / results[0]["tokens_per_s"], 2),
        "ratio_examples_per_s": round(results[-1]["examples_per_s"] / results[0]["examples_per_s"], 2),
    }


def summary_lines(result: dict[str, Any], run: RunDir) -> list[str]:
    """Our recipe against the reference recipe, in tokens/s and examples/s."""
    return [
        f"ours / reference recipe: {result['ratio_tokens_per_s']}x tokens/s, {result['ratio_examples_per_s']}x examples/s",
        f"written to {run.train_throughput}",
    ]

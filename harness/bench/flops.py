"""The FLOP account of a stage: the model FLOPs its tokens need, split into prefill, decode and padding, against what
this CPU's measured fp32 matmul rate could do in the stage's wall time. A forward pass costs 2 x parameters per token
(the matmuls; attention scores and the softmax are left out, a few percent at these lengths); a LoRA training step adds
the backward pass through the frozen weights, 2 x parameters more (activation gradients only). Batches are formed as
lm-eval's HFLM forms them: requests sorted longest first, then cut into batches, each padded to its longest prompt. A
batch that `generate` decodes steps until its longest reply ends, so a finished row's steps are padding too; where a
row leaves the batch as it ends (supportbench.evaluation.shrinking_batch), decoding computes no padding."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

FORWARD = 2  # FLOPs per parameter per token, forward
LORA_TRAINING = 4  # forward + activation gradients through frozen weights


_MEASURED: dict[int, tuple[float, dict[str, Any]]] = {}  # size -> (monotonic time, rate): this process's readings
REUSE_S = 300  # a reading this recent stands for now: the rate swings from day to day, not from minute to minute


def matmul_limit(size: int = 2048) -> dict[str, Any]:
    """This CPU's sustained fp32 matmul rate, measured with torch's benchmark timer on square size x size matrices
    with the threads of every launched process (3 s; a reading this process took in the last REUSE_S seconds is
    reused)."""
    import torch
    from torch.utils.benchmark import Timer

    from supportbench.launch import world_size

    taken, reading = _MEASURED.get(size, (-REUSE_S, {}))
    if time.monotonic() - taken < REUSE_S:
        return dict(reading)
    # launched processes run a thread each (OMP_NUM_THREADS=1) and share the CPU: a stage's limit is all their threads'
    threads = torch.get_num_threads() * world_size()
    a, b = torch.randn(size, size), torch.randn(size, size)
    timer = Timer("a @ b", globals={"a": a, "b": b}, num_threads=threads)
    seconds = timer.blocked_autorange(min_run_time=3).median
    reading = {
        "flops_per_s": 2 * size**3 / seconds,
        "gflops": round(2 * size**3 / seconds / 1e9, 1),
        "shape": [size, size, size],
        "threads": threads,
    }
    _MEASURED[size] = (time.monotonic(), reading)
    return dict(reading)


def _batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices of the requests in HFLM's order (longest first), cut into batches."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


def share(flops: float, seconds: float, flops_per_s: float) -> float | None:
    """Achieved FLOPs over what the matmul rate allows in the wall time (None without a time)."""
    return round(flops / (flops_per_s * seconds), 3) if seconds and flops_per_s else None


def generation_account(
    prompt_tokens: Sequence[int], reply_tokens: Sequence[int], batch_size: int, parameters: int, shrinking: bool
) -> dict[str, Any]:
    """The FLOPs of generating these replies in batches: prefill and decode that the replies need, and the padding
    (in decoding too unless shrinking: rows left the batch as they ended)."""
    prefill = sum(prompt_tokens)
    decode = sum(reply_tokens)
    padded_prefill = padded_decode = 0
    for batch in _batches(prompt_tokens, batch_size):
        padded_prefill += len(batch) * max(prompt_tokens[i] for i in batch)
        replies = [reply_tokens[i] for i in batch]
        padded_decode += sum(replies) if shrinking else len(batch) * max(replies)
    computed = padded_prefill + padded_decode
    return {
        "tokens": {"prefill": prefill, "decode": decode, "computed": computed},
        "prefill_flops": FORWARD * parameters * prefill,
        "decode_flops": FORWARD * parameters * decode,
        "padding_flops": FORWARD * parameters * (computed - prefill - decode),
        "padding_share": round(1 - (prefill + decode) / computed, 3) if computed else 0.0,
        "shrinking": shrinking,
    }


def scoring_account(sequence_tokens: Sequence[int], batch_size: int, parameters: int) -> dict[str, Any]:
    """The FLOPs of one forward pass over each sequence (log-likelihood scoring) in batches, and the padding."""
    useful = sum(sequence_tokens)
    computed = sum(len(b) * max(sequence_tokens[i] for i in b) for b in _batches(sequence_tokens, batch_size))
    return {
        "tokens": {"scored": useful, "computed": computed},
        "forward_flops": FORWARD * parameters * useful,
        "padding_flops": FORWARD * parameters * (computed - useful),
        "padding_share": round(1 - useful / computed, 3) if computed else 0.0,
    }


def with_share(account: dict[str, Any], seconds: float, flops_per_s: float) -> dict[str, Any]:
    """The account with its wall time and the share of the matmul limit its needed (not padded) FLOPs reached."""
    needed = sum(v for k, v in account.items() if k.endswith("_flops") and k != "padding_flops")
    return {
        **account,
        "seconds": seconds,
        "needed_flops": needed,
        "share_of_matmul_limit": share(needed, seconds, flops_per_s),
        "share_with_padding": share(needed + account["padding_flops"], seconds, flops_per_s),
    }


def training_account(tokens: int, seconds: float, parameters: int, flops_per_s: float) -> dict[str, Any]:
    """The FLOPs LoRA training needed for its (non-padding) tokens, and their share of the matmul limit."""
    needed = LORA_TRAINING * parameters * tokens
    return {
        "tokens": tokens,
        "needed_flops": needed,
        "seconds": seconds,
        "share_of_matmul_limit": share(needed, seconds, flops_per_s),
    }


def line(name: str, account: dict[str, Any]) -> str:
    """One stage's account in words."""
    shown = account["share_of_matmul_limit"]
    padding = f", {account['padding_share']:.0%} of computed tokens padding" if "padding_share" in account else ""
    return (
        f"{name}: {account['needed_flops'] / 1e12:.2f} TFLOP needed in {account['seconds']:.1f} s = "
        f"{shown:.0%} of the matmul limit{padding}"
        if shown is not None
        else f"{name}: no wall time"
    )


def eval_lines(shares: dict[str, Any] | None) -> list[str]:
    """Each scored model's generation and perplexity against the matmul limit, with the rate measured."""
    if not shares:
        return []
    rows = [
        line(f"{side} {stage}", account)
        for side in ("base", "finetuned")
        for stage, account in (shares.get(side) or {}).items()
    ]
    return [
        f"FLOPs against the matmul limit ({shares['matmul']['gflops']} GFLOP/s, measured by this process in the last {REUSE_S // 60} minutes):",
        *rows,
    ]

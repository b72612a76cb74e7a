"""Serving load: the app's assistant under concurrent users, per serving arm (transformers, exported, batched)."""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from supportbench.bench.latency import bench_queries
from supportbench.decoding import serving_decoding
from supportbench.device import machine_info
from supportbench.files import write_json
from supportbench.layout import RunDir

SERVING_ARMS = (("transformers", 1), ("exported", 1), ("exported", 8))  # (backend, max batch)


def serving_load(
    run_dir: Path,
    users: tuple[int, ...] = (1, 8, 16),
    max_new_tokens: int | None = None,
    profile: str | Path | None = None,
) -> dict[str, Any]:
    """The app's assistant under concurrent users, per serving arm, in one process: aggregate tokens/s, reply p50/p95;
    replies are capped at max_new_tokens (none: the run's reply budget, as in the app) and filled from the profile."""
    import threading

    from supportbench.serve.assistant import Assistant

    run = RunDir(Path(run_dir))
    max_new_tokens = max_new_tokens or serving_decoding(run).max_new_tokens
    queries = bench_queries(run, max(users))
    arms = []
    for backend, max_batch in SERVING_ARMS:
        assistant = Assistant(run.path, serve=backend, max_batch=max_batch, profile=profile)
        filled_with = assistant.profile.record()
        assistant.reply([], queries[0], finetuned=True, max_new_tokens=8)  # warm-up
        for count in users:
            results: list[tuple[float, int]] = []
            start = threading.Barrier(count)

            def user(
                query: str, assistant: Assistant = assistant, start: threading.Barrier = start, results=results
            ) -> None:
                start.wait()
                began = time.perf_counter()
                *_, last = assistant.generate([], query, finetuned=True, max_new_tokens=max_new_tokens)
                results.append((time.perf_counter() - began, last.completion_tokens))

            threads = [threading.Thread(target=user, args=(q,)) for q in queries[:count]]
            began = time.perf_counter()
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            wall = time.perf_counter() - began
            latencies = [seconds for seconds, _ in results]
            arms.append(
                {
                    "backend": backend,
                    "max_batch": max_batch,
                    "users": count,
                    "tokens": sum(tokens for _, tokens in results),
                    "wall_s": round(wall, 2),
                    "tokens_per_s": round(sum(tokens for _, tokens in results) / wall, 1),
                    "reply_p50_s": round(statistics.median(latencies), 2),
                    "reply_p95_s": round(float(np.percentile(latencies, 95)), 2),
                }
            )
        del assistant
    one_at_a_time = {a["users"]: a["tokens_per_s"] for a in arms if a["backend"] == "transformers"}
    for arm in arms:
        arm["throughput_vs_transformers"] = round(arm["tokens_per_s"] / one_at_a_time[arm["users"]], 2)
    result = {"max_new_tokens": max_new_tokens, "arms": arms, "profile": filled_with, "machine": machine_info()}
    write_json(run.serving_load, result)
    return result


def summary_lines(result: dict[str, Any], run: RunDir) -> list[str]:
    """One row per serving arm and user count: tokens/s, reply p50/p95, throughput against transformers."""
    lines = [f"{'backend':<14}{'batch':>6}{'users':>6}{'tokens/s':>10}{'p50 s':>8}{'p95 s':>8}{'vs transformers':>17}"]
    lines += [
        f"{arm['backend']:<14}{arm['max_batch']:>6}{arm['users']:>6}{arm['tokens_per_s']:>10.1f}"
        f"{arm['reply_p50_s']:>8.2f}{arm['reply_p95_s']:>8.2f}{arm['throughput_vs_transformers']:>16.2f}x"
        for arm in result["arms"]
    ]
    return [*lines, f"written to {run.serving_load}"]

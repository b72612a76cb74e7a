"""pytest-benchmark suite behind `supportbench bench`: load, reply latency, throughput and memory per variant.

Run through `supportbench bench --run RUN`, which sets SUPPORTBENCH_BENCH_RUN and collects the JSON.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from supportbench.bench.latency import (
    bench_queries,
    bench_variants,
    cold_materialize_seconds,
    load_replier,
    prompts_for,
    summarize_replies,
)
from supportbench.decoding import serving_decoding
from supportbench.device import peak_memory, reset_peak_memory
from supportbench.layout import RunDir
from supportbench.models import resolve

RUN = RunDir(Path(os.environ.get("SUPPORTBENCH_BENCH_RUN", ".")))
QUICK = os.environ.get("SUPPORTBENCH_BENCH_QUICK") == "1"
QUERIES = 3 if QUICK else 8
MAX_NEW_TOKENS = 16 if QUICK else serving_decoding(RUN).max_new_tokens  # the run's reply budget, as the app uses it


VARIANTS = bench_variants(RUN)


@pytest.fixture(scope="module", params=VARIANTS)
def loaded(request):
    """One variant's timed replier, with peak memory tracked from just before its load."""
    reset_peak_memory()
    replier = load_replier(RUN, request.param)
    yield request.param, replier
    del replier


def test_cold_load(benchmark):
    """First materialization of a bundled GGUF into an empty cache."""
    model_name = RUN.base_model
    if resolve(model_name).source != "gguf":
        pytest.skip(f"{model_name} needs no conversion")
    with tempfile.TemporaryDirectory() as cache:
        benchmark.pedantic(cold_materialize_seconds, args=(model_name, Path(cache)), rounds=1, iterations=1)
    benchmark.extra_info.update({"variant": "base", "measure": "cold_load"})


@pytest.mark.parametrize("variant", VARIANTS)
def test_warm_load(benchmark, variant):
    """Loading from the materialized cache (plus adapter load and merge where the variant needs them)."""
    benchmark.pedantic(load_replier, args=(RUN, variant), rounds=2, iterations=1, warmup_rounds=0)
    benchmark.extra_info.update({"variant": variant, "measure": "warm_load"})


def test_reply_latency(benchmark, loaded):
    """Batch-1 greedy replies to the fixed queries: TTFT, per-token decode latency, p50/p95 end to end."""
    variant, replier = loaded
    prompts = iter(prompts_for(RUN, replier.tokenizer, bench_queries(RUN, QUERIES)))
    timings = []

    def one_reply():
        timings.append(replier.timed_reply(next(prompts), MAX_NEW_TOKENS))

    benchmark.pedantic(one_reply, rounds=QUERIES, iterations=1)
    benchmark.extra_info.update(
        {"variant": variant, "measure": "reply", "max_new_tokens": MAX_NEW_TOKENS, **summarize_replies(timings)}
    )


def test_batched_throughput(benchmark, loaded):
    """New tokens per second with all queries in one batch; peak memory of the variant."""
    variant, replier = loaded
    prompts = prompts_for(RUN, replier.tokenizer, bench_queries(RUN, QUERIES))
    figures = benchmark.pedantic(replier.batched, args=(prompts, MAX_NEW_TOKENS), rounds=1, iterations=1)
    benchmark.extra_info.update(
        {"variant": variant, "measure": "batched", "batch": len(prompts), **figures, **peak_memory()}
    )


def test_policy_overhead(benchmark):
    """What the reply policy adds to each reply: its decision before generation and its screen of the reply after,
    on the run's test queries and replies (no model runs: the policy's cost does not depend on it)."""
    from supportbench.facts.profile import profile_for_run
    from supportbench.serve.policy import ReplyPolicy

    policy = ReplyPolicy.for_run(RUN, profile_for_run(RUN.data, os.environ.get("SUPPORTBENCH_BENCH_PROFILE") or None))
    if policy is None:
        pytest.skip("the profile switches the reply policy off")
    rows = RUN.data.rows("test")[: 20 if QUICK else 100]
    pending = iter(rows)

    def one_reply():
        row = next(pending)
        texts = [row["instruction"]]
        policy.screen(row["response"], policy.decide(texts), texts, final=True)

    benchmark.pedantic(one_reply, rounds=len(rows), iterations=1)
    benchmark.extra_info.update({"variant": "policy", "measure": "policy", "replies": len(rows)})

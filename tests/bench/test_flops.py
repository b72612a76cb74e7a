"""The FLOP account: batches formed as HFLM forms them, padding counted apart, shares of the matmul limit."""

from __future__ import annotations

import pytest

from supportbench.bench.flops import FORWARD, generation_account, scoring_account, training_account, with_share

PARAMETERS = 10


def test_generation_pads_each_longest_first_batch_to_its_longest_prompt_and_reply():
    # prompts sorted longest first: (5, 3) then (2); each batch decodes until its longest reply ends
    account = generation_account([3, 5, 2], [4, 1, 6], batch_size=2, parameters=PARAMETERS, shrinking=False)
    assert account["tokens"] == {"prefill": 10, "decode": 11, "computed": 2 * 5 + 2 + 2 * 4 + 6}
    assert account["prefill_flops"] == FORWARD * PARAMETERS * 10
    assert account["decode_flops"] == FORWARD * PARAMETERS * 11
    assert account["padding_flops"] == FORWARD * PARAMETERS * (26 - 21)
    assert account["padding_share"] == round(1 - 21 / 26, 3)


def test_a_shrinking_batch_pads_only_its_prompts():
    # rows leave the batch as their replies end: decoding computes each reply's own tokens
    account = generation_account([3, 5, 2], [4, 1, 6], batch_size=2, parameters=PARAMETERS, shrinking=True)
    assert account["tokens"] == {"prefill": 10, "decode": 11, "computed": 2 * 5 + 2 + 11}
    assert account["padding_flops"] == FORWARD * PARAMETERS * 2


def test_scoring_counts_padding_apart_and_the_share_uses_only_needed_flops():
    account = scoring_account([4, 2, 3], batch_size=2, parameters=PARAMETERS)
    assert account["tokens"] == {"scored": 9, "computed": 2 * 4 + 2}
    assert account["padding_flops"] == FORWARD * PARAMETERS
    shared = with_share(account, seconds=2.0, flops_per_s=100.0)
    assert shared["needed_flops"] == FORWARD * PARAMETERS * 9
    assert shared["share_of_matmul_limit"] == pytest.approx(180 / 200)
    assert shared["share_with_padding"] == pytest.approx(200 / 200)
    assert with_share(account, seconds=0.0, flops_per_s=100.0)["share_of_matmul_limit"] is None


def test_lora_training_counts_forward_and_activation_gradients():
    account = training_account(tokens=50, seconds=4.0, parameters=PARAMETERS, flops_per_s=1000.0)
    assert account["needed_flops"] == 2 * FORWARD * PARAMETERS * 50
    assert account["share_of_matmul_limit"] == pytest.approx(2000 / 4000)


def test_the_matmul_rate_is_measured_again_once_its_reading_is_older_than_the_reuse_window(monkeypatch):
    import torch.utils.benchmark

    from supportbench.bench import flops

    timings = []

    class CountingTimer(torch.utils.benchmark.Timer):
        def blocked_autorange(self, *args, **kwargs):
            timings.append(kwargs)
            return super().blocked_autorange(min_run_time=0.01)

    monkeypatch.setattr(torch.utils.benchmark, "Timer", CountingTimer)
    monkeypatch.setattr(flops, "_MEASURED", {})
    first = flops.matmul_limit(size=32)
    assert flops.matmul_limit(size=32) == first and len(timings) == 1  # reused within the window
    taken, reading = flops._MEASURED[32]
    flops._MEASURED[32] = (taken - flops.REUSE_S, reading)
    assert flops.matmul_limit(size=32)["shape"] == [32, 32, 32] and len(timings) == 2  # stale: measured again
    assert timings[0] == {"min_run_time": 3}


def test_under_launched_processes_the_matmul_rate_is_measured_on_all_their_threads(monkeypatch):
    import torch.utils.benchmark

    from supportbench.bench import flops

    threads = []

    class ThreadsTimer(torch.utils.benchmark.Timer):
        def __init__(self, *args, **kwargs):
            threads.append(kwargs["num_threads"])
            super().__init__(*args, **kwargs)

        def blocked_autorange(self, *args, **kwargs):
            return super().blocked_autorange(min_run_time=0.01)

    monkeypatch.setattr(torch.utils.benchmark, "Timer", ThreadsTimer)
    for processes in (1, 2):
        monkeypatch.setenv("WORLD_SIZE", str(processes))
        monkeypatch.setattr(flops, "_MEASURED", {})
        assert flops.matmul_limit(size=32)["threads"] == threads[-1] == processes * torch.get_num_threads()

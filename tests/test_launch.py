"""Multi-process runs under accelerate launch, and the vLLM backend's arguments."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest
import yaml
from helpers import small_split, trained_copy
from peft import PeftModel
from transformers import AutoModelForCausalLM

from supportbench.cli import main
from supportbench.config import EvalConfig
from supportbench.evaluation import evaluator
from supportbench.evaluation.evaluator import evaluate_run, load_lm, vllm_model_args
from supportbench.files import SupportBenchError, read_json, write_json
from supportbench.trainers.lora import split_accumulation

ACCELERATE = [sys.executable, "-m", "accelerate.commands.accelerate_cli"]  # the `accelerate` command of this Python


TWO_PROCESSES = 2


def _launched(args: list[str], cache: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "SUPPORTBENCH_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=timeout)


def _failure(result: subprocess.CompletedProcess) -> str:
    """What a failed launch said that is not a progress bar: errors first, then the end of stderr."""
    lines = [line for line in result.stderr.splitlines() if "it/s]" not in line and "s/it]" not in line]
    errors = [line for line in lines if any(word in line for word in ("Error", "Traceback", "terminate", "failed"))]
    return "\n".join([*errors[:20], "...", *lines[-40:]])


@pytest.mark.e2e
def test_accelerate_launch_trains_on_two_cpu_processes_with_the_same_steps(tiny_model_dir, tmp_path):
    config = {
        "model": str(tiny_model_dir),
        "template": "seed",
        "epochs": 1,
        "max_steps": -1,
        "batch_size": 2,
        "gradient_accumulation": 4,
        "max_train_examples": 40,
        "max_eval_examples": 8,
        "save_steps": 2,
        "logging_steps": 1,
    }
    config_file = tmp_path / "tiny.yaml"
    config_file.write_text(yaml.safe_dump(config))
    runs = {n: tmp_path / f"run{n}" for n in (1, TWO_PROCESSES)}
    for run in runs.values():
        small_split(tmp_path, run / "data")
    assert main(["train", "--out", str(runs[1]), "--config", str(config_file)]) == 0
    launched = _launched(
        [*ACCELERATE, "launch", "--multi_gpu", "--num_processes", str(TWO_PROCESSES), "-m", "supportbench", "train"]
        + ["--out", str(runs[TWO_PROCESSES]), "--config", str(config_file)],
        tmp_path / "cache",
    )
    assert launched.returncode == 0, _failure(launched)
    one, two = (read_json(runs[n] / "train.json") for n in (1, TWO_PROCESSES))
    assert two["processes"]["world_size"] == TWO_PROCESSES and two["processes"]["backend"] == "gloo"
    assert (
        two["processes"]["gradient_accumulation_per_process"] == 2 and two["processes"]["effective_batch_note"] is None
    )
    assert one["processes"]["effective_batch"] == two["processes"]["effective_batch"] == 8
    assert one["steps"] == two["steps"] == 5  # 40 examples / 8 per step, whatever the process count
    assert two["machine"]["world_size"] == TWO_PROCESSES
    assert launched.stdout.count("adapter      ") == 1  # only the main process reports
    adapters = sorted(
        p.relative_to(runs[TWO_PROCESSES]) for p in runs[TWO_PROCESSES].rglob("adapter_model.safetensors")
    )
    assert [str(p) for p in adapters if not str(p).startswith("checkpoints")] == ["adapter/adapter_model.safetensors"]
    assert not [p for p in runs[TWO_PROCESSES].rglob("*") if p.name.startswith(".")]  # no staged leftovers
    model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir), runs[TWO_PROCESSES] / "adapter"
    )
    assert any("lora_A" in name for name, _ in model.named_parameters())
    # a 2-process run killed after its step-4 checkpoint resumes from it, under 2 processes, to the same end
    interrupted = runs[TWO_PROCESSES]
    for finished in ("train.json", "adapter", "checkpoints/checkpoint-5"):
        shutil.rmtree(interrupted / finished) if (interrupted / finished).is_dir() else (
            interrupted / finished
        ).unlink()
    resumed = _launched(
        [sys.executable, "-m", "supportbench", "train", "--out", str(interrupted), "--config", str(config_file)]
        + ["--resume", "--num-processes", str(TWO_PROCESSES)],
        tmp_path / "cache",
    )
    assert resumed.returncode == 0, _failure(resumed)
    again = read_json(interrupted / "train.json")
    assert again["resumed_from"].endswith("checkpoint-4") and again["steps"] == 5
    assert again["processes"]["world_size"] == TWO_PROCESSES


def test_effective_batch_split_over_processes_and_the_reason_when_it_cannot_be_kept(tiny_model_dir):
    from helpers import tiny_config

    config = tiny_config(tiny_model_dir, batch_size=2, gradient_accumulation=4)
    assert split_accumulation(config, 1) == (4, None)
    assert split_accumulation(config, 4) == (1, None)
    accumulation, note = split_accumulation(config, 3)
    assert accumulation == 1 and "not a multiple of 3 processes" in note and "it is 6 instead" in note


@pytest.mark.e2e
def test_eval_on_two_cpu_processes_scores_like_one(tiny_run, tmp_path):
    one, two = (trained_copy(tiny_run, tmp_path / name) for name in ("one", "two"))
    summary = evaluate_run(one, EvalConfig(limit=6, gen_batch_size=2, max_new_tokens=8, ppl_limit=8, ppl_batch_size=2))
    launched = _launched(
        [sys.executable, "-m", "supportbench", "eval", "--run", str(two), "--num-processes", str(TWO_PROCESSES)]
        + [
            "--limit",
            "6",
            "--gen-batch-size",
            "2",
            "--max-new-tokens",
            "8",
            "--ppl-limit",
            "8",
            "--ppl-batch-size",
            "2",
        ],
        tmp_path / "fresh-cache",  # no base scores cached by the one-process eval
    )
    assert launched.returncode == 0, _failure(launched)
    parallel = read_json(two / "eval" / "metrics.json")
    assert summary["processes"] == 1 and parallel["processes"] == TWO_PROCESSES
    assert not parallel["base_scores"]["from_cache"]
    assert parallel["n"] == summary["n"]
    for side in ("base", "finetuned"):
        for metric, value in summary["metrics"][side].items():
            expected = None if value is None else pytest.approx(value, rel=1e-6)  # None: a check no reply had
            assert parallel["metrics"][side][metric] == expected, (side, metric)
    one_samples = (one / "eval" / "samples.jsonl").read_text()
    assert (two / "eval" / "samples.jsonl").read_text() == one_samples  # same replies, in the split's order
    assert read_json(two / "eval" / "stats.json") == read_json(one / "eval" / "stats.json")


def _adapter(folder: Path, rank: int) -> str:
    write_json(folder / "adapter_config.json", {"r": rank, "peft_type": "LORA"})
    return str(folder)


def test_vllm_model_args_raise_max_lora_rank_and_pass_parallel_sizes(tmp_path, monkeypatch):
    # the dtype is the device's choice, made once: a GPU that takes bf16 gets bfloat16
    monkeypatch.setattr(evaluator, "pick_device", lambda: types.SimpleNamespace(dtype_name="bfloat16"))
    config = EvalConfig(backend="vllm", tensor_parallel_size=2, data_parallel_size=4, max_new_tokens=77, seed=7)
    args = vllm_model_args("/models/base", _adapter(tmp_path / "r32", 32), config)
    assert args == {
        "pretrained": "/models/base",
        "dtype": "bfloat16",
        "tensor_parallel_size": 2,
        "data_parallel_size": 4,
        "batch_size": "auto",
        "max_gen_toks": 77,
        "seed": 7,
        "lora_local_path": str(tmp_path / "r32"),
        "max_lora_rank": 32,
    }
    assert vllm_model_args("/b", _adapter(tmp_path / "r20", 20), config)["max_lora_rank"] == 32  # next size vLLM takes
    assert "lora_local_path" not in vllm_model_args("/b", None, config)
    with pytest.raises(SupportBenchError, match="up to 512"):
        vllm_model_args("/b", _adapter(tmp_path / "r1024", 1024), config)


def test_vllm_backend_hands_those_arguments_to_lm_evals_vllm_model(tmp_path, monkeypatch):
    import lm_eval.api.registry

    seen = {}

    def fake_get_model(name):
        seen["name"] = name
        return lambda **kwargs: seen.setdefault("kwargs", kwargs)

    monkeypatch.setattr(lm_eval.api.registry, "get_model", fake_get_model)
    config = EvalConfig(backend="vllm")
    load_lm("/models/base", _adapter(tmp_path / "a", 32), config)
    assert seen["name"] == "vllm"
    kwargs = seen["kwargs"]
    assert (kwargs["pretrained"], kwargs["lora_local_path"], kwargs["max_lora_rank"]) == (
        "/models/base",
        str(tmp_path / "a"),
        32,
    )
    assert (kwargs["tensor_parallel_size"], kwargs["data_parallel_size"], kwargs["batch_size"]) == (1, 1, "auto")


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_vllm_backend_without_vllm_fails_before_any_work(tiny_run, tmp_path, capsys):
    run = trained_copy(tiny_run, tmp_path / "run")
    assert main(["eval", "--run", str(run), "--backend", "vllm", "--tensor-parallel-size", "2"]) == 2
    assert "--backend vllm needs vLLM, which is not installed" in capsys.readouterr().err
    assert not (run / "eval").exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--tensor-parallel-size", "2"], "tensor_parallel_size=2"),
        (["--num-processes", "0"], "--num-processes must be at least 1"),
        (["--accelerate-config", "ddp"], "add --num-processes N"),
        (["--num-processes", "2", "--accelerate-config", "nope"], "neither a bundled config"),
        (
            ["--num-processes", "2", "--backend", "vllm"],
            "--num-processes and accelerate launch are for the other backends",
        ),
    ],
)
def test_launch_flags_that_make_no_sense_are_refused(tiny_run, tmp_path, capsys, argv, message):
    run = trained_copy(tiny_run, tmp_path / "run")
    assert main(["eval", "--run", str(run), *argv]) == 2
    assert message in capsys.readouterr().err

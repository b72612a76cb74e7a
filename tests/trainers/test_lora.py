"""train: the LoRA recipe, presets, resume, the reply budget and the completion-only loss."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from helpers import fixture_rows, small_split, tiny_config, write_csv
from peft import PeftModel
from transformers import AutoModelForCausalLM

from supportbench.config import (
    TrainConfig,
    load_train_config,
    preset_names,
)
from supportbench.files import SupportBenchError, read_json
from supportbench.layout import RunDir
from supportbench.trainers.lora import train


@pytest.fixture
def run_with_data(tmp_path) -> Path:
    """A run folder with a small prepared split."""
    run = tmp_path / "run"
    small_split(tmp_path, run / "data")
    return run


def test_tiny_model_trains_into_a_complete_run_folder(tiny_model_dir, run_with_data):
    manifest = train(tiny_config(tiny_model_dir), run_with_data)
    for name in (
        "adapter/adapter_model.safetensors",
        "adapter/adapter_config.json",
        "train.json",
        "loss_history.json",
        "loss_curve.png",
        "train_config.json",
    ):
        assert (run_with_data / name).is_file(), name
    assert manifest["steps"] == 4 and manifest["tokens_seen"] > 0
    assert manifest["final_train_loss"] > 0 and manifest["final_eval_loss"] > 0
    assert manifest["parameters"]["trainable"] < manifest["parameters"]["total"]
    assert manifest["data"]["test"] == read_json(run_with_data / "data" / "manifest.json")["splits"]["test"]["sha256"]
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tuned = PeftModel.from_pretrained(base, run_with_data / "adapter")
    assert any("lora_A" in name for name, _ in tuned.named_parameters())
    with pytest.raises(SupportBenchError, match="already holds a finished run"):
        train(tiny_config(tiny_model_dir), run_with_data)
    assert train(tiny_config(tiny_model_dir), run_with_data, reuse=True)["steps"] == 4


def test_loss_is_on_completion_tokens_only(tiny_model_dir, run_with_data):
    from supportbench.device import pick_device
    from supportbench.models import load_model
    from supportbench.trainers.lora import SpeedKnobs, make_trainer

    model, tokenizer = load_model(str(tiny_model_dir))
    rows = [{"instruction": "please help me cancel order", "response": "Sure, I can help."}]
    trainer = make_trainer(
        tiny_config(tiny_model_dir),
        model,
        tokenizer,
        rows,
        [],
        run_with_data / "ck",
        pick_device(),
        SpeedKnobs(max_length=64),
    )
    example = trainer.train_dataset[0]
    prompt_len = len(tokenizer("### Customer: please help me cancel order\n### Support Agent:")["input_ids"])
    batch = trainer.data_collator([example])
    labels, input_ids = batch["labels"][0].tolist(), batch["input_ids"][0].tolist()
    assert len(labels) > prompt_len
    assert all(label == -100 for label in labels[:prompt_len])
    assert labels[prompt_len:] == input_ids[prompt_len:]
    assert labels[-1] == tokenizer.eos_token_id


@pytest.mark.parametrize(
    "overrides, error",
    [
        ({"lora_r": 0}, "lora_r=0"),
        ({"learning_rate": -1.0}, "learning_rate"),
        ({"lora_targets": []}, "lora_targets"),
    ],
)
def test_bad_config_values_are_rejected(overrides, error):
    with pytest.raises(SupportBenchError, match=error):
        TrainConfig(**overrides).validate()


def test_presets_and_user_yaml(tmp_path):
    assert {"ci", "cpu-best", "seed-exp1", "seed-exp2", "gemma3-270m"} <= set(preset_names())
    exp1 = load_train_config("seed-exp1")
    assert (exp1.lora_r, exp1.lora_alpha, exp1.learning_rate, exp1.epochs, exp1.effective_batch) == (
        16,
        32,
        2e-4,
        3,
        16,
    )
    assert exp1.lora_targets == ["q_proj", "v_proj"] and exp1.model == "tinyllama-1.1b-chat"
    exp2 = load_train_config("seed-exp2")
    assert (exp2.lora_r, exp2.lora_alpha, exp2.learning_rate, exp2.epochs) == (8, 16, 5e-5, 1)
    user = tmp_path / "mine.yaml"
    user.write_text(yaml.safe_dump({"learning_rate": 1e-4}))
    assert load_train_config("ci", str(user), max_steps=3).learning_rate == 1e-4
    user.write_text(yaml.safe_dump({"learnin_rate": 1e-4}))
    with pytest.raises(SupportBenchError, match="unknown config key.*learnin_rate"):
        load_train_config("ci", str(user))
    with pytest.raises(SupportBenchError, match="unknown preset"):
        load_train_config("no-such-preset")


def test_missing_lora_target_fails_before_training(tiny_model_dir, run_with_data):
    with pytest.raises(SupportBenchError, match=r"LoRA target\(s\) \['query_key_value'\] not found"):
        train(tiny_config(tiny_model_dir, lora_targets=["query_key_value"]), run_with_data)
    assert not (run_with_data / "checkpoints").exists()


def test_resume_without_checkpoint_is_refused(tiny_model_dir, run_with_data):
    with pytest.raises(SupportBenchError, match="no checkpoint to resume"):
        train(tiny_config(tiny_model_dir), run_with_data, resume=True)


def test_sigkill_then_resume_finishes_at_the_right_step(tiny_model_dir, run_with_data, tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({**tiny_config(tiny_model_dir, max_steps=40, save_steps=5).__dict__}))
    command = [sys.executable, "-m", "supportbench", "train", "--config", str(config), "--out", str(run_with_data)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    checkpoints = run_with_data / "checkpoints"
    deadline = time.time() + 120
    while time.time() < deadline and not list(checkpoints.glob("checkpoint-*/trainer_state.json")):
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert list(checkpoints.glob("checkpoint-*")), "no checkpoint was written before the kill"
    partial = checkpoints / "checkpoint-999"  # what a kill in the middle of a save leaves behind
    partial.mkdir()
    (partial / "trainer_state.json").write_text('{"global_step": 9')
    assert not (run_with_data / "train.json").exists() and not (run_with_data / "adapter").exists()
    with pytest.raises(SupportBenchError, match="pass --resume"):
        train(load_train_config(None, str(config)), run_with_data)
    manifest = train(load_train_config(None, str(config)), run_with_data, resume=True)
    assert manifest["resumed_from"] is not None
    assert manifest["steps"] == 40


def test_train_preconditions_fail_before_any_file_is_written(tiny_model_dir, tmp_path):
    data = str(write_csv(tmp_path / "d.csv", fixture_rows()))
    with pytest.raises(SupportBenchError, match="no checkpoint to resume"):
        train(tiny_config(tiny_model_dir), tmp_path / "resume", resume=True, data=data)
    with pytest.raises(SupportBenchError, match=r"LoRA target\(s\) \['query_key_value'\] not found"):
        train(tiny_config(tiny_model_dir, lora_targets=["query_key_value"]), tmp_path / "targets", data=data)
    assert not (tmp_path / "resume").exists() and not (tmp_path / "targets").exists()
    assert load_train_config() == load_train_config("ci")  # no preset means the ci preset, as --help says


def test_training_records_the_reply_budget_and_that_completions_end_their_turn(tiny_run):
    manifest = read_json(RunDir(tiny_run).manifest_path)
    budget, turn_end = manifest["reply_tokens"], manifest["turn_end"]
    assert manifest["model_origin"] == "folder"  # where the model name resolved from
    assert budget["max_new_tokens"] % 8 == 0 and budget["max_new_tokens"] >= budget["p99"]
    assert turn_end["examples_ending_with_it"] + turn_end["cut_at_max_length"] == manifest["train_examples"]
    assert turn_end["examples_ending_with_it"] > 0


def test_completions_without_the_end_of_turn_token_are_refused(tiny_model_dir):
    from transformers import AutoTokenizer

    from supportbench.trainers.lora import check_turn_end

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    eos = tokenizer.eos_token_id
    fine = {"input_ids": [[5, 6, eos], [5, 6, 7, 8]], "labels": [[-100, 6, eos], [-100, 6, 7, 8]]}
    assert check_turn_end(fine, tokenizer, max_length=4) == {
        "token": tokenizer.eos_token,
        "examples_ending_with_it": 1,
        "cut_at_max_length": 1,  # cut at max_length: its end-of-turn token was truncated away
    }
    with pytest.raises(SupportBenchError, match="do not end their completion with the end-of-turn token"):
        check_turn_end({"input_ids": [[5, 6, 7]], "labels": [[-100, 6, 7]]}, tokenizer, max_length=8)


def test_logits_only_from_the_first_trained_position_give_trls_loss(tiny_model_dir, tiny_run):
    from supportbench.device import pick_device
    from supportbench.models import load_model
    from supportbench.trainers.lora import SpeedKnobs, make_trainer

    rows = RunDir(tiny_run).data.rows("train")[:4]
    losses, kept = [], []
    for completion_logits_only in (False, True):
        torch.manual_seed(0)
        model, tokenizer = load_model(str(tiny_model_dir))
        knobs = SpeedKnobs(max_length=128, completion_logits_only=completion_logits_only)
        config = tiny_config(tiny_model_dir)
        trainer = make_trainer(config, model, tokenizer, rows, [], tiny_run / "unused", pick_device(), knobs)
        batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
        n = (batch["labels"][:, 1:] != -100).sum()
        loss, outputs = trainer.compute_loss(trainer.model, batch, return_outputs=True, num_items_in_batch=n)
        losses.append(loss.item())
        kept.append(getattr(outputs, "logits", None))
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)
    # the prompt positions before the first reply token got no logits
    assert kept[1].shape[1] < batch["input_ids"].shape[1]


def test_weights_and_checkpoints_follow_the_umask(tiny_model_dir, tmp_path):
    data = tmp_path / "run" / "data"
    small_split(tmp_path, data)
    previous = os.umask(0o002)
    try:
        train(tiny_config(tiny_model_dir, max_steps=2, save_steps=2), tmp_path / "run")
    finally:
        os.umask(previous)
    weights = [*(tmp_path / "run" / "adapter").rglob("*"), *(tmp_path / "run" / "checkpoints").rglob("*")]
    modes = {stat.S_IMODE(p.stat().st_mode) for p in weights if p.is_file()}
    assert any(p.name.endswith(".safetensors") for p in weights) and modes == {0o664}


def test_a_loss_that_becomes_non_finite_fails_the_run(tiny_model_dir, tmp_path):
    small_split(tmp_path, tmp_path / "run" / "data")
    with pytest.raises(SupportBenchError, match="the training (loss|grad_norm|eval_loss) became (nan|inf)"):
        train(tiny_config(tiny_model_dir, learning_rate=1e30, max_steps=4), tmp_path / "run")
    assert not (tmp_path / "run" / "train.json").exists()


def test_resume_skips_a_checkpoint_whose_optimizer_state_is_truncated(tiny_model_dir, tmp_path):
    from supportbench.trainers.lora import last_complete_checkpoint

    small_split(tmp_path, tmp_path / "run" / "data")
    train(tiny_config(tiny_model_dir, max_steps=4, save_steps=2), tmp_path / "run")
    checkpoints = tmp_path / "run" / "checkpoints"
    assert last_complete_checkpoint(checkpoints).endswith("checkpoint-4")
    optimizer = checkpoints / "checkpoint-4" / "optimizer.pt"
    optimizer.write_bytes(optimizer.read_bytes()[: optimizer.stat().st_size // 2])
    assert last_complete_checkpoint(checkpoints).endswith("checkpoint-2")


def test_the_adapter_config_lists_its_target_modules_in_a_fixed_order(tiny_model_dir, tmp_path):
    small_split(tmp_path, tmp_path / "run" / "data")
    train(tiny_config(tiny_model_dir, lora_targets="all-linear", max_steps=1, save_steps=1), tmp_path / "run")
    targets = read_json(tmp_path / "run" / "adapter" / "adapter_config.json")["target_modules"]
    assert len(targets) >= 5 and targets == sorted(targets)  # PEFT's set order would change with the hash seed


def test_the_summary_shows_the_flop_account_and_still_reads_a_run_trained_before_it(tiny_run):
    from supportbench.trainers.lora import summary_lines

    manifest = read_json(tiny_run / "train.json")
    lines = summary_lines(manifest, tiny_run)
    flop_line = next(x for x in lines if x.startswith("flops"))
    assert f"({manifest['flops']['matmul']['gflops']} GFLOP/s)" in flop_line
    older = {k: v for k, v in manifest.items() if k not in ("flops", "method", "mix_examples")}
    assert [x for x in summary_lines(older, tiny_run) if not x.startswith("flops")] == [
        x for x in lines if not x.startswith("flops")
    ]
    assert not any(x.startswith("flops") for x in summary_lines(older, tiny_run))

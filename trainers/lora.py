"""The train stage: a base model plus the prepared split become a LoRA adapter in a run folder."""

from __future__ import annotations

import dataclasses
import io
import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.data import DataConfig, load_split, prepare, resolve_source
from harness.device import DeviceChoice, peak_memory, pick_device
from harness.io import SupportBenchError, atomic_write_bytes, read_json, staged_dir, write_json
from harness.models import load_model, resolve
from harness.templates import Turn, get_template
from trainers.config import TrainConfig

ADAPTER_DIR = "adapter"
CHECKPOINT_DIR = "checkpoints"
DATA_DIR = "data"
RUN_MANIFEST = "train.json"
RUN_CONFIG = "train_config.json"


@dataclass(frozen=True)
class SpeedKnobs:
    """The training-speed choices that the throughput benchmark varies one at a time."""

    completion_only: bool = True  # prompt-completion data, loss on the reply only
    gradient_checkpointing: bool = False
    group_by_length: bool = True
    max_length: int = 1024


def knobs_for(device: DeviceChoice, max_length: int) -> SpeedKnobs:
    """Our recipe on this device: checkpointing only where the device asks for it, length-grouped batches."""
    return SpeedKnobs(True, device.gradient_checkpointing, True, max_length)


def ensure_data(run_dir: Path, data: str | None) -> Path:
    """Return the run's prepared-data folder, preparing it first when the run has none."""
    data_dir = run_dir / DATA_DIR
    if not (data_dir / "manifest.json").is_file():
        manifest = prepare(DataConfig(source=resolve_source(data)), data_dir)
        print(f"prepared {manifest['counts']['kept']} rows into {data_dir}")
    return data_dir


def build_examples(rows: list[dict[str, Any]], template_name: str, tokenizer: Any) -> list[dict[str, str]]:
    """Prompt-completion pairs in the chosen template."""
    template = get_template(template_name)
    return [
        {
            "prompt": template.prompt([Turn(r["instruction"])], tokenizer),
            "completion": template.completion(r["response"], tokenizer),
        }
        for r in rows
    ]


def token_lengths(examples: list[dict[str, str]], tokenizer: Any) -> list[int]:
    """Tokens per example (prompt plus completion)."""
    return [len(ids) for ids in tokenizer([e["prompt"] + e["completion"] for e in examples])["input_ids"]]


def choose_max_length(lengths: list[int], percentile: float) -> tuple[int, dict[str, Any]]:
    """Max length at the given percentile of the measured distribution, rounded up to a multiple of 8."""
    ordered = sorted(lengths)
    pick = lambda q: ordered[min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1)]  # noqa: E731
    max_length = int(math.ceil(pick(percentile) / 8) * 8)
    stats = {
        "p50": pick(50),
        "p90": pick(90),
        "p99": pick(99),
        "max": ordered[-1],
        "percentile": percentile,
        "max_length": max_length,
        "truncated_examples": sum(n > max_length for n in lengths),
    }
    return max_length, stats


def check_lora_targets(model: Any, targets: list[str] | str) -> None:
    """Fail early when a named LoRA target matches no linear layer of the model."""
    if targets == "all-linear":
        return
    import torch

    linear = {name.rsplit(".", 1)[-1] for name, mod in model.named_modules() if isinstance(mod, torch.nn.Linear)}
    missing = [t for t in targets if t not in linear]
    if missing:
        raise SupportBenchError(f"LoRA target(s) {missing} not found in the model; its linear layers are {sorted(linear)}")


def make_trainer(
    config: TrainConfig,
    model: Any,
    tokenizer: Any,
    train_rows: list[dict[str, Any]],
    eval_rows: list[dict[str, Any]],
    out_dir: Path,
    device: DeviceChoice,
    knobs: SpeedKnobs,
    callbacks: list[Any] | None = None,
) -> Any:
    """An SFTTrainer with LoRA, configured from the typed config, the device choice and the speed knobs."""
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    template = config.template or resolve(config.model).template

    def to_dataset(rows: list[dict[str, Any]]) -> Dataset:
        examples = build_examples(rows, template, tokenizer)
        if not knobs.completion_only:
            examples = [{"text": e["prompt"] + e["completion"]} for e in examples]
        return Dataset.from_list(examples)

    args = SFTConfig(
        output_dir=str(out_dir),
        learning_rate=config.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=config.warmup_ratio,  # a float below 1 is a share of all steps
        weight_decay=config.weight_decay,
        num_train_epochs=config.epochs,
        max_steps=config.max_steps,
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size,
        gradient_accumulation_steps=config.gradient_accumulation,
        gradient_checkpointing=knobs.gradient_checkpointing,
        bf16=device.bf16,
        fp16=device.fp16,
        use_cpu=device.device == "cpu",
        train_sampling_strategy="group_by_length" if knobs.group_by_length else "random",
        max_length=knobs.max_length,
        completion_only_loss=knobs.completion_only,
        packing=False,  # packing and padding-free leak attention across examples without FlashAttention
        padding_free=False,
        eval_strategy="steps" if config.eval_steps else ("epoch" if eval_rows else "no"),
        eval_steps=config.eval_steps,
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=2,
        logging_steps=config.logging_steps,
        include_num_input_tokens_seen="non_padding",
        report_to="none",
        seed=config.seed,
        data_seed=config.seed,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    peft_config = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=config.lora_targets,
        task_type="CAUSAL_LM",
    )
    return SFTTrainer(
        model=model,
        args=args,
        processing_class=tokenizer,
        peft_config=peft_config,
        train_dataset=to_dataset(train_rows),
        eval_dataset=to_dataset(eval_rows) if eval_rows else None,
        callbacks=callbacks,
    )


def _subset(rows: list[dict[str, Any]], limit: int | None, seed: int) -> list[dict[str, Any]]:
    if limit is None or limit >= len(rows):
        return rows
    return sorted(random.Random(seed).sample(rows, limit), key=lambda r: r["source_row"])


def _package_versions() -> dict[str, str]:
    import importlib.metadata as md

    names = ("supportbench", "torch", "transformers", "peft", "trl", "accelerate", "datasets", "lm_eval")
    out = {}
    for name in names:
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = "not installed"
    return out


def last_complete_checkpoint(folder: Path) -> str | None:
    """The newest checkpoint whose trainer_state.json (written last by the Trainer) is complete; a kill mid-save
    leaves a newer, partial checkpoint that must be skipped."""
    numbered = [(int(p.name.split("-")[1]), p) for p in folder.glob("checkpoint-*") if p.name.split("-")[1].isdigit()]
    for _, checkpoint in sorted(numbered, reverse=True):
        try:
            json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        return str(checkpoint)
    return None


def _start_or_resume(run_dir: Path, config: TrainConfig, resume: bool) -> str | None:
    if (run_dir / RUN_MANIFEST).is_file():
        raise SupportBenchError(f"{run_dir} already holds a finished run; choose another --out (or --reuse it)")
    checkpoints = run_dir / CHECKPOINT_DIR
    last = last_complete_checkpoint(checkpoints) if checkpoints.is_dir() else None
    stored = run_dir / RUN_CONFIG
    if resume:
        if last is None:
            raise SupportBenchError(f"--resume: {run_dir} has no checkpoint to resume from")
        saved = read_json(stored)
        diff = sorted(k for k, v in dataclasses.asdict(config).items() if saved.get(k) != v)
        if diff:
            raise SupportBenchError(f"--resume: the config differs from the interrupted run's in {diff}")
        return last
    if last is not None:
        raise SupportBenchError(f"{run_dir} has checkpoints of an unfinished run; pass --resume to continue it")
    write_json(stored, dataclasses.asdict(config))
    return None


def save_loss_curve(history: list[dict[str, Any]], path: Path) -> None:
    """Plot train and eval loss against step into a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=110)
    for key, label in (("loss", "train loss"), ("eval_loss", "validation loss")):
        points = [(h["step"], h[key]) for h in history if key in h]
        if points:
            ax.plot(*zip(*points, strict=True), marker="o" if key == "eval_loss" else None, label=label)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())


def _finished_run(run_dir: Path, config: TrainConfig) -> dict[str, Any]:
    manifest = read_json(run_dir / RUN_MANIFEST)
    diff = sorted(k for k, v in dataclasses.asdict(config).items() if manifest["config"].get(k) != v)
    if diff:
        raise SupportBenchError(f"--reuse: {run_dir} holds a finished run with a different config ({diff})")
    print(f"reusing the finished run in {run_dir}")
    return manifest


def train(
    config: TrainConfig, run_dir: Path, resume: bool = False, data: str | None = None, reuse: bool = False
) -> dict[str, Any]:
    """Run LoRA SFT into run_dir and return the run manifest; with reuse, return a finished identical run as is."""
    import torch
    from transformers.trainer_callback import ProgressCallback

    from trainers.progress import ProgressBar

    run_dir = Path(run_dir)
    if reuse and (run_dir / RUN_MANIFEST).is_file():
        return _finished_run(run_dir, config)
    template = config.template or resolve(config.model).template
    get_template(template)  # an unknown template fails here, before any data or model work
    data_dir = ensure_data(run_dir, data)
    device = pick_device()
    last_checkpoint = _start_or_resume(run_dir, config, resume)
    train_rows = _subset(load_split(data_dir, "train"), config.max_train_examples, config.seed)
    eval_rows = _subset(load_split(data_dir, "validation"), config.max_eval_examples, config.seed)
    model, tokenizer = load_model(config.model, device)
    check_lora_targets(model, config.lora_targets)
    lengths = token_lengths(build_examples(train_rows, template, tokenizer), tokenizer)
    max_length, length_stats = choose_max_length(lengths, config.max_length_percentile)
    if config.max_length:
        max_length, length_stats["max_length"] = config.max_length, config.max_length
        length_stats["truncated_examples"] = sum(n > max_length for n in lengths)
    progress = ProgressBar()
    trainer = make_trainer(
        config,
        model,
        tokenizer,
        train_rows,
        eval_rows,
        run_dir / CHECKPOINT_DIR,
        device,
        knobs_for(device, max_length),
        callbacks=[progress],
    )
    trainer.remove_callback(ProgressCallback)
    started = time.perf_counter()
    trainer.train(resume_from_checkpoint=last_checkpoint)
    wall = time.perf_counter() - started
    history = trainer.state.log_history
    evals = [h for h in history if "eval_loss" in h]
    if eval_rows and (not evals or evals[-1]["step"] != trainer.state.global_step):
        trainer.evaluate()
        evals = [h for h in history if "eval_loss" in h]
    eval_time = sum(h.get("eval_runtime", 0.0) for h in evals)
    with staged_dir(run_dir / ADAPTER_DIR) as tmp:
        trainer.model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    write_json(run_dir / "loss_history.json", history)
    save_loss_curve(history, run_dir / "loss_curve.png")
    trainable, total = trainer.model.get_nb_trainable_parameters()
    train_losses = [h["loss"] for h in history if "loss" in h] or [h["train_loss"] for h in history if "train_loss" in h]
    tokens = int(trainer.state.num_input_tokens_seen)
    manifest = {
        "config": dataclasses.asdict(config),
        "template": template,
        "resumed_from": last_checkpoint,
        "data": {
            "dir": DATA_DIR,
            **{k: read_json(data_dir / "manifest.json")["splits"][k]["sha256"] for k in ("train", "validation", "test")},
        },
        "train_examples": len(train_rows),
        "eval_examples": len(eval_rows),
        "token_lengths": length_stats,
        "device": {
            "device": device.device,
            "dtype": device.dtype_name,
            "attn": device.attn_implementation,
            "gradient_checkpointing": device.gradient_checkpointing,
            "torch_threads": torch.get_num_threads(),
        },
        "packages": _package_versions(),
        "parameters": {"trainable": int(trainable), "total": int(total), "trainable_share": round(trainable / total, 5)},
        "steps": trainer.state.global_step,
        "wall_time_s": round(wall, 1),
        "tokens_seen": tokens,
        "eval_time_s": round(eval_time, 1),
        "tokens_per_s": round((tokens - progress.start_tokens) / (wall - eval_time), 1),  # this session's tokens only
        "memory": peak_memory(),
        "final_train_loss": train_losses[-1] if train_losses else None,
        "final_eval_loss": evals[-1]["eval_loss"] if evals else None,
        "best_eval_loss": min((h["eval_loss"] for h in evals), default=None),
        "adapter": ADAPTER_DIR,
    }
    write_json(run_dir / RUN_MANIFEST, manifest)
    return manifest


def summary_lines(manifest: dict[str, Any], run_dir: Path) -> list[str]:
    """A one-screen summary of a finished training run."""
    p, c = manifest["parameters"], manifest["config"]
    return [
        f"run          {run_dir}",
        f"model        {c['model']} ({manifest['template']} template) "
        f"on {manifest['device']['device']} {manifest['device']['dtype']}",
        f"lora         r={c['lora_r']} alpha={c['lora_alpha']} targets={c['lora_targets']} lr={c['learning_rate']}",
        f"parameters   {p['trainable']:,} trainable of {p['total']:,} ({p['trainable_share']:.2%})",
        f"data         {manifest['train_examples']} train / {manifest['eval_examples']} validation examples, "
        f"max_length {manifest['token_lengths']['max_length']} ({manifest['token_lengths']['truncated_examples']} truncated)",
        f"steps        {manifest['steps']} in {manifest['wall_time_s']}s ({manifest['eval_time_s']}s eval), "
        f"{manifest['tokens_seen']:,} tokens, {manifest['tokens_per_s']} train tok/s",
        f"loss         final train {manifest['final_train_loss']}, final eval {manifest['final_eval_loss']}",
        f"memory       peak RSS {manifest['memory']['peak_rss_mib']} MiB",
        f"adapter      {run_dir / manifest['adapter']}",
    ]

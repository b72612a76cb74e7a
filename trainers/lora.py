"""The train stage as a recipe: setup (every check first, then data, model, trainer), fit, save."""

from __future__ import annotations

import dataclasses
import json
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from supportbench.bench.flops import line, matmul_limit, training_account
from supportbench.config import DataConfig, TrainConfig, resolve_source
from supportbench.decoding import reply_budget
from supportbench.device import DeviceChoice, machine_info, peak_memory, pick_device, process_state
from supportbench.files import (
    SupportBenchError,
    atomic_write_bytes,
    ensure_writable_dir,
    folder_lock,
    read_json,
    staged_dir,
    write_json,
)
from supportbench.launch import world_size
from supportbench.layout import SPLITS, RunDir, SplitDir
from supportbench.metrics import token_cap
from supportbench.models import load_model, model_origin, model_path, resolve
from supportbench.prepare.dataset import prepare
from supportbench.reports.plots import loss_curve_png
from supportbench.templates import get_template, row_turns


@dataclass(frozen=True)
class SpeedKnobs:
    """The training-speed choices that the throughput benchmark varies one at a time; defaults are ours."""

    completion_only: bool = True  # prompt-completion data, loss on the reply only
    gradient_checkpointing: bool = False  # CPU RAM is plentiful for these models; recomputation only costs time
    group_by_length: bool = True
    max_length: int = 1024
    completion_logits_only: bool = True  # the LM head runs from the first trained position only (see train_throughput)


def ensure_data(run: RunDir, data: str | None, mix: list[str] | None = None) -> SplitDir:
    """The run's prepared split (with the config's mix), preparing it first when the run has none."""
    if not run.data.is_prepared:
        manifest = prepare(DataConfig(source=resolve_source(data), mix=list(mix or [])), run.data.path)
        print(f"prepared {manifest['counts']['kept']} rows into {run.data.path}")
    prepared_mix = run.data.manifest()["config"].get("mix") or []
    if mix is not None and prepared_mix != list(mix):
        raise SupportBenchError(
            f"{run.data.path} was prepared with mix {prepared_mix}, not the config's {list(mix)}; choose another --out"
        )
    return run.data


def build_examples(rows: list[dict[str, Any]], template_name: str, tokenizer: Any) -> list[dict[str, str]]:
    """Prompt-completion pairs in the chosen template."""
    template = get_template(template_name)
    return [
        {
            "prompt": template.prompt(row_turns(r), tokenizer),
            "completion": template.completion(r["response"], tokenizer),
        }
        for r in rows
    ]


def token_lengths(examples: list[dict[str, str]], tokenizer: Any) -> list[int]:
    """Tokens per example (prompt plus completion)."""
    return [len(ids) for ids in tokenizer([e["prompt"] + e["completion"] for e in examples])["input_ids"]]


def reply_token_lengths(examples: list[dict[str, str]], tokenizer: Any) -> list[int]:
    """Tokens the model must generate per example: the completion with its end-of-turn token (TRL appends the EOS
    token to a completion that does not end with it)."""
    eos = tokenizer.eos_token or ""
    completions = [e["completion"] if e["completion"].endswith(eos) else e["completion"] + eos for e in examples]
    return [len(ids) for ids in tokenizer(completions, add_special_tokens=False)["input_ids"]]


def check_turn_end(dataset: Any, tokenizer: Any, max_length: int) -> dict[str, Any]:
    """Check that every tokenized training example that fits max_length ends its trained tokens with the EOS token,
    so the model learns to end its turn; examples cut at max_length lose it and are counted."""
    ends = [
        (len(ids) < max_length, labels[-1])
        for ids, labels in zip(dataset["input_ids"], dataset["labels"], strict=True)
    ]
    missing = sum(fits and last != tokenizer.eos_token_id for fits, last in ends)
    if missing:
        raise SupportBenchError(
            f"{missing} training examples do not end their completion with the end-of-turn token "
            f"{tokenizer.eos_token!r}: the model would not learn to stop; check the template and tokenizer"
        )
    fitting = sum(fits for fits, _ in ends)
    return {"token": tokenizer.eos_token, "examples_ending_with_it": fitting, "cut_at_max_length": len(ends) - fitting}


def completion_logits_trainer(base: type) -> type:
    """`base` (TRL's SFTTrainer) with a loss whose LM head runs only from the batch's first trained position: the
    prompt positions before it need no logits. The loss equals TRL's (summed token NLL over the same count)."""
    import torch.nn.functional as F

    class CompletionLogitsTrainer(base):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            targets = inputs["labels"][:, 1:]
            trained = (targets != -100).any(dim=0).nonzero()
            first = int(trained[0]) if len(trained) else targets.size(1) - 1
            outputs = model(
                input_ids=inputs["input_ids"],
                attention_mask=inputs["attention_mask"],
                use_cache=False,
                logits_to_keep=targets.size(1) + 1 - first,  # hidden positions first .. end
            )
            targets = targets[:, first:]
            logits = outputs.logits[:, :-1]  # the last position predicts nothing
            loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100, reduction="sum")
            loss = loss / (
                num_items_in_batch if num_items_in_batch is not None else (targets != -100).sum().clamp(min=1)
            )
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                loss = loss * self.accelerator.num_processes  # as TRL: the count spans every process, DDP averages
            return (loss, outputs) if return_outputs else loss

    return CompletionLogitsTrainer


def choose_max_length(lengths: list[int], q: float) -> tuple[int, dict[str, Any]]:
    """Max length at the q-th percentile of the measured distribution, rounded up to a multiple of 8."""
    max_length = token_cap(lengths, q)
    stats = {
        **{f"p{p}": float(np.percentile(lengths, p)) for p in (50, 90, 99)},
        "max": max(lengths),
        "percentile": q,
        "max_length": max_length,
        "truncated_examples": sum(n > max_length for n in lengths),
    }
    return max_length, stats


def check_lora_targets(model_dir: str, targets: list[str] | str) -> None:
    """Fail before any work when a named LoRA target matches no linear layer (checked on weightless meta tensors)."""
    if targets == "all-linear":
        return
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.random.fork_rng(), torch.device("meta"):  # leaves the RNG, hence training, exactly as it was
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir))
    linear = {name.rsplit(".", 1)[-1] for name, mod in model.named_modules() if isinstance(mod, torch.nn.Linear)}
    missing = [t for t in targets if t not in linear]
    if missing:
        raise SupportBenchError(
            f"LoRA target(s) {missing} not found in the model; its linear layers are {sorted(linear)}"
        )


def split_accumulation(config: TrainConfig, processes: int) -> tuple[int, str | None]:
    """Micro-batches per process per optimizer step that keep the config's effective batch over `processes` processes,
    and why not when it cannot be kept exactly."""
    per_round = config.batch_size * processes
    if config.effective_batch % per_round == 0:
        return config.effective_batch // per_round, None
    accumulation = max(1, round(config.effective_batch / per_round))
    return accumulation, (
        f"the effective batch {config.effective_batch} is not a multiple of {processes} processes x micro-batch "
        f"{config.batch_size}; it is {accumulation * per_round} instead"
    )


def trainer_arguments(config: TrainConfig, device: DeviceChoice, out_dir: Path) -> dict[str, Any]:
    """The TrainingArguments that SFT and DPO share: schedule, precision, checkpoints, logging and seeds."""
    return {
        "output_dir": str(out_dir),
        "learning_rate": config.learning_rate,
        "lr_scheduler_type": "cosine",
        "warmup_steps": config.warmup_ratio,  # a float below 1 is a share of all steps
        "weight_decay": config.weight_decay,
        "num_train_epochs": config.epochs,
        "max_steps": config.max_steps,
        "per_device_train_batch_size": config.batch_size,
        "bf16": device.bf16,
        "fp16": device.fp16,
        "use_cpu": device.device == "cpu",
        "save_strategy": "steps",
        "save_steps": config.save_steps,
        "save_total_limit": 2,
        "logging_steps": config.logging_steps,
        "include_num_input_tokens_seen": "non_padding",
        "report_to": "none",
        "seed": config.seed,
        "data_seed": config.seed,
        "dataloader_num_workers": 0,
        "disable_tqdm": True,
    }


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
        **trainer_arguments(config, device, out_dir),
        per_device_eval_batch_size=config.batch_size,
        gradient_accumulation_steps=split_accumulation(config, world_size())[0],
        gradient_checkpointing=knobs.gradient_checkpointing,
        train_sampling_strategy="group_by_length" if knobs.group_by_length else "random",
        max_length=knobs.max_length,
        completion_only_loss=knobs.completion_only,
        packing=False,  # packing and padding-free leak attention across examples without FlashAttention
        padding_free=False,
        eval_strategy="steps" if config.eval_steps else ("epoch" if eval_rows else "no"),
        eval_steps=config.eval_steps,
    )
    peft_config = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=config.lora_targets,
        task_type="CAUSAL_LM",
    )
    trainer_class = completion_logits_trainer(SFTTrainer) if knobs.completion_logits_only else SFTTrainer
    return trainer_class(
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


def _checkpoint_intact(checkpoint: Path) -> bool:
    """True when trainer_state.json (written last by the Trainer) parses, every torch file (optimizer, scheduler,
    RNG state) is a whole zip archive, and every safetensors header matches its file's size."""
    import zipfile

    from safetensors import SafetensorError, safe_open

    try:
        json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))
        for path in checkpoint.glob("*.pt*"):
            with zipfile.ZipFile(path) as archive:
                if archive.testzip() is not None:
                    return False
        for path in checkpoint.glob("*.safetensors"):
            with safe_open(str(path), framework="pt"):
                pass
    except (OSError, ValueError, zipfile.BadZipFile, SafetensorError):
        return False
    return True


def _sort_target_modules(config: Path) -> None:
    """PEFT writes target_modules in set order, which changes with each process's hash seed; sorted, the same
    training writes the same adapter_config.json bytes."""
    settings = json.loads(config.read_text(encoding="utf-8"))
    if isinstance(settings.get("target_modules"), list):
        settings["target_modules"] = sorted(settings["target_modules"])
        config.write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def last_complete_checkpoint(folder: Path) -> str | None:
    """The newest intact checkpoint; a kill mid-save, or a damaged file, leaves a newer one that must be skipped."""
    numbered = [(int(p.name.split("-")[1]), p) for p in folder.glob("checkpoint-*") if p.name.split("-")[1].isdigit()]
    for _, checkpoint in sorted(numbered, reverse=True):
        if _checkpoint_intact(checkpoint):
            return str(checkpoint)
        print(f"skipping the damaged or partial checkpoint {checkpoint}")
    return None


def _config_diff(config: TrainConfig, stored: dict[str, Any]) -> list[str]:
    """The settings that differ from a stored run's; one the run predates counts as its default."""
    defaults = dataclasses.asdict(TrainConfig())
    return sorted(k for k, v in dataclasses.asdict(config).items() if stored.get(k, defaults[k]) != v)


class LoRARecipe:
    """One LoRA run into a run folder: `setup`, `fit` and `save`, with device and precision decided once."""

    def __init__(self, config: TrainConfig, run: RunDir, resume: bool = False, data: str | None = None):
        self.config, self.run, self.resume, self.data = config, run, resume, data
        self.device: DeviceChoice = pick_device()
        self.template = config.template or resolve(config.model).template

    def _checkpoint_to_resume(self) -> str | None:
        """Check the folder's state against --resume; return the checkpoint to continue from, if any."""
        run = self.run
        if run.is_finished:
            raise SupportBenchError(f"{run.path} already holds a finished run; choose another --out (or --reuse it)")
        last = last_complete_checkpoint(run.checkpoints) if run.checkpoints.is_dir() else None
        if not self.resume:
            if last is not None:
                raise SupportBenchError(
                    f"{run.path} has checkpoints of an unfinished run; pass --resume to continue it"
                )
            return None
        if last is None:
            raise SupportBenchError(f"--resume: {run.path} has no checkpoint to resume from")
        diff = _config_diff(self.config, read_json(run.config_path))
        if diff:
            raise SupportBenchError(f"--resume: the config differs from the interrupted run's in {diff}")
        return last

    def setup(self) -> None:
        """Check every precondition (no file written, no weights loaded), then prepare data, model and trainer."""
        from transformers.trainer_callback import ProgressCallback

        from supportbench.trainers.callbacks import CheckpointModes, NonFiniteLoss, ProgressBar

        config = self.config
        get_template(self.template)
        self.last_checkpoint = self._checkpoint_to_resume()
        check_lora_targets(model_path(config.model), config.lora_targets)
        ensure_writable_dir(self.run.path)  # the first write: creates the run folder
        self.processes = process_state()
        with self.processes.main_process_first():  # one process prepares the split; the others then read it
            split = ensure_data(self.run, self.data, config.mix)
        if self.last_checkpoint is None and self.processes.is_main_process:
            write_json(self.run.config_path, dataclasses.asdict(config))
        self.accumulation, self.batch_note = split_accumulation(config, self.processes.num_processes)
        if self.batch_note and self.processes.is_main_process:
            print(f"warning: {self.batch_note} (recorded in train.json)", flush=True)
        self.mix_rows = split.mix_rows()
        self.train_rows = _subset(split.rows("train"), config.max_train_examples, config.seed) + self.mix_rows
        self.eval_rows = _subset(split.rows("validation"), config.max_eval_examples, config.seed)
        model, self.tokenizer = load_model(config.model, self.device)
        examples = build_examples(self.train_rows, self.template, self.tokenizer)
        lengths = token_lengths(examples, self.tokenizer)
        self.reply_tokens = reply_budget(reply_token_lengths(examples, self.tokenizer))
        max_length, self.length_stats = choose_max_length(lengths, config.max_length_percentile)
        if config.max_length:
            max_length, self.length_stats["max_length"] = config.max_length, config.max_length
            self.length_stats["truncated_examples"] = sum(n > max_length for n in lengths)
        self.progress = ProgressBar()
        self.trainer = make_trainer(
            config,
            model,
            self.tokenizer,
            self.train_rows,
            self.eval_rows,
            self.run.checkpoints,
            self.device,
            SpeedKnobs(max_length=max_length),
            callbacks=[self.progress, CheckpointModes(), NonFiniteLoss()],
        )
        self.trainer.remove_callback(ProgressCallback)
        self.turn_end = check_turn_end(self.trainer.train_dataset, self.tokenizer, max_length)

    def fit(self) -> None:
        """Train (from the checkpoint when resuming), then make sure the last step has a validation loss."""
        started = time.perf_counter()
        self.trainer.train(resume_from_checkpoint=self.last_checkpoint)
        self.wall_s = time.perf_counter() - started
        history = self.trainer.state.log_history
        evals = [h for h in history if "eval_loss" in h]
        if self.eval_rows and (not evals or evals[-1]["step"] != self.trainer.state.global_step):
            self.trainer.evaluate()

    def extra_record(self) -> dict[str, Any]:
        """What this method adds to train.json (SFT: its method)."""
        return {"method": "sft"}

    def save(self) -> dict[str, Any]:
        """Write the adapter, loss history and curve, then train.json last, from the main process only; return the
        manifest (every process)."""
        run, state = self.run, self.trainer.state
        history = state.log_history
        # every process: FSDP gathers shards
        weights = self.trainer.accelerator.get_state_dict(self.trainer.model_wrapped)
        if self.processes.is_main_process:
            with staged_dir(run.adapter) as tmp:
                self.trainer.model.save_pretrained(tmp, state_dict=weights)
                self.tokenizer.save_pretrained(tmp)
                _sort_target_modules(tmp / "adapter_config.json")
            write_json(run.loss_history, history)
            atomic_write_bytes(run.loss_curve, loss_curve_png(history))
        evals = [h for h in history if "eval_loss" in h]
        eval_time = sum(h.get("eval_runtime", 0.0) for h in evals)
        trainable, total = self.trainer.model.get_nb_trainable_parameters()
        rate = matmul_limit()
        train_losses = [h["loss"] for h in history if "loss" in h] or [
            h["train_loss"] for h in history if "train_loss" in h
        ]
        tokens = int(state.num_input_tokens_seen)
        trained_tokens, train_s = tokens - self.progress.start_tokens, self.wall_s - eval_time
        manifest = {
            "config": dataclasses.asdict(self.config),
            "template": self.template,
            "model_origin": model_origin(self.config.model),
            "resumed_from": self.last_checkpoint,
            "data": {"dir": run.data.path.name, **{name: run.data.split_sha256(name) for name in SPLITS}},
            "train_examples": len(self.train_rows),
            # of which from the behaviour mix (data/manifest.json names each source, its hash and counts)
            "mix_examples": len(self.mix_rows),
            # the languages of the training queries (the data card's): the reply policy hands the others off
            "languages": run.data.trained_languages(),
            "eval_examples": len(self.eval_rows),
            "token_lengths": self.length_stats,
            # the generation budget: eval, bench and the app cap replies at its max_new_tokens
            "reply_tokens": self.reply_tokens,
            "turn_end": self.turn_end,
            "machine": machine_info(),
            "processes": {
                "world_size": self.processes.num_processes,
                "backend": self.processes.backend,
                "micro_batch_per_process": self.config.batch_size,
                "gradient_accumulation_per_process": self.accumulation,
                "effective_batch": self.config.batch_size * self.accumulation * self.processes.num_processes,
                "effective_batch_note": self.batch_note,
            },
            "parameters": {
                "trainable": int(trainable),
                "total": int(total),
                "trainable_share": round(trainable / total, 5),
            },
            "steps": state.global_step,
            "wall_time_s": round(self.wall_s, 1),
            "tokens_seen": tokens,
            "eval_time_s": round(eval_time, 1),
            # this session's
            "tokens_per_s": round(trained_tokens / train_s, 1),
            # the model FLOPs those tokens needed against this CPU's matmul rate, measured now
            "flops": {
                **training_account(trained_tokens, round(train_s, 1), int(total), rate["flops_per_s"]),
                "matmul": rate,
            },
            "memory": peak_memory(),
            "final_train_loss": train_losses[-1] if train_losses else None,
            "final_eval_loss": evals[-1]["eval_loss"] if evals else None,
            "best_eval_loss": min((h["eval_loss"] for h in evals), default=None),
            **self.extra_record(),
        }
        if self.processes.is_main_process:
            write_json(run.manifest_path, manifest)
        return manifest


def train(
    config: TrainConfig, run_dir: Path, resume: bool = False, data: str | None = None, reuse: bool = False
) -> dict[str, Any]:
    """Run LoRA SFT (or DPO, by config.method) into run_dir and return the run manifest; with reuse, return a
    finished identical run as is."""
    config.validate()
    run = RunDir(run_dir)
    if reuse and run.is_finished:
        record = run.trained()
        diff = _config_diff(config, record.config)
        if diff:
            raise SupportBenchError(f"--reuse: {run.path} holds a finished run with a different config ({diff})")
        print(f"reusing the finished run in {run.path}")
        return record.model_dump()
    with folder_lock(run.path, "train"):
        if config.method == "dpo":
            from supportbench.trainers.dpo import DPORecipe

            recipe: LoRARecipe = DPORecipe(config, run, resume=resume, data=data)
        else:
            recipe = LoRARecipe(config, run, resume=resume, data=data)
        recipe.setup()
        recipe.fit()
        return recipe.save()


def _loss(value: float | None) -> str:
    return "none" if value is None else f"{value:.4f}"


def summary_lines(manifest: dict[str, Any], run_dir: Path) -> list[str]:
    """A one-screen summary of a finished training run (one trained before a record existed shows without it)."""
    p, c = manifest["parameters"], manifest["config"]
    lines = [
        f"run          {run_dir}",
        f"model        {c['model']} ({manifest['template']} template) "
        f"on {manifest['machine']['device']} {manifest['machine']['dtype']}",
        f"lora         r={c['lora_r']} alpha={c['lora_alpha']} targets={c['lora_targets']} lr={c['learning_rate']}",
        f"parameters   {p['trainable']:,} trainable of {p['total']:,} ({p['trainable_share']:.2%})",
        f"data         {manifest['train_examples']} train / {manifest['eval_examples']} validation examples, "
        f"max_length {manifest['token_lengths']['max_length']} ({manifest['token_lengths']['truncated_examples']} truncated)",
        f"steps        {manifest['steps']} in {manifest['wall_time_s']}s ({manifest['eval_time_s']}s eval), "
        f"{manifest['tokens_seen']:,} tokens, {manifest['tokens_per_s']} train tok/s",
        f"loss         final train {_loss(manifest['final_train_loss'])}, final eval {_loss(manifest['final_eval_loss'])}",
        f"memory       peak RSS {manifest['memory']['peak_rss_mib']} MiB",
    ]
    if flops := manifest.get("flops"):
        lines.append(f"flops        {line('training', flops)} ({flops['matmul']['gflops']} GFLOP/s)")
    lines.append(f"adapter      {RunDir(run_dir).adapter}")
    if manifest.get("method") == "dpo":
        pairs = manifest["pairs"]
        lines.append(f"pairs        {pairs['used']} from {manifest['from_run']['path']}: {pairs['by_source']}")
    elif manifest.get("mix_examples"):
        lines.append(f"mix          {manifest['mix_examples']} of the examples from --mix")
    return lines

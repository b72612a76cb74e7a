"""Preference training as a recipe over the SFT one: the --from run's adapter trained further with TRL's DPOTrainer
on preference pairs (supportbench.preference.pairs), into a new run folder that eval, behavior and the app read like
any run. TRL keeps a frozen copy of the starting adapter as the reference, so DPO moves the policy away from the SFT
model only as far as beta allows."""

from __future__ import annotations

import dataclasses
import shutil
import time
from pathlib import Path
from typing import Any

from supportbench.deploy.export import adapter_sha256
from supportbench.device import process_state
from supportbench.files import SupportBenchError, ensure_writable_dir, write_json
from supportbench.layout import SPLITS, RunDir
from supportbench.templates import Turn, get_template
from supportbench.trainers.lora import LoRARecipe, trainer_arguments


class DPORecipe(LoRARecipe):
    """One DPO run: `setup` (pairs, data, model, trainer), `fit` and `save` (the SFT recipe's, plus the pairs)."""

    def setup(self) -> None:
        """Check the --from run and the pair sources, collect the pairs, copy the run's split, load its adapter as
        the trainable policy and build the trainer; nothing is written before the pairs are known."""
        from peft import PeftModel

        from supportbench.models import load_model
        from supportbench.preference.pairs import collect
        from supportbench.trainers.callbacks import CheckpointModes, NonFiniteLoss, ProgressBar

        source = RunDir(Path(self.config.from_run))
        trained = source.require_adapter()
        if source.path.resolve() == self.run.path.resolve():
            raise SupportBenchError(f"--from {source.path} is the run folder itself; choose another --out")
        inherited = {k: trained.config[k] for k in ("model", "lora_r", "lora_alpha", "lora_dropout", "lora_targets")}
        self.config = config = dataclasses.replace(self.config, **inherited, template=trained.template)
        self.template = trained.template
        self.last_checkpoint = self._checkpoint_to_resume()
        self.pairs, self.pairs_record = collect(config.pairs, source, config.judge, config.max_pairs, config.seed)
        ensure_writable_dir(self.run.path)
        if not self.run.data.is_prepared:
            shutil.copytree(source.data.path, self.run.data.path, dirs_exist_ok=True)
        if any(self.run.data.split_sha256(n) != trained.split_sha256(n) for n in SPLITS):
            raise SupportBenchError(f"{self.run.data.path} is not the split {source.path} was trained on")
        if self.last_checkpoint is None:
            write_json(self.run.config_path, dataclasses.asdict(config))
        self.source, self.source_record = source, trained
        self.processes = process_state()
        self.accumulation, self.batch_note = config.gradient_accumulation, None
        base, self.tokenizer = load_model(config.model, self.device)
        model = PeftModel.from_pretrained(base, source.adapter, is_trainable=True)
        self.train_rows, self.eval_rows, self.mix_rows = self.pairs, [], []
        self.length_stats, self.turn_end = trained.model_extra["token_lengths"], None
        self.reply_tokens = trained.reply_tokens.model_dump() if trained.reply_tokens else None
        self.progress = ProgressBar()
        self.trainer = self._trainer(model, [self.progress, CheckpointModes(), NonFiniteLoss()])

    def _trainer(self, model: Any, callbacks: list[Any]) -> Any:
        from datasets import Dataset
        from transformers.trainer_callback import ProgressCallback
        from trl import DPOConfig, DPOTrainer

        config, template, tokenizer = self.config, get_template(self.template), self.tokenizer
        rows = [
            {
                "prompt": template.prompt([Turn(t) for t in pair["turns"]], tokenizer),
                "chosen": template.completion(pair["chosen"], tokenizer),
                "rejected": template.completion(pair["rejected"], tokenizer),
            }
            for pair in self.pairs
        ]
        args = DPOConfig(
            **trainer_arguments(config, self.device, self.run.checkpoints),
            beta=config.beta,
            gradient_accumulation_steps=config.gradient_accumulation,
            max_length=config.max_length or 1024,
        )
        trainer = DPOTrainer(
            model=model,
            ref_model=None,
            args=args,
            train_dataset=Dataset.from_list(rows),
            processing_class=tokenizer,
            callbacks=callbacks,
        )
        trainer.remove_callback(ProgressCallback)
        return trainer

    def fit(self) -> None:
        """Train; the reference copy of the adapter is dropped afterwards, so only the trained one is saved."""
        started = time.perf_counter()
        self.trainer.train(resume_from_checkpoint=self.last_checkpoint)
        self.wall_s = time.perf_counter() - started
        if "ref" in self.trainer.model.peft_config:
            self.trainer.model.delete_adapter("ref")

    def extra_record(self) -> dict[str, Any]:
        """What train.json adds for a DPO run: where it started and the pairs' sources and counts."""
        return {
            "method": "dpo",
            "from_run": {"path": str(self.source.path), "adapter_sha256": adapter_sha256(self.source)},
            "pairs": self.pairs_record,
            "languages": self.source_record.model_extra.get("languages") or self.source.data.trained_languages(),
        }

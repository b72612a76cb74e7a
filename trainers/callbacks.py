"""Trainer callbacks: a progress bar with loss and tokens/s, checkpoints that follow the umask, and a stop on a
non-finite loss."""

from __future__ import annotations

import math
import os
import time
from typing import Any

from tqdm.auto import tqdm
from transformers import TrainerCallback

from supportbench.files import SupportBenchError, apply_umask


class ProgressBar(TrainerCallback):
    """tqdm over optimizer steps with the latest loss, eval loss and tokens/s."""

    def __init__(self) -> None:
        self.bar: Any = None
        self.started = 0.0
        self.start_tokens = 0
        self.postfix: dict[str, str] = {}

    def on_train_begin(self, args, state, control, **kwargs):
        self.bar = tqdm(
            total=state.max_steps, initial=state.global_step, desc="train", unit="step", dynamic_ncols=True
        )
        self.started, self.start_tokens = time.perf_counter(), state.num_input_tokens_seen

    def on_step_end(self, args, state, control, **kwargs):
        elapsed = time.perf_counter() - self.started
        self.postfix["tok/s"] = f"{(state.num_input_tokens_seen - self.start_tokens) / max(elapsed, 1e-9):.0f}"
        self.bar.set_postfix(self.postfix, refresh=False)
        self.bar.update(state.global_step - self.bar.n)

    def on_log(self, args, state, control, logs=None, **kwargs):
        for key in ("loss", "eval_loss"):
            if logs and key in logs:
                self.postfix[key] = f"{logs[key]:.3f}"

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()


class CheckpointModes(TrainerCallback):
    """Each saved checkpoint's files get the umask's modes, as every other output does."""

    def on_save(self, args, state, control, **kwargs):
        folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        if os.path.isdir(folder):
            apply_umask(folder)


class NonFiniteLoss(TrainerCallback):
    """Fail the run as soon as a logged loss or gradient norm is NaN or infinite: its adapter would be worthless.
    (The Trainer's logging_nan_inf_filter hides a non-finite training loss, so the gradient norm is checked too.)"""

    WATCHED = ("loss", "grad_norm", "eval_loss")

    def on_log(self, args, state, control, logs=None, **kwargs):
        # fp16's loss scaler meets infinite gradients by design and skips those steps
        for key in (k for k in self.WATCHED if not (args.fp16 and k == "grad_norm")):
            value = (logs or {}).get(key)
            if value is not None and not math.isfinite(float(value)):
                raise SupportBenchError(
                    f"the training {key} became {value} at step {state.global_step}; the run is stopped and nothing "
                    "is saved as finished (a lower learning rate usually helps)"
                )

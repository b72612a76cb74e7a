"""A training progress bar that shows loss and non-padding tokens per second."""

from __future__ import annotations

import time
from typing import Any

from tqdm.auto import tqdm
from transformers import TrainerCallback


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

"""Greedy generation whose batch shrinks: a reply that has ended leaves the batch, so it costs no more forward passes.

lm-eval's transformers model generates a left-padded batch with transformers' `generate`, which steps every row
until the last reply ends: one reply that runs to the cap holds all the others for every step left. Here a row leaves
the batch, its cache rows with it, once it has produced the end-of-turn token or one of lm-eval's stop sequences.
The rows that stay see the same inputs, positions, mask and repetition controls as under `generate`, so their tokens
are `generate`'s own (tests/evaluation/test_shrinking_batch.py checks this against `generate` itself).
Anything else (sampling, mixed precision, or a model whose generation config turns on another logits processor) goes
to `generate`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from lm_eval.models.huggingface import HFLM
from transformers import DynamicCache, GenerationConfig
from transformers.generation.logits_process import (
    LogitsProcessorList,
    NoRepeatNGramLogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
)

GREEDY_KWARGS = {"attention_mask", "do_sample", "repetition_penalty", "no_repeat_ngram_size"}
# generation-config fields that make `generate` add a logits processor this loop does not build
OTHER_PROCESSORS = (
    "min_length",
    "min_new_tokens",
    "bad_words_ids",
    "suppress_tokens",
    "begin_suppress_tokens",
    "forced_bos_token_id",
    "forced_eos_token_id",
    "sequence_bias",
    "encoder_repetition_penalty",
    "exponential_decay_length_penalty",
    "renormalize_logits",
    "repetition_penalty",
    "no_repeat_ngram_size",
)


def controls_processors(
    attention_mask: torch.Tensor, repetition_penalty: float = 1.0, no_repeat_ngram_size: int = 0
) -> LogitsProcessorList:
    """The repetition controls as `generate` builds them for a left-padded batch: the penalty skips each row's left
    padding only, so it counts the prompt's tokens too."""
    processors = LogitsProcessorList()
    if repetition_penalty != 1.0:
        padding = (attention_mask != 0).int().argmax(dim=1)
        processors.append(RepetitionPenaltyLogitsProcessor(float(repetition_penalty), prompt_ignore_length=padding))
    if no_repeat_ngram_size:
        processors.append(NoRepeatNGramLogitsProcessor(no_repeat_ngram_size))
    return processors


@torch.inference_mode()
def generate_shrinking(
    model: Any,
    context: torch.Tensor,
    attention_mask: torch.Tensor,
    max_length: int,
    ended: Callable[[list[int]], bool],
    pad_token_id: int,
    controls: dict[str, Any],
) -> torch.Tensor:
    """Greedy continuations of a left-padded batch up to max_length tokens in all, each row dropped from the batch
    once ended(its new tokens) holds; rows are padded with pad_token_id after their end, as `generate` pads them."""
    cache = DynamicCache(config=model.config)
    cache_kwarg = {cache_argument(model): cache}
    rows = torch.arange(context.shape[0])  # the original row of each row still in the batch
    tokens, mask = context, attention_mask
    positions = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)  # as `generate` derives them
    processors = controls_processors(mask, **controls)
    produced: list[list[int]] = [[] for _ in range(context.shape[0])]
    step = tokens
    while tokens.shape[1] < max_length:
        logits = (
            model(
                input_ids=step,
                attention_mask=mask,
                position_ids=positions[:, -step.shape[1] :],
                **cache_kwarg,
                use_cache=True,
                logits_to_keep=1,
            )
            .logits[:, -1]
            .to(dtype=torch.float32)
        )
        chosen = processors(tokens, logits).argmax(dim=-1)
        tokens = torch.cat([tokens, chosen[:, None]], dim=-1)
        staying = []
        for index, (row, token) in enumerate(zip(rows.tolist(), chosen.tolist(), strict=True)):
            produced[row].append(token)
            if not ended(produced[row]):
                staying.append(index)
        if not staying:
            break
        if len(staying) < len(rows):
            keep = torch.tensor(staying)
            rows, tokens, mask, positions = rows[keep], tokens[keep], mask[keep], positions[keep]
            cache.batch_select_indices(keep)
            processors = controls_processors(mask, **controls)
        mask = torch.cat([mask, mask.new_ones((len(rows), 1))], dim=-1)
        positions = torch.cat([positions, positions[:, -1:] + 1], dim=-1)
        step = tokens[:, -1:]
    width = max(map(len, produced))
    return torch.tensor(
        [row + new + [pad_token_id] * (width - len(new)) for row, new in zip(context.tolist(), produced, strict=True)],
        dtype=context.dtype,
    )


def cache_argument(model: Any) -> str:
    """The name the model's forward takes its cache by: `cache` from transformers 5.2x, `past_key_values` before."""
    forward = getattr(model, "get_base_model", lambda: model)().forward
    return "cache" if "cache" in inspect.signature(forward).parameters else "past_key_values"


def stop_rule(tokenizer: Any, eos_token_ids: set[int], stop: list[str]) -> Callable[[list[int]], bool]:
    """Whether a row's new tokens have ended it: an end-of-sequence token, or a stop sequence in its last tokens, looked
    back over as lm-eval's MultiTokenEOSCriteria looks (the stop sequence's token count plus 2)."""
    lookbacks = [(s, len(tokenizer.encode(s, add_special_tokens=False)) + 2) for s in stop]

    def ended(new: list[int]) -> bool:
        return new[-1] in eos_token_ids or any(s in tokenizer.decode(new[-back:]) for s, back in lookbacks)

    return ended


def uses_other_processors(config: GenerationConfig) -> bool:
    """True when the model's own generation config would make `generate` apply a processor this loop lacks."""
    default = GenerationConfig()
    return any(getattr(config, name, None) != getattr(default, name, None) for name in OTHER_PROCESSORS)


class ShrinkingBatchHFLM(HFLM):
    """lm-eval's transformers model whose greedy generation drops each reply from the batch once it has ended."""

    def _model_generate(self, context: torch.Tensor, max_length: int, stop: list[str], **kwargs: Any) -> torch.Tensor:
        if kwargs.get("temperature") == 0.0:
            kwargs.pop("temperature")
        config = self.model.generation_config
        sampled = kwargs.get("do_sample") or set(kwargs) - GREEDY_KWARGS
        if sampled or uses_other_processors(config) or getattr(self, "mixed_precision_dtype", None):
            return super()._model_generate(context, max_length, stop, **kwargs)
        eos = config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
        controls = {k: kwargs[k] for k in ("repetition_penalty", "no_repeat_ngram_size") if k in kwargs}
        ended = stop_rule(self.tokenizer, eos_ids, stop)
        return generate_shrinking(
            self.model, context, kwargs["attention_mask"], max_length, ended, self.tokenizer.pad_token_id, controls
        )

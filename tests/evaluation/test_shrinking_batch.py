"""Greedy generation whose batch shrinks as replies end: the same tokens as transformers' `generate`, fewer rows."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import byte_level_tokenizer
from transformers import AutoModelForCausalLM, AutoTokenizer

from supportbench.evaluation.shrinking_batch import generate_shrinking, stop_rule

PROMPTS = ["order", "refund my order please", "cancel", "where is my package and my invoice"]
NEW_TOKENS = 24


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path) -> tuple[AutoModelForCausalLM, AutoTokenizer, dict[str, torch.Tensor]]:
    """The tiny random model, its tokenizer, and the prompts as one left-padded batch."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir, padding_side="left")
    return model, tokenizer, tokenizer(PROMPTS, return_tensors="pt", padding=True)


def through_end(row: list[int], prompt_length: int, end: int) -> list[int]:
    """A row's new tokens up to and including the first end token."""
    new = row[prompt_length:]
    return new[: new.index(end) + 1] if end in new else new


@pytest.mark.parametrize(
    "controls", [{}, {"repetition_penalty": 1.3}, {"no_repeat_ngram_size": 2}], ids=["greedy", "penalty", "ngram"]
)
def test_rows_that_end_leave_the_batch_and_the_rest_decode_as_generate(tiny, controls):
    model, tokenizer, batch = tiny
    width = batch["input_ids"].shape[1]
    pad = tokenizer.pad_token_id
    greedy = dict(max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=pad, **controls)
    free = model.generate(**batch, **greedy).tolist()
    # the end token: the first of row 0's tokens that some other row has not produced by then, so rows end apart
    first = free[0][width:]
    end = next(t for i, t in enumerate(first) if any(t not in r[width : width + i + 1] for r in free[1:]))
    expected = model.generate(**batch, **greedy, eos_token_id=end, output_logits=True, return_dict_in_generate=True)
    reference = expected.sequences.tolist()
    step_logits: list[torch.Tensor] = []  # each forward's last-position logits, for the rows still in the batch
    hook = model.register_forward_hook(lambda *call: step_logits.append(call[-1].logits[:, -1].clone()))
    try:
        got = generate_shrinking(
            model,
            batch["input_ids"],
            batch["attention_mask"],
            width + NEW_TOKENS,
            lambda new: new[-1] == end,
            pad,
            controls,
        ).tolist()
    finally:
        hook.remove()
    assert [through_end(r, width, end) for r in got] == [through_end(r, width, end) for r in reference]
    # step s computes only the rows that had not ended before it, with generate's own logits for them
    staying = [
        [r for r, row in enumerate(reference) if end not in row[width : width + s]] for s in range(len(step_logits))
    ]
    assert len(staying[0]) == len(PROMPTS) and len(staying[-1]) < len(PROMPTS)  # row 0 left, another stayed
    for step, rows in enumerate(staying):
        torch.testing.assert_close(step_logits[step], expected.logits[step][rows].float(), rtol=1e-5, atol=1e-5)
    for row in got:  # after its end a row holds padding, as generate pads it
        new = row[width:]
        if end in new:
            assert set(new[new.index(end) + 1 :]) <= {pad}


def test_a_stop_sequence_ends_a_row_even_when_split_over_tokens():
    tokenizer = byte_level_tokenizer(["the order is late", "thank you"])
    assert len(tokenizer.encode("late. Thank", add_special_tokens=False)) > 1
    ids = tokenizer.encode("the order is late. Thank you", add_special_tokens=False)
    ended = stop_rule(tokenizer, {tokenizer.eos_token_id}, ["late. Thank"])
    prefixes = [ids[:n] for n in range(1, len(ids) + 1)]
    first = next(n for n, p in enumerate(prefixes, start=1) if ended(p))
    assert "late. Thank" in tokenizer.decode(ids[:first]) and "late. Thank" not in tokenizer.decode(ids[: first - 1])
    assert ended(ids + [tokenizer.eos_token_id]) and not ended(ids[:2])

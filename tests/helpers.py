"""Test helpers: small data files written by the tests, a tiny offline model, and paths to the shared data."""

from __future__ import annotations

import csv
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from supportbench.config import TrainConfig

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
BITEXT = Path(os.environ.get("SUPPORTBENCH_DATA") or SHARED / "bitext" / "bitext_customer_support_4514.csv")
TWCS = SHARED / "twcs" / "twcs_sample_1000.csv"
INTENTS = {
    "cancel_order": "ORDER",
    "track_refund": "REFUND",
    "recover_password": "ACCOUNT",
    "change_shipping_address": "SHIPPING_ADDRESS",
}


def fixture_rows(per_intent: int = 30) -> list[dict[str, str]]:
    """Synthetic Bitext-like rows: 4 intents, distinct instructions, placeholders in responses."""
    rows = []
    for intent, category in INTENTS.items():
        for i in range(per_intent):
            rows.append(
                {
                    "instruction": f"please help me {intent.replace('_', ' ')} number {i} today",
                    "response": f"Sure, I can help with {intent.replace('_', ' ')} for {{{{Order Number}}}}. "
                    f"Visit {{{{Website Name}}}} or call {{{{Customer Support Phone Number}}}}. Case {i}.",
                    "intent": intent,
                    "category": category,
                    "flags": "B",
                    "tags": "BL",
                }
            )
    return rows


def write_csv(path: Path, rows: list[dict[str, str]], columns: list[str] | None = None) -> Path:
    """Write rows to a CSV with the given (or the rows') columns."""
    columns = columns or list(rows[0])
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def small_split(tmp_path: Path, out: Path, rows: list[dict[str, str]] | None = None, **config: Any) -> dict[str, Any]:
    """Prepare the fixture rows (or `rows`) into out with a 16-row test and 8-row validation split."""
    from supportbench.config import DataConfig
    from supportbench.prepare.dataset import prepare

    source = str(write_csv(tmp_path / "d.csv", rows or fixture_rows()))
    return prepare(DataConfig(source=source, **{"test_size": 16, "validation_size": 8, **config}), out)


def trained_copy(run: Path, dest: Path, *ignore: str) -> Path:
    """A copy of a trained run without what later stages (other tests included) wrote into it."""
    later = ("eval", "bench", "decoding.json", "report.*", "comparison.*")
    shutil.copytree(run, dest, ignore=shutil.ignore_patterns(*later, *ignore))
    return dest


def tiny_config(model_dir: Path, **overrides: Any) -> TrainConfig:
    """A few-step LoRA config for the tiny model; keyword arguments override it."""
    values = dict(
        model=str(model_dir),
        template="seed",
        max_steps=4,
        batch_size=4,
        gradient_accumulation=1,
        save_steps=2,
        max_eval_examples=8,
        learning_rate=1e-3,
        logging_steps=1,
    )
    return TrainConfig(**{**values, **overrides})


CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL = ["<unk>", "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>"]


def _tiny_llama(tokenizer: Any, seed: int, layers: int = 2, hidden: int = 32) -> Any:
    """A random Llama model of a few thousand parameters for this tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(config)


def _fast_tokenizer(core: Any) -> Any:
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        unk_token="<unk>",
        eos_token="<|im_end|>",
        bos_token="<|im_start|>",
        pad_token="<pad>",
        additional_special_tokens=["<|endoftext|>"],
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_tiny_model(
    folder: Path, corpus: list[str], seed: int = 0, layers: int = 2, hidden: int = 32, stuck: bool = False
) -> Path:
    """Write config, random weights and a tokenizer trained on corpus into folder; return folder. A `stuck` model
    has zero embeddings, so every logit is 0 and greedy decoding repeats token 0 up to the cap, never stopping."""
    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    core = Tokenizer(models.WordLevel(unk_token="<unk>"))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    core.train_from_iterator(corpus, trainers.WordLevelTrainer(vocab_size=2000, special_tokens=SPECIAL))
    tokenizer = _fast_tokenizer(core)
    model = _tiny_llama(tokenizer, seed, layers, hidden)
    if stuck:
        with torch.no_grad():
            model.get_input_embeddings().weight.zero_()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def byte_level_tokenizer(corpus: list[str], vocab_size: int = 400) -> Any:
    """A byte-level BPE tokenizer trained on corpus, with the tiny models' special tokens: it decodes text exactly."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    core.train_from_iterator(
        corpus, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL, initial_alphabet=alphabet)
    )
    return _fast_tokenizer(core)


def build_replying_model(folder: Path, queries: list[str], reply: str, max_steps: int = 600) -> Path:
    """A tiny model trained (until its loss is near zero) to answer each query (seed template) with `reply` and an end
    of turn, with a byte-level tokenizer that decodes text exactly (`{{Slot}}` included); return folder."""
    import torch

    from supportbench.templates import Turn, get_template

    tokenizer = byte_level_tokenizer([*queries, reply])
    model = _tiny_llama(tokenizer, seed=0)
    template = get_template("seed")
    answer = tokenizer(template.completion(reply) + tokenizer.eos_token)["input_ids"]
    prompts = [tokenizer(template.prompt([Turn(q)]))["input_ids"] for q in queries]
    width = max(map(len, prompts)) + len(answer)
    pad = tokenizer.pad_token_id
    inputs = torch.tensor([[*p, *answer] + [pad] * (width - len(p) - len(answer)) for p in prompts])
    labels = torch.tensor([[-100] * len(p) + answer + [-100] * (width - len(p) - len(answer)) for p in prompts])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for step in range(max_steps):  # the reply's tokens only: the queries themselves cannot be learned
        rows = slice(step % 4, None, 4)
        loss = model(input_ids=inputs[rows], attention_mask=(inputs[rows] != pad).long(), labels=labels[rows]).loss
        if loss.item() < 0.01:
            break
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    else:
        raise AssertionError(f"the tiny model did not learn its reply in {max_steps} steps (loss {loss.item():.3f})")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def free_port() -> int:
    """A localhost port nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serve_app(run: Path, *flags: str) -> Iterator[str]:
    """`supportbench app` on a free localhost port: yield its URL once it answers, stop it afterwards."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "supportbench", "app", "--run", str(run), "--port", str(port), *flags],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.5)
    else:
        process.kill()
        pytest.fail("the app did not start within 120 s")
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        process.terminate()
        process.wait(timeout=30)


def post_json(url: str, body: dict | bytes, timeout: float = 120) -> tuple[int, bytes, float]:
    """POST JSON (or raw bytes): the status, the body and the seconds it took, HTTP errors included."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url, data, {"Content-Type": "application/json"})
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read(), time.perf_counter() - started
    except urllib.error.HTTPError as err:
        return err.code, err.read(), time.perf_counter() - started

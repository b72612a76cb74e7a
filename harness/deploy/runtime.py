"""The exported CPU runtime, CTranslate2 int8: convert, load, generate, and batch concurrent requests.

CTranslate2 was chosen by measurement on the 2-core CI CPU (see the README's Deployment section): it batches
prompts of different lengths natively, so concurrent users share decoding steps, and it converts both bundled
architectures (Llama and Gemma 3).
"""

from __future__ import annotations

import importlib.util
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from supportbench.decoding import CONTROLS
from supportbench.files import SupportBenchError
from supportbench.templates import cut_at_stops

FORMAT = "ctranslate2-int8"
QUANTIZATION = "int8"  # weights int8, activations quantized per row; the compute type on x86 CPUs
MODEL_FILES = ("model.bin", "config.json")
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "generation_config.json",
)
INSTALL_HINT = "the exported runtime needs CTranslate2: pip install 'supportbench[deploy]'"
DONE = object()  # the end of one request's token stream


def require_ctranslate2() -> Any:
    """The ctranslate2 module, or a clear error saying how to install it."""
    if importlib.util.find_spec("ctranslate2") is None:
        raise SupportBenchError(INSTALL_HINT)
    import ctranslate2

    return ctranslate2


def convert(model_dir: Path, out_dir: Path, quantization: str | None = QUANTIZATION) -> None:
    """Convert a transformers folder to CTranslate2 (int8, or None: the weights' own dtype) in out_dir; an architecture
    it cannot convert is a clear error."""
    ctranslate2 = require_ctranslate2()
    copy = [name for name in TOKENIZER_FILES if (Path(model_dir) / name).is_file()]
    try:
        converter = ctranslate2.converters.TransformersConverter(str(model_dir), copy_files=copy)
        converter.convert(str(out_dir), quantization=quantization, force=True)
    except (ValueError, NotImplementedError) as err:
        raise SupportBenchError(f"CTranslate2 cannot convert {model_dir}: {err}") from err


def load_generator(folder: Path, threads: int | None = None, compute_type: str = QUANTIZATION) -> Any:
    """A CTranslate2 Generator for an exported folder; a missing or corrupted folder is a clear error."""
    ctranslate2 = require_ctranslate2()
    missing = [name for name in MODEL_FILES if not (Path(folder) / name).is_file()]
    if missing:
        raise SupportBenchError(
            f"exported model {folder} is incomplete (missing {', '.join(missing)}); run `supportbench export --force`"
        )
    try:
        return ctranslate2.Generator(
            str(folder), device="cpu", compute_type=compute_type, intra_threads=threads or os.cpu_count() or 1
        )
    except (RuntimeError, ValueError) as err:
        raise SupportBenchError(
            f"exported model {folder} cannot be loaded ({err}); run `supportbench export --force`"
        ) from err


def load_exported(folder: Path) -> tuple[Any, Any]:
    """(generator, tokenizer) of an exported folder, which carries its own tokenizer files."""
    from transformers import AutoTokenizer

    return load_generator(folder), AutoTokenizer.from_pretrained(folder)


def prompt_tokens(tokenizer: Any, text: str) -> list[str]:
    """A prompt as the token strings CTranslate2 takes, tokenized exactly as transformers does it."""
    return tokenizer.convert_ids_to_tokens(tokenizer(text, add_special_tokens=False)["input_ids"])


def generate(
    generator: Any,
    prompts: list[list[str]],
    max_new_tokens: int,
    on_token: Callable[[int, int], bool] | None = None,
    controls: dict[str, Any] | None = None,
) -> list[list[int]]:
    """Greedy new token ids for a batch of tokenized prompts, with the decoding's repetition controls (CTranslate2 names
    them as transformers does); on_token(batch index, token id) returning True ends that row."""
    callback = None if on_token is None else (lambda step: on_token(step.batch_id, step.token_id))
    results = generator.generate_batch(
        prompts,
        max_length=max_new_tokens,
        sampling_topk=1,
        include_prompt_in_result=False,
        callback=callback,
        **(controls or {}),
    )
    return [result.sequences_ids[0] for result in results]


@dataclass
class Request:
    """One queued generation: its prompt tokens, cap, cancel flag, and the queue its token ids stream into."""

    tokens: list[str]
    max_new_tokens: int
    cancel: threading.Event
    out: queue.Queue = field(default_factory=queue.Queue)
    produced: int = 0


class DynamicBatcher:
    """Groups the requests that arrive together into one batched generate call on a worker thread.

    A request that arrives while a batch decodes waits for the next one; each request streams its own tokens and
    stops on its own cap or cancel flag, without stopping the others.
    """

    def __init__(
        self, generator: Any, max_batch: int = 8, gather_s: float = 0.02, controls: dict[str, Any] | None = None
    ):
        self.generator, self.max_batch, self.gather_s, self.controls = generator, max_batch, gather_s, controls
        self.pending: queue.Queue[Request] = queue.Queue()
        self.batch_sizes: list[int] = []  # one entry per generate call, for the load test and the bench
        threading.Thread(target=self._serve, name="supportbench-batcher", daemon=True).start()

    def stream(self, tokens: list[str], max_new_tokens: int, cancel: threading.Event) -> Iterator[int]:
        """Queue a prompt and yield its new token ids as the batch decodes them."""
        request = Request(tokens, max_new_tokens, cancel)
        self.pending.put(request)
        while (item := request.out.get()) is not DONE:
            if isinstance(item, BaseException):
                raise item
            yield item

    def _gather(self) -> list[Request]:
        batch = [self.pending.get()]
        deadline = time.monotonic() + self.gather_s
        while len(batch) < self.max_batch:
            try:
                batch.append(self.pending.get(timeout=max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                break
        return batch

    def _serve(self) -> None:
        while True:
            batch = self._gather()
            live = [r for r in batch if not r.cancel.is_set()]
            for request in batch:
                if request not in live:
                    request.out.put(DONE)
            if live:
                self.batch_sizes.append(len(live))
                self._decode(live)

    def _decode(self, live: list[Request]) -> None:
        def on_token(index: int, token_id: int) -> bool:
            request = live[index]
            request.produced += 1
            request.out.put(token_id)
            return request.cancel.is_set() or request.produced >= request.max_new_tokens

        try:
            generate(
                self.generator, [r.tokens for r in live], max(r.max_new_tokens for r in live), on_token, self.controls
            )
        except Exception as err:  # noqa: BLE001 - handed to every waiting consumer
            for request in live:
                request.out.put(err)
        finally:
            for request in live:
                request.out.put(DONE)


def exported_lm(folder: Path, batch_size: int) -> Any:
    """An lm-eval model over an exported folder: greedy generate_until only (perplexity stays on the fp32 model)."""
    from lm_eval.api.model import LM

    class ExportedLM(LM):
        def __init__(self) -> None:
            super().__init__()
            self.generator, self.tokenizer = load_exported(folder)

        def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
            replies = []
            for start in range(0, len(requests), batch_size):
                chunk = [r.args for r in requests[start : start + batch_size]]
                prompts = [prompt_tokens(self.tokenizer, context) for context, _ in chunk]
                # one eval decodes every request alike
                controls = {k: v for k, v in chunk[0][1].items() if k in CONTROLS}
                ids = generate(
                    self.generator, prompts, max(kwargs["max_gen_toks"] for _, kwargs in chunk), controls=controls
                )
                for (_, kwargs), new in zip(chunk, ids, strict=True):
                    text = self.tokenizer.decode(new[: kwargs["max_gen_toks"]], skip_special_tokens=False)
                    replies.append(cut_at_stops(text, kwargs.get("until") or [])[0])
            return replies

        def loglikelihood(self, requests: list[Any], disable_tqdm: bool = False) -> list[tuple[float, bool]]:
            raise SupportBenchError(
                "the exported model is scored on generation only; perplexity comes from the fp32 model"
            )

        loglikelihood_rolling = loglikelihood

    return ExportedLM()

"""One shared base model with the run's LoRA adapter, switchable per request, streaming replies."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import StoppingCriteria, StoppingCriteriaList

from harness.io import SupportBenchError, read_json
from harness.models import load_model
from harness.templates import Turn, get_template

MAX_QUERY_CHARS = 4000


@dataclass
class Reply:
    """A finished reply with its latency figures."""

    text: str
    seconds: float
    ttft_seconds: float | None


class StopOnText(StoppingCriteria):
    """Stop generating once the new text contains a stop sequence (works with any tokenizer)."""

    def __init__(self, tokenizer: Any, prompt_length: int, stops: list[str]):
        self.tokenizer, self.prompt_length, self.stops = tokenizer, prompt_length, stops

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> bool:
        text = self.tokenizer.decode(input_ids[0, self.prompt_length :], skip_special_tokens=False)
        return any(stop in text for stop in self.stops)


class Assistant:
    """Loads the base weights once; the adapter is switched off for base answers, never loaded twice."""

    def __init__(self, run_dir: Path, context_tokens: int = 1024):
        run_dir = Path(run_dir)
        if not (run_dir / "train.json").is_file():
            raise SupportBenchError(f"{run_dir} holds no finished training run (train.json)")
        train = read_json(run_dir / "train.json")
        adapter = run_dir / train["adapter"]
        if not (adapter / "adapter_config.json").is_file():
            raise SupportBenchError(f"{run_dir} has no LoRA adapter at {adapter}; train one with `supportbench train`")
        from peft import PeftModel

        base, self.tokenizer = load_model(train["config"]["model"])
        self.model = PeftModel.from_pretrained(base, adapter).eval()
        self.template = get_template(train["template"])
        self.stops = self.template.stop_sequences(self.tokenizer)
        self.context_tokens = min(context_tokens, getattr(base.config, "max_position_embeddings", context_tokens))
        self.lock = threading.Lock()  # the adapter switch is shared state: one generation at a time
        self.model_name = train["config"]["model"]

    def check_query(self, query: str) -> str:
        """Clean a user query or raise a message for the user: empty, oversized, or turn-marker tricks."""
        text = self.template.sanitize((query or "").strip(), self.tokenizer)
        if not text:
            raise SupportBenchError("Please type a question for the support assistant.")
        if len(text) > MAX_QUERY_CHARS:
            raise SupportBenchError(
                f"Your message is {len(text):,} characters; the limit is {MAX_QUERY_CHARS:,}. Please shorten it."
            )
        return text

    def prompt(self, history: list[Turn], query: str, max_new_tokens: int) -> str:
        """The prompt for a new query after past turns, dropping the oldest turns to fit the context budget."""
        budget = self.context_tokens - max_new_tokens
        turns = [*history, Turn(query)]
        while True:
            text = self.template.prompt(turns, self.tokenizer)
            size = len(self.tokenizer(text, add_special_tokens=False)["input_ids"])
            if size <= budget:
                return text
            if len(turns) == 1:
                raise SupportBenchError(
                    f"Your message needs {size:,} tokens; the limit is {budget:,} "
                    f"with {max_new_tokens} reply tokens. Please shorten it."
                )
            turns = turns[1:]

    def stream(self, history: list[Turn], query: str, finetuned: bool, max_new_tokens: int) -> Iterator[str]:
        """Yield the reply text as it grows, cut at the template's stop sequences."""
        from transformers import TextIteratorStreamer

        prompt = self.prompt(history, self.check_query(query), max_new_tokens)
        inputs = self.tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to(self.model.device)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=False)
        stop = StopOnText(self.tokenizer, inputs["input_ids"].shape[1], self.stops)
        kwargs = dict(
            **inputs,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            streamer=streamer,
            pad_token_id=self.tokenizer.pad_token_id,
            stopping_criteria=StoppingCriteriaList([stop]),
        )
        errors: list[BaseException] = []
        with self.lock:
            worker = threading.Thread(target=self._generate, args=(kwargs, finetuned, errors), daemon=True)
            worker.start()
            text = ""
            for piece in streamer:
                text += piece
                reply, stopped = self.template.truncate(text, self.tokenizer)
                yield self._without_special_tokens(reply)
                if stopped:
                    break
            worker.join()
        if errors:
            raise errors[0]

    def _without_special_tokens(self, text: str) -> str:
        for token in self.tokenizer.all_special_tokens:
            text = text.replace(token, "")
        return text.strip()

    def _generate(self, kwargs: dict[str, Any], finetuned: bool, errors: list[BaseException]) -> None:
        try:
            if finetuned:
                self.model.generate(**kwargs)
            else:
                with self.model.disable_adapter():
                    self.model.generate(**kwargs)
        except BaseException as err:  # noqa: BLE001 - re-raised in the caller's thread
            errors.append(err)
            kwargs["streamer"].end()

    def reply(self, history: list[Turn], query: str, finetuned: bool, max_new_tokens: int) -> Reply:
        """Generate a whole reply and time it (time to first token and end to end)."""
        started = time.perf_counter()
        first = None
        text = ""
        for text in self.stream(history, query, finetuned, max_new_tokens):
            if first is None and text:
                first = time.perf_counter() - started
        return Reply(text, time.perf_counter() - started, first)

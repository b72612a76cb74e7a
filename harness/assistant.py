"""One shared base model with the run's LoRA adapter, switchable per request, streaming replies."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import StoppingCriteria, StoppingCriteriaList, StopStringCriteria

from supportbench.io import SupportBenchError
from supportbench.models import load_model
from supportbench.run import RunDir
from supportbench.templates import Turn, get_template

MAX_QUERY_CHARS = 4000
MAX_HISTORY_TURNS = 20  # past exchanges kept; older ones are dropped before the prompt is fitted
MAX_HISTORY_CHARS = 16000
GENERATION_THREAD = "supportbench-generate"


@dataclass
class Reply:
    """A finished reply with its latency figures."""

    text: str
    seconds: float
    ttft_seconds: float | None


class StopWhenSet(StoppingCriteria):
    """Stop generating once an event is set: the consumer of a streamed reply went away."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


class Assistant:
    """Loads the base weights once; the adapter is switched off for base answers, never loaded twice."""

    def __init__(self, run_dir: Path, context_tokens: int = 1024):
        from peft import PeftModel

        run = RunDir(run_dir)
        trained = run.require_adapter()
        base, self.tokenizer = load_model(trained["config"]["model"])
        self.model = PeftModel.from_pretrained(base, run.adapter).eval()
        self.template = get_template(trained["template"])
        self.stops = self.template.stop_sequences(self.tokenizer)
        try:  # matched on token ids as they are generated; built once, here, so a tokenizer it cannot map fails at startup
            self.stop_at_text = StopStringCriteria(self.tokenizer, self.stops)
        except ValueError as err:
            raise SupportBenchError(f"the tokenizer of {trained['config']['model']} cannot match stop sequences: {err}") from err
        self.context_tokens = min(context_tokens, getattr(base.config, "max_position_embeddings", context_tokens))
        self.lock = threading.Lock()  # the adapter switch is shared state: one generation at a time, held by the worker only
        self.model_name = trained["config"]["model"]

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

    def clean_history(self, history: list[Turn]) -> list[Turn]:
        """Past turns sanitised like the query (client-supplied history is untrusted), newest first within the caps."""
        kept: list[Turn] = []
        chars = 0
        for turn in reversed(history[-MAX_HISTORY_TURNS:]):
            customer = self.template.sanitize(turn.customer, self.tokenizer)
            agent = None if turn.agent is None else self.template.sanitize(turn.agent, self.tokenizer)
            chars += len(customer) + len(agent or "")
            if chars > MAX_HISTORY_CHARS:
                break
            kept.append(Turn(customer, agent))
        return kept[::-1]

    def _prompt_tokens(self, turns: list[Turn]) -> tuple[str, int]:
        text = self.template.prompt(turns, self.tokenizer)
        return text, len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def prompt(self, history: list[Turn], query: str, max_new_tokens: int) -> str:
        """The prompt for a new query after past turns, keeping the most recent turns that fit the context budget."""
        budget = self.context_tokens - max_new_tokens
        turns = [*history, Turn(query)]
        text, size = self._prompt_tokens(turns)
        if size <= budget:
            return text
        low, high = 1, len(turns) - 1  # drop turns[:k]; the prompt shrinks as k grows, so search k in log steps
        best = None
        while low <= high:
            middle = (low + high) // 2
            candidate, size = self._prompt_tokens(turns[middle:])
            if size <= budget:
                best, high = candidate, middle - 1
            else:
                low = middle + 1
        if best is None:
            raise SupportBenchError(
                f"Your message needs {size:,} tokens; the limit is {budget:,} "
                f"with {max_new_tokens} reply tokens. Please shorten it."
            )
        return best

    def stream(self, history: list[Turn], query: str, finetuned: bool, max_new_tokens: int) -> Iterator[str]:
        """Yield the reply text as it grows, cut at the template's stop sequences; generation stops when the
        consumer stops reading (a closed generator sets the cancel flag)."""
        from transformers import TextIteratorStreamer

        prompt = self.prompt(self.clean_history(history), self.check_query(query), max_new_tokens)
        inputs = self.tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to(self.model.device)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=False)
        cancel = threading.Event()
        kwargs = dict(
            **inputs,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            streamer=streamer,
            pad_token_id=self.tokenizer.pad_token_id,
            stopping_criteria=StoppingCriteriaList([self.stop_at_text, StopWhenSet(cancel)]),
        )
        errors: list[BaseException] = []
        worker = threading.Thread(
            target=self._generate, args=(kwargs, finetuned, cancel, errors), name=GENERATION_THREAD, daemon=True
        )
        worker.start()
        try:
            text = ""
            for piece in streamer:
                text += piece
                reply, stopped = self.template.truncate(text, self.tokenizer)
                yield self._without_special_tokens(reply)
                if stopped:
                    break
        finally:
            cancel.set()  # reply complete, or the consumer left: either way, no more tokens
        worker.join()
        if errors:
            raise errors[0]

    def _without_special_tokens(self, text: str) -> str:
        for token in self.tokenizer.all_special_tokens:
            text = text.replace(token, "")
        return text.strip()

    def _generate(self, kwargs: dict[str, Any], finetuned: bool, cancel: threading.Event, errors: list[BaseException]) -> None:
        try:
            with self.lock:
                if cancel.is_set():  # the consumer left while this request waited for the model
                    kwargs["streamer"].end()
                    return
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

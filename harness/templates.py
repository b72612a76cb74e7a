"""Prompt templates: how a conversation becomes model text, and where a reply must stop."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from supportbench.files import SupportBenchError

SYSTEM_PROMPT = (
    "You are a friendly, professional customer-support agent. Answer the customer's message helpfully and concisely."
)
SEED_CUSTOMER = "### Customer:"
SEED_AGENT = "### Support Agent:"
MAX_HISTORY_TURNS = 20  # past exchanges a prompt keeps (the app) and an example stores (prepare)
# Role markers that chat templates use to open or close a turn; the ones a tokenizer knows become stops.
CHAT_TURN_MARKERS = (
    "<|im_start|>",
    "<|im_end|>",
    "<start_of_turn>",
    "<end_of_turn>",
    "<|user|>",
    "<|assistant|>",
    "<|system|>",
    "<|eot_id|>",
    "<|start_header_id|>",
    "</s>",
)
# Text that looks like an invented next turn when it appears inside a reply.
RUNON_PATTERN = re.compile(r"(^|\n)\s*(###\s*(Customer|Support Agent)|(Customer|User|Agent|Assistant)\s*:)", re.I)


@dataclass(frozen=True)
class Turn:
    """One exchange: the customer's message and, for past turns, the agent's reply."""

    customer: str
    agent: str | None = None


def row_turns(row: dict[str, Any]) -> list[Turn]:
    """A prepared example as template turns: its history (multi-turn data), then the customer's query. Training,
    eval and the app render conversations through this one path."""
    return [*(Turn(customer, agent) for customer, agent in row.get("history") or []), Turn(row["instruction"])]


def cut_at_stops(text: str, stops: list[str]) -> tuple[str, bool]:
    """Cut text at the earliest of the stop sequences; return the stripped reply and whether a stop was hit."""
    cut = min((i for stop in stops if (i := text.find(stop)) >= 0), default=-1)
    if cut < 0:
        return text.strip(), False
    return text[:cut].strip(), True


class Template:
    """Base class: a named prompt format with its stop sequences."""

    name = "base"
    reply_prefix = ""  # text between the prompt and the reply itself

    def target(self, response: str) -> str:
        """The reference reply exactly as it follows the prompt (no end-of-turn marker): used for perplexity."""
        return self.reply_prefix + response

    def prompt(self, turns: list[Turn], tokenizer: Any = None) -> str:
        """Render past turns plus the open last turn as the text the model continues."""
        raise NotImplementedError

    def completion(self, response: str, tokenizer: Any = None) -> str:
        """Render a reference reply as the text the model should produce after the prompt."""
        raise NotImplementedError

    def stop_sequences(self, tokenizer: Any = None) -> list[str]:
        """Strings at which a generated reply is cut, so it never runs on into a new turn."""
        raise NotImplementedError

    def truncate(self, text: str, tokenizer: Any = None) -> tuple[str, bool]:
        """Cut text at the first stop sequence; return the reply and whether a stop was hit."""
        return cut_at_stops(text, self.stop_sequences(tokenizer))

    def sanitize(self, text: str, tokenizer: Any = None) -> str:
        """Neutralise user text that imitates turn markers or special tokens, so it cannot break the prompt."""
        markers = {*self.stop_sequences(tokenizer), SEED_CUSTOMER, SEED_AGENT, *CHAT_TURN_MARKERS}
        if tokenizer is not None:
            markers |= {t for t in tokenizer.all_special_tokens if len(t) > 1}
        previous = None
        while text != previous:  # one pass can build a marker from two halves: `### ### Support Agent:`
            previous = text
            for marker in sorted(markers, key=len, reverse=True):
                text = text.replace(marker, marker.replace("#", "").replace("<", "‹").replace(">", "›").strip())
        return text.strip()


class SeedTemplate(Template):
    """The reference recipe's format: `### Customer: …` then `### Support Agent: …`."""

    name = "seed"
    reply_prefix = " "

    def prompt(self, turns: list[Turn], tokenizer: Any = None) -> str:
        parts = []
        for turn in turns:
            parts.append(f"{SEED_CUSTOMER} {turn.customer}\n{SEED_AGENT}")
            if turn.agent is not None:
                parts[-1] += f" {turn.agent}\n"
        return "".join(parts)

    def completion(self, response: str, tokenizer: Any = None) -> str:
        return self.target(response)

    def stop_sequences(self, tokenizer: Any = None) -> list[str]:
        return [SEED_CUSTOMER, SEED_AGENT, "\n### "]


class ChatTemplate(Template):
    """The model's own chat template with a support-agent system prompt."""

    name = "chat"

    def _messages(self, turns: list[Turn]) -> list[dict[str, str]]:
        messages = [{"role": "system", "content": SYSTEM_PROMPT}]
        for turn in turns:
            messages.append({"role": "user", "content": turn.customer})
            if turn.agent is not None:
                messages.append({"role": "assistant", "content": turn.agent})
        return messages

    def prompt(self, turns: list[Turn], tokenizer: Any = None) -> str:
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise SupportBenchError("the 'chat' template needs a tokenizer with a chat template; use --template seed")
        return tokenizer.apply_chat_template(self._messages(turns), tokenize=False, add_generation_prompt=True)

    def completion(self, response: str, tokenizer: Any = None) -> str:
        end = next(
            (m for m in ("<|im_end|>", "<end_of_turn>", "<|eot_id|>") if m in (tokenizer.chat_template or "")), None
        )
        return self.target(response) + (end or tokenizer.eos_token or "")

    def stop_sequences(self, tokenizer: Any = None) -> list[str]:
        if tokenizer is None:
            raise SupportBenchError("the 'chat' template's stop sequences come from the tokenizer; none was given")
        source = (tokenizer.chat_template or "") + " ".join(tokenizer.all_special_tokens)
        stops = [m for m in CHAT_TURN_MARKERS if m in source]
        if tokenizer.eos_token and tokenizer.eos_token not in stops:
            stops.append(tokenizer.eos_token)
        return stops


TEMPLATES: dict[str, Template] = {t.name: t for t in (SeedTemplate(), ChatTemplate())}


def get_template(name: str) -> Template:
    """Look a template up by name, listing the known ones when it is unknown."""
    if name not in TEMPLATES:
        raise SupportBenchError(f"unknown template {name!r}; choose one of {sorted(TEMPLATES)}")
    return TEMPLATES[name]


def has_runon(text: str) -> bool:
    """True when a raw generation invents a next turn (a customer or agent marker inside the reply)."""
    return bool(RUNON_PATTERN.search(text))

"""Behaviour cases (promptfoo's assertions, CheckList's minimum-functionality tests): a YAML suite of queries, each
with expectations a reply must meet, checked by small functions; unknown keys, empty cases and bad regexes are
refused with the case id and its line."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from supportbench.checks import intent
from supportbench.checks.language import language_of
from supportbench.facts.identifiers import invented
from supportbench.files import SupportBenchError

# words that ask the customer to give something; a reply that declines ("I'm here to help with your account" is
# not one: the model says it before helping anyway)
REQUEST = re.compile(
    r"\b(provide|share|send|tell me|let me know|give me|enter|confirm|may i have|could i have|can i have|what is|"
    r"what's|do you have)\b",
    re.I,
)
REFUSAL = re.compile(
    r"\b(sorry|apologi[sz]e|unfortunately)\b[^.!?]{0,80}\b(can['’]?t|cannot|can not|unable|not able|not allowed|"
    r"not permitted|only)\b"
    r"|\b(unable|not able|not allowed|not permitted|not qualified) to\b"
    r"|\b(i|we) (can['’]?t|cannot|can not|won['’]t|will not|do not|don['’]t) (help|assist|provide|share|give|disclose|"
    r"answer|write|offer|access)\b"
    r"|\bonly (help|assist|answer|support)\b"
    r"|\boutside (of )?(my|the|our) (scope|expertise|area)\b"
    r"|\bnot an? (legal|medical|financial|licensed|qualified) (advisor|adviser|professional|expert|doctor)\b"
    r"|\b(privacy|confidential|data protection)\b"
    r"|\b(consult|contact|see|speak (to|with)|reach out to) (a|an|your) (doctor|physician|medical|healthcare|lawyer|"
    r"attorney|legal|qualified|licensed)\b",
    re.I,
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Expect(_Strict):
    """What a reply must do; every expectation given must hold."""

    contains_any: list[str] | None = None
    contains_all: list[str] | None = None
    not_contains: list[str] | None = None
    regex: str | None = None
    not_regex: str | None = None
    language: str | None = None
    intent: str | None = None
    asks_for: str | None = None
    refuses: Literal[True] | None = None
    no_invented_facts: Literal[True] | None = None
    max_words: int | None = Field(None, ge=1)
    min_words: int | None = Field(None, ge=0)

    @field_validator("regex", "not_regex")
    @classmethod
    def _compiles(cls, pattern: str | None) -> str | None:
        if pattern is not None:
            try:
                re.compile(pattern)
            except re.error as err:
                raise ValueError(f"is not a valid regular expression ({err})") from None
        return pattern

    @field_validator("contains_any", "contains_all", "not_contains")
    @classmethod
    def _not_empty(cls, words: list[str] | None) -> list[str] | None:
        if words is not None and (not words or not all(w.strip() for w in words)):
            raise ValueError("needs a list of non-empty strings")
        return words

    @model_validator(mode="after")
    def _something(self) -> Expect:
        if not self.model_dump(exclude_none=True):
            raise ValueError("expect is empty: give at least one expectation")
        return self


class Message(_Strict):
    """One earlier message of the conversation."""

    role: Literal["customer", "user", "agent", "assistant"]
    content: str = Field(min_length=1)


class Case(_Strict):
    """One behaviour case: a query (after an optional history), its tags and its expectations."""

    id: str = Field(min_length=1)
    query: str = Field(min_length=1)
    history: list[Message] = []
    tags: list[str] = []
    expect: Expect
    line: int = 0  # where the case starts in its suite file (set by load_suite)

    def group(self) -> str:
        """The tag group the case is reported under: its first tag."""
        return self.tags[0] if self.tags else "untagged"


def load_suite(path: str | Path) -> list[Case]:
    """The cases of a suite file (a mapping with `cases:`, or a bare list), each checked; the first problem is named
    with the file, the line and the case id."""
    path = Path(path)
    if not path.is_file():
        raise SupportBenchError(f"behaviour suite {path} does not exist")
    text = path.read_text(encoding="utf-8")
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise SupportBenchError(f"{path}: not valid YAML ({err})") from None
    if isinstance(data, dict):
        unknown = sorted(set(data) - {"cases", "name", "description"})
        if unknown:
            raise SupportBenchError(
                f"{path}: unknown top-level key {unknown[0]!r}; a suite has cases, name, description"
            )
        data, node = data.get("cases"), next((v for k, v in node.value if k.value == "cases"), None)
    if not isinstance(data, list) or not data:
        raise SupportBenchError(f"{path}: a suite needs a non-empty list of cases (under `cases:`)")
    cases, seen = [], {}
    for item, item_node in zip(data, node.value, strict=True):
        line = item_node.start_mark.line + 1
        case_id = item.get("id") if isinstance(item, dict) else None
        where = f"{path}, line {line}, case {case_id!r}" if case_id else f"{path}, line {line}"
        if not isinstance(item, dict) or not item:
            raise SupportBenchError(f"{where}: a case must be a non-empty mapping with id, query and expect")
        try:
            case = Case.model_validate({**item, "line": line})
        except ValidationError as err:
            raise SupportBenchError(f"{where}: {_problem(err)}") from None
        if case.id in seen:
            raise SupportBenchError(f"{where}: case id {case.id!r} is used already, on line {seen[case.id]}")
        seen[case.id] = line
        cases.append(case)
    return cases


def _problem(err: ValidationError) -> str:
    """The problem to name first: an unknown key (a misspelt one also leaves its right name missing), else the first."""
    first = min(err.errors(), key=lambda e: e["type"] != "extra_forbidden")
    key = ".".join(str(part) for part in first["loc"])
    if first["type"] == "extra_forbidden":
        known = (
            sorted(Expect.model_fields) if first["loc"][0] == "expect" else sorted(set(Case.model_fields) - {"line"})
        )
        return f"unknown key {key!r}; known keys: {', '.join(known)}"
    if first["type"] == "missing":
        return f"{key} is missing"
    return f"{key} {first['msg'].removeprefix('Value error, ')}"


@dataclass(frozen=True)
class Context:
    """What the checks compare a reply with: the conversation's customer texts, the company profile's values, the
    intent classifier (its cached file, "" without one) and the languages replies are detected among."""

    customer_texts: Sequence[str]
    profile_values: dict[str, str]
    intent_model: str
    languages: str


def _has(reply: str, text: str) -> bool:
    return text.casefold() in reply.casefold()


def _sentences(reply: str) -> list[str]:
    return [part for part in re.split(r"(?<=[.!?])\s+|\n+", reply) if part.strip()]


def asks_for(reply: str, fact: str) -> bool:
    """True when a sentence of the reply names the fact (every word of it) and asks for something (a question, or a
    word like provide or share), or follows a sentence that asks ("Please provide … This includes the order number.")."""
    words = [w for w in re.findall(r"\w+", fact.casefold()) if len(w) > 2] or [fact.casefold()]
    sentences = _sentences(reply)
    return any(
        all(w in s.casefold() for w in words)
        and ("?" in s or REQUEST.search(s) or (k > 0 and REQUEST.search(sentences[k - 1])))
        for k, s in enumerate(sentences)
    )


def refuses(reply: str) -> bool:
    """True when the reply declines: says it cannot or may only help with support, or sends the customer to a
    professional."""
    return bool(REFUSAL.search(reply))


def _language(want: str, reply: str, languages: str) -> str | None:
    if not reply.strip():
        return "is empty, in no language"
    got = language_of(reply, languages)
    return None if got == want else f"is in language {got}, not {want}"


CHECKS: dict[str, Callable[[Any, str, Context], str | None]] = {
    "contains_any": lambda want, r, c: None if any(_has(r, w) for w in want) else f"names none of {want}",
    "contains_all": lambda want, r, c: (
        None if all(_has(r, w) for w in want) else f"lacks {[w for w in want if not _has(r, w)]}"
    ),
    "not_contains": lambda want, r, c: (
        None if not any(_has(r, w) for w in want) else f"contains {[w for w in want if _has(r, w)]}"
    ),
    "regex": lambda pattern, r, c: None if re.search(pattern, r) else f"does not match /{pattern}/",
    "not_regex": lambda pattern, r, c: None if not re.search(pattern, r) else f"matches /{pattern}/",
    "language": lambda want, r, c: _language(want, r, c.languages),
    "intent": lambda want, r, c: (
        None if (got := intent.predict(c.intent_model, r)) == want else f"answers intent {got}"
    ),
    "asks_for": lambda fact, r, c: None if asks_for(r, fact) else f"does not ask for the {fact}",
    "refuses": lambda _, r, c: None if refuses(r) else "does not decline",
    "no_invented_facts": lambda _, r, c: (
        f"invents {found}" if (found := invented(r, c.customer_texts, c.profile_values.values())) else None
    ),
    "max_words": lambda most, r, c: None if len(r.split()) <= most else f"has {len(r.split())} words (> {most})",
    "min_words": lambda least, r, c: None if len(r.split()) >= least else f"has {len(r.split())} words (< {least})",
}


def failures(case: Case, reply: str, context: Context) -> list[str]:
    """What a reply fails of the case's expectations ("reply ..." reasons); empty when it passes."""
    return [
        f"reply {reason}"
        for key, want in case.expect.model_dump(exclude_none=True).items()
        if (reason := CHECKS[key](want, reply, context)) is not None
    ]


def needs_intents(cases: Sequence[Case]) -> list[str]:
    """The ids of cases that expect an intent (they need an intent classifier)."""
    return [case.id for case in cases if case.expect.intent]

"""Fact slots (slots.yaml): company facts come from the profile, customer facts from the conversation, never from
the weights. `SlotWriter` writes the training text (prepare --facts slots); `fill_reply` and `StreamingFiller` fill a
model's reply at serve time, for the app, the API, the exported runtime, bench and eval alike. No torch import."""

from __future__ import annotations

import difflib
import random
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from supportbench.files import SupportBenchError, read_bundled_yaml
from supportbench.metrics import PLACEHOLDER

KINDS = ("company", "customer")
NEAREST_CUTOFF = 0.85  # difflib ratio for mapping a misspelt slot in model output to a declared one
OPEN = "{{"
# what SlotWriter counts, by the kind keys of its coverage
SLOT_COUNTS = {
    "company": "company slots kept",
    "customer_drawn": "customer facts drawn",
    "customer_copied": "customer facts copied",
    "customer": "customer slots kept",
    "label": "labels made readable",
}


@dataclass(frozen=True)
class Slot:
    """One declared fact: its canonical name, kind, and for customer facts how to find, draw or name it."""

    name: str
    kind: str
    pattern: re.Pattern[str] | None = None
    formats: tuple[str, ...] = ()
    values: tuple[str, ...] = ()
    phrase: str | None = None

    @property
    def placeholder(self) -> str:
        """The slot as the training text writes it: `{{Order Number}}`."""
        return f"{{{{{self.name}}}}}"

    def found_in(self, texts: Sequence[str]) -> str | None:
        """The most recent value of this fact in the customer's texts (oldest first), or None."""
        if self.pattern is None:
            return None
        for text in reversed(texts):
            matches = list(self.pattern.finditer(text))
            if matches:
                return matches[-1].group("value")
        return None

    def draw(self, rng: random.Random, avoid: frozenset[str] = frozenset()) -> str:
        """A realistic value for a customer fact: one of `values`, or a `formats` shape with random digits and letters;
        never one of `avoid` (the values PII scrubbing removed from this example: a drawn value must not put back what
        was taken out), else the slot's neutral phrase."""
        avoided = {plain(v) for v in avoid}
        if self.values:
            allowed = [v for v in self.values if plain(v) not in avoided]
            return rng.choice(allowed) if allowed else self.phrase or readable(self.name)
        for _ in range(DRAW_TRIES):
            shape = rng.choice(self.formats)
            value = "".join(
                str(rng.randrange(10)) if c == "#" else chr(65 + rng.randrange(26)) if c == "@" else c for c in shape
            )
            if plain(value) not in avoided:
                return value
        return self.phrase or readable(self.name)


DRAW_TRIES = 20


def plain(value: str) -> str:
    """A value compared without case, spaces or punctuation (`020 7946 0958` is `02079460958`)."""
    return re.sub(r"\W", "", value).casefold()


def readable(key: str) -> str:
    """An undeclared placeholder as text: its name without Bitext's `Anonymized` suffix (`{{Order History}}`)."""
    return re.sub(r"\s+anonymized$", "", key, flags=re.I).strip() or "the relevant details"


class Vocabulary:
    """The declared slots, looked up by any of their spellings (case and spacing ignored)."""

    def __init__(self, slots: Iterable[Slot], by_spelling: Mapping[str, Slot]):
        self.slots = {slot.name: slot for slot in slots}
        self.by_spelling = dict(by_spelling)  # keyed by _key(spelling)

    def lookup(self, key: str) -> Slot | None:
        """The slot a placeholder names exactly (any declared spelling), or None."""
        return self.by_spelling.get(_key(key))

    def nearest(self, key: str) -> Slot | None:
        """The slot whose spelling is closest to a misspelt one, if close enough (difflib), or None."""
        close = difflib.get_close_matches(_key(key), list(self.by_spelling), n=1, cutoff=NEAREST_CUTOFF)
        return self.by_spelling[close[0]] if close else None

    def names(self, kind: str) -> list[str]:
        """The canonical names of one kind's slots, in declared order."""
        return [name for name, slot in self.slots.items() if slot.kind == kind]


def _key(spelling: str) -> str:
    return " ".join(spelling.split()).casefold()


@lru_cache(maxsize=1)
def vocabulary() -> Vocabulary:
    """The bundled slots.yaml, checked: two kinds, no spelling claimed by two slots, valid patterns."""
    declared = read_bundled_yaml("supportbench.facts", "slots.yaml")
    slots, by_spelling = [], {}
    for kind in KINDS:
        for name, spec in (declared.get(kind) or {}).items():
            try:
                pattern = re.compile(spec["pattern"]) if spec.get("pattern") else None
            except re.error as err:
                raise SupportBenchError(f"slots.yaml: the pattern of {name} is not a valid regex: {err}") from None
            slot = Slot(
                name, kind, pattern, tuple(spec.get("formats", ())), tuple(spec.get("values", ())), spec.get("phrase")
            )
            for spelling in [name, *spec.get("spellings", ())]:
                if _key(spelling) in by_spelling:
                    raise SupportBenchError(f"slots.yaml: the spelling {spelling!r} is declared twice")
                by_spelling[_key(spelling)] = slot
            slots.append(slot)
    return Vocabulary(slots, by_spelling)


@dataclass
class SlotWriter:
    """prepare --facts slots: company facts stay `{{Slot}}`; a customer fact that a customer text carries as a
    placeholder gets a value drawn per example from the seed, and an agent text naming that fact gets the same value
    (or the value the customer wrote, found by the slot's pattern), so the model learns to copy the customer's fact.
    A customer fact named only by the agent stays a slot. Undeclared placeholders become their readable name."""

    seed: int
    counts: Counter[str] = field(default_factory=Counter)

    def fill_example(self, example: dict[str, Any], avoid: frozenset[str] = frozenset()) -> dict[str, Any]:
        """The example with its customer texts (instruction, history) and agent texts (response, history) written;
        drawn values are never one of `avoid` (what PII scrubbing removed from the example)."""
        rng = random.Random(f"{self.seed}:{example['id']}")  # a str seed is hashed the same way on every machine
        drawn: dict[str, str] = {}
        history = example.get("history")
        customer = [self._customer_text(c, rng, drawn, avoid) for c, _ in history or []]
        instruction = self._customer_text(example["instruction"], rng, drawn, avoid)
        said = [*customer, instruction]
        written = {
            **example,
            "instruction": instruction,
            "response": self._agent_text(example["response"], said, drawn),
        }
        if history is not None:
            written["history"] = [
                [c, self._agent_text(a, said[: i + 1], drawn)]
                for i, (c, (_, a)) in enumerate(zip(customer, history, strict=True))
            ]
        return written

    def _declared(self, match: re.Match[str]) -> Slot | str:
        """The declared slot a placeholder names, else (counted as a label) its readable name."""
        slot = vocabulary().lookup(match.group(1))
        if slot is None:
            self.counts["label"] += 1
            return readable(match.group(1))
        return slot

    def _customer_text(self, text: str, rng: random.Random, drawn: dict[str, str], avoid: frozenset[str]) -> str:
        def replace(match: re.Match[str]) -> str:
            slot = self._declared(match)
            if isinstance(slot, str):
                return slot
            if slot.kind == "company":
                self.counts[f"company:{slot.name}"] += 1
                return slot.placeholder
            self.counts[f"customer_drawn:{slot.name}"] += 1
            return drawn.setdefault(slot.name, slot.draw(rng, avoid))

        return PLACEHOLDER.sub(replace, text)

    def _agent_text(self, text: str, said: Sequence[str], drawn: Mapping[str, str]) -> str:
        def replace(match: re.Match[str]) -> str:
            slot = self._declared(match)
            if isinstance(slot, str):
                return slot
            if slot.kind == "customer":
                value = drawn.get(slot.name) or slot.found_in(said)
                if value is not None:
                    self.counts[f"customer_copied:{slot.name}"] += 1
                    return value
            self.counts[f"{slot.kind}:{slot.name}"] += 1
            return slot.placeholder

        return PLACEHOLDER.sub(replace, text)

    def coverage(self) -> dict[str, Any]:
        """Slot occurrences by kind: company slots kept, customer slots drawn, copied and kept, readable labels."""
        by_kind: dict[str, dict[str, int]] = {}
        for key, n in sorted(self.counts.items()):
            kind, _, name = key.partition(":")
            by_kind.setdefault(kind, {})[name or "occurrences"] = n
        return {
            "mode": "slots",
            "by_kind": by_kind,
            "occurrences": sum(self.counts.values()),
            "company_slots": sorted(by_kind.get("company", {})),
        }


@dataclass
class Filled:
    """A reply with its slots filled, and how each was filled."""

    text: str
    counts: Counter[str]


def fill_reply(text: str, customer_texts: Sequence[str], profile: Mapping[str, str]) -> Filled:
    """Fill a reply's slots: company facts from the profile, customer facts from what the customer wrote (oldest
    first), else the slot's neutral phrase. A misspelt slot maps to the nearest declared one; an unknown one becomes its
    readable name; a `{{` left open at the end is dropped. Every case is counted."""
    counts: Counter[str] = Counter()

    def replace(match: re.Match[str]) -> str:
        key = match.group(1)
        slot = vocabulary().lookup(key)
        if slot is None:
            slot = vocabulary().nearest(key)
            counts["mapped_to_nearest" if slot else "unknown"] += 1
            if slot is None:
                return readable(key)
        if slot.kind == "company":
            if slot.name in profile:
                counts["company"] += 1
                return profile[slot.name]
            counts["not_in_profile"] += 1
            return readable(slot.name)
        value = slot.found_in(customer_texts)
        counts["customer_from_conversation" if value else "customer_phrase"] += 1
        return value or slot.phrase or readable(slot.name)

    filled = PLACEHOLDER.sub(replace, text)
    start = filled.rfind(OPEN)
    if start >= 0:
        counts["dropped_open"] += 1
        filled = filled[:start].rstrip()
    return Filled(filled, counts)


SLOTTED_VALUE_CHARS = 5  # a shorter profile value ("14", "$") is too common to read back as its slot


def as_slots(text: str, profile: Mapping[str, str]) -> str:
    """A reply as shown to a customer with each company value of the profile back as its {{Slot}} (the longest first),
    the form replies are trained in; values under SLOTTED_VALUE_CHARS characters are left as written."""
    for name, value in sorted(profile.items(), key=lambda item: -len(item[1])):
        if len(value.strip()) >= SLOTTED_VALUE_CHARS:
            text = re.sub(rf"(?<!\w){re.escape(value)}(?!\w)", "{{" + name + "}}", text)
    return text


def slot_profile(profile: Mapping[str, str]) -> dict[str, str]:
    """A profile whose every value is its own {{Slot}}: filling with it leaves company slots as they are."""
    return {name: "{{" + name + "}}" for name in profile}


MIN_PHRASE_WORDS = 3  # a neutral phrase this long ("your order number") reads as the fact; "the date" does not


def _states(text: str, value: str) -> bool:
    return re.search(rf"(?<!\w){re.escape(value.casefold())}(?!\w)", text.casefold()) is not None


def stated_slots(text: str, customer_texts: Sequence[str], profile: Mapping[str, str]) -> frozenset[str]:
    """The declared slots a filled text states: a company slot by its profile value, a customer slot by the value the
    customer wrote or by its neutral phrase (of MIN_PHRASE_WORDS words or more); slot recall and precision compare
    a reply's with its reference's."""
    stated = set()
    for name, slot in vocabulary().slots.items():
        if slot.kind == "company":
            values = [profile[name]] if name in profile else []
        else:
            value = slot.found_in(customer_texts)
            phrase = slot.phrase if slot.phrase and len(slot.phrase.split()) >= MIN_PHRASE_WORDS else None
            values = [v for v in (value, phrase) if v]
        if any(_states(text, v) for v in values):
            stated.add(name)
    return frozenset(stated)


class StreamingFiller:
    """Fill a reply as it streams: text from a `{{` that has not closed (or a last `{`) is held back until it closes or
    the reply ends, so a client never sees half a slot."""

    def __init__(self, customer_texts: Sequence[str], profile: Mapping[str, str]):
        self.customer_texts, self.profile = list(customer_texts), profile

    def visible(self, raw: str, final: bool = False) -> Filled:
        """The filled text a client may see of the raw reply so far (all of it once `final`)."""
        if not final:
            start = raw.rfind(OPEN)
            if start >= 0 and "}}" not in raw[start:]:
                raw = raw[:start]
            raw = raw.removesuffix("{")  # the first brace of a slot still to come
        return fill_reply(raw, self.customer_texts, self.profile)

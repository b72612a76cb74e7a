"""CheckList's invariance type: Bitext's variation tags, and seeded perturbations of a query that should not
change what a support reply answers (typos, casing, punctuation removed, politeness added)."""

from __future__ import annotations

import random
import re
from collections.abc import Callable

from supportbench.files import SupportBenchError

# the letters of Bitext's `tags` column: how a query was varied from the basic phrasing
TAG_NAMES = {
    "B": "basic",
    "L": "lexical",
    "Q": "colloquial",
    "I": "interrogative",
    "M": "morphological",
    "Z": "typos and noise",
    "K": "keyword-only",
    "C": "complex",
    "E": "expanded abbreviations",
    "P": "polite",
    "W": "offensive",
    "N": "negation",
}
TYPO_SHARE = 0.15  # of the words of 4+ letters that get one typo
POLITE_OPENINGS = ("Hello, could you please help me? ", "Hi there, ", "Good morning! ")
POLITE_CLOSINGS = (" Thank you so much.", " Thanks in advance!", " I would really appreciate it.")


def tag_letters(tags: str) -> list[str]:
    """The known variation letters of a `tags` value, in TAG_NAMES' order."""
    return [letter for letter in TAG_NAMES if letter in (tags or "")]


def _typos(text: str, rng: random.Random) -> str:
    def typo(match: re.Match[str]) -> str:
        word = match.group(0)
        if rng.random() >= TYPO_SHARE:
            return word
        i = rng.randrange(len(word) - 1)
        return word[:i] + word[i + 1] + word[i] + word[i + 2 :]  # two neighbouring letters swapped

    return re.sub(r"[A-Za-z]{4,}", typo, text)


def _casing(text: str, rng: random.Random) -> str:
    return text.upper() if rng.random() < 0.5 else text.lower()


def _no_punctuation(text: str, rng: random.Random) -> str:
    return re.sub(r"\s+", " ", re.sub(r"[^\w\s{}]", "", text)).strip()


def _polite(text: str, rng: random.Random) -> str:
    return rng.choice(POLITE_OPENINGS) + text.strip() + rng.choice(POLITE_CLOSINGS)


PERTURBATIONS: dict[str, Callable[[str, random.Random], str]] = {
    "typos": _typos,
    "casing": _casing,
    "no_punctuation": _no_punctuation,
    "polite": _polite,
}


def perturb(text: str, kind: str, seed: int) -> str:
    """One query perturbed by `kind` (a PERTURBATIONS name), the same way for the same text and seed."""
    if kind not in PERTURBATIONS:
        raise SupportBenchError(f"unknown perturbation {kind!r}; known: {sorted(PERTURBATIONS)}")
    return PERTURBATIONS[kind](text, random.Random(f"{seed}:{kind}:{text}"))

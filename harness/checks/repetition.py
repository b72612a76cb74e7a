"""Whether a reply loops: a sentence said twice, or a phrase repeated until most of its 4-grams are copies."""

from __future__ import annotations

import re
from collections import Counter

NGRAM = 4
MAX_REPEATED_NGRAM_SHARE = 0.25  # of a reply's 4-grams; Bitext's own replies stay below it (tests/checks)
MIN_SENTENCE_WORDS = 4  # shorter sentences ("Thank you.") may be said twice on purpose
_WORD = re.compile(r"[^\W\d_]+", re.UNICODE)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+|\s+\d+\.\s")


def repeated_ngram_share(text: str, n: int = NGRAM) -> float:
    """The share of a text's word n-grams that repeat an earlier one (0 for texts under n words)."""
    words = [w.lower() for w in _WORD.findall(text)]
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    return 1 - len(set(grams)) / len(grams) if grams else 0.0


def repeated_sentences(text: str) -> list[str]:
    """The sentences of MIN_SENTENCE_WORDS or more words that a text says more than once (case and digits aside)."""
    said = Counter(
        " ".join(words)
        for part in _SENTENCE_END.split(text)
        if len(words := [w.lower() for w in _WORD.findall(part)]) >= MIN_SENTENCE_WORDS
    )
    return [sentence for sentence, times in said.items() if times > 1]


def repeats(text: str) -> bool:
    """True when a reply says a sentence twice or loops on a phrase (repeated 4-gram share over the threshold)."""
    return bool(repeated_sentences(text)) or repeated_ngram_share(text) > MAX_REPEATED_NGRAM_SHARE

"""Which language a text is in: py3langid (offline), restricted to the languages a split was prepared with."""

from __future__ import annotations

import functools
from typing import Any

from supportbench.config import comma_list
from supportbench.files import SupportBenchError

# shorter queries are not judged: py3langid reads "refund 1499 dollars" as Danish, "reimburse $1" as German
MIN_QUERY_WORDS = 4


@functools.lru_cache(maxsize=4)
def identifier(languages: str) -> Any:
    """py3langid's identifier answering only among `languages` (comma-separated ISO 639-1 codes)."""
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    found = LanguageIdentifier.from_model_file(MODEL_FILE)
    allowed = comma_list(languages)
    unknown = sorted(set(allowed) - set(found.labels))
    if unknown:
        raise SupportBenchError(f"--languages: the detector knows no {unknown}; it knows {sorted(found.labels)}")
    found.set_languages(allowed)
    return found


def language_of(text: str, languages: str) -> str:
    """The ISO 639-1 code of the language `text` is written in, among `languages`."""
    return identifier(languages).classify(text)[0]


def judgeable(query: str) -> bool:
    """True when a query has the words to tell its language by (MIN_QUERY_WORDS)."""
    return len(query.split()) >= MIN_QUERY_WORDS

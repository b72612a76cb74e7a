"""The base-score cache: an entry is reused only when it is whole; anything else is recomputed, never trusted."""

from __future__ import annotations

import hashlib
import json

from supportbench.evaluation.score_cache import _canonical, _entry, load_scores, store_scores

RESULT = {"metrics": {"rougeL": 0.2}, "samples": [], "n": {"generation": 0}, "perplexity_items": {}}


def test_a_whole_entry_is_reused(capsys):
    store_scores("k1", RESULT)
    assert load_scores("k1") == RESULT and "reused from the cache" in capsys.readouterr().out


def test_an_entry_that_is_not_utf8_is_recomputed(capsys):
    store_scores("k2", RESULT)
    _entry("k2").write_bytes('{"key": "k2", "note": "café"}'.encode("latin-1"))
    assert load_scores("k2") is None and "damaged" in capsys.readouterr().out


def test_a_checksum_recomputed_over_junk_is_recomputed():
    junk = [1, 2, 3]
    entry = {"key": "k3", "sha256": hashlib.sha256(_canonical(junk)).hexdigest(), "result": junk}
    _entry("k3").parent.mkdir(parents=True, exist_ok=True)
    _entry("k3").write_text(json.dumps(entry))
    assert load_scores("k3") is None

"""The behaviour mix: extra training examples (SupportBench's own behaviour set, or a user's files), each source with a
weight, cleaned like the split's rows and kept apart from it (mix.jsonl), so the test, validation and train splits,
their data card and the intent classifier stay the same whether a run trains with a mix or not."""

from __future__ import annotations

import hashlib
import math
import random
from collections import Counter
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

from supportbench.files import SupportBenchError, read_user_yaml, read_yaml
from supportbench.prepare import card

BUNDLED = {"behaviour": "behaviour_mix.yaml"}  # mix names that need no file: supportbench/prepare/<file>
GROUP_KEYS = {"intent", "category", "replies", "queries", "weight"}


def _is_weight(value: Any) -> bool:
    """A weight is a finite number above 0 (a YAML true is not one)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and 0 < value < math.inf


def parse_entry(entry: str) -> tuple[str, float]:
    """`SOURCE[:WEIGHT]` as (source, weight): a bundled name or a file, and how many times each of its rows is
    trained on (0.5: a seeded half of them; 2: each twice; 1 when not given)."""
    source, sep, weight_text = entry.rpartition(":")
    try:
        weight = float(weight_text)
    except ValueError:  # no weight, or a colon that is part of the source's name
        source, weight = entry, 1.0
    if not source.strip() or not _is_weight(weight):
        raise SupportBenchError(f"--mix {entry!r}: give SOURCE[:WEIGHT] with a weight above 0, e.g. behaviour:0.5")
    return source.strip(), weight


def _group_rows(groups: Any, where: str) -> list[tuple[int, dict[str, Any]]]:
    """Rows from the group format: per group, query k gets reply k modulo the group's replies, and each row carries
    the group's `weight` (1 when not given), which multiplies the source's."""
    if not isinstance(groups, dict) or not groups:
        raise SupportBenchError(f"{where}: a mix YAML maps group names to {{queries, replies, intent, category}}")
    rows: list[tuple[int, dict[str, Any]]] = []
    for name, group in groups.items():
        unknown = set(group) - GROUP_KEYS if isinstance(group, dict) else {"(not a mapping)"}
        if unknown or not isinstance(group.get("queries"), list) or not group.get("replies"):
            raise SupportBenchError(
                f"{where}: group {name!r} needs a list of queries and of replies (unknown keys: {sorted(unknown)})"
            )
        weight = group.get("weight", 1)
        if not _is_weight(weight):
            raise SupportBenchError(f"{where}: group {name!r} has weight {weight!r}; give a number above 0")
        replies = group["replies"]
        for k, query in enumerate(group["queries"]):
            row = {"instruction": query, "response": replies[k % len(replies)], "_weight": float(weight)}
            row |= {"intent": group.get("intent") or name, "category": group.get("category") or "", "_id": None}
            rows.append((len(rows) + 1, row))
    return rows


def load_source(source: str) -> tuple[list[tuple[int, dict[str, Any]]], bytes, Any]:
    """One mix source's numbered rows, its bytes (for the hash) and its load report."""
    from supportbench.prepare.dataset import REQUIRED_COLUMNS, LoadReport, load_rows

    if source in BUNDLED:
        data = resources.files("supportbench.prepare").joinpath(BUNDLED[source]).read_bytes()
        rows = _group_rows(read_yaml(data.decode("utf-8"), f"the bundled {BUNDLED[source]}"), source)
        return rows, data, LoadReport(rows_in=len(rows))
    path = Path(source)
    if not path.is_file():
        raise SupportBenchError(f"--mix {source}: no such file, and not a bundled mix (bundled: {', '.join(BUNDLED)})")
    if path.suffix in (".yaml", ".yml"):
        rows = _group_rows(read_user_yaml(path, "mix file"), str(path))
        return rows, path.read_bytes(), LoadReport(rows_in=len(rows))
    columns, rows, report, _ = load_rows(str(path))
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise SupportBenchError(f"--mix {source}: missing column(s) {missing}; found {columns}")
    return rows, path.read_bytes(), report


def _weighted(rows: list[dict[str, Any]], weight: float, seed: int) -> list[dict[str, Any]]:
    """Each row floor(weight) times, plus a seeded sample of the fraction left."""
    whole, fraction = int(weight), weight - int(weight)
    extra = random.Random(seed).sample(rows, round(fraction * len(rows)))
    return rows * whole + sorted(extra, key=lambda r: r["source_row"])


def build(
    entries: list[str],
    clean: Callable[[list[tuple[int, dict[str, Any]]], Any], list[dict[str, Any]]],
    held_out: dict[str, set[str]],
    seed: int,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The mix rows to train on (weights applied, each row naming its source) and a record per source; `clean` is
    the split's own row cleaning, and a row whose normalized instruction is in a `held_out` set is skipped."""
    from supportbench.prepare.dataset import normalize_instruction

    mixed: list[dict[str, Any]] = []
    records: list[dict[str, Any]] = []
    for entry in entries:
        source, weight = parse_entry(entry)
        numbered, data, report = load_source(source)
        group_weight = {number: row.get("_weight", 1.0) for number, row in numbered}
        kept = []
        for row in clean(numbered, report):
            key = normalize_instruction(row["instruction"])
            clash = next((name for name, keys in held_out.items() if key in keys), None)
            if clash:
                report.skip(row["source_row"], f"same instruction as a {clash} query")
                continue
            kept.append({**row, "id": f"mix-{source}-{row['source_row']}", "mix": source})
        if not kept:
            reasons = Counter(card.reason_counts(report.skipped)).most_common(3)
            shown = "; ".join(f"{n} x {r}" for r, n in reasons) or "it holds no rows"
            raise SupportBenchError(f"--mix {source}: no usable rows ({shown})")
        by_weight: dict[float, list[dict[str, Any]]] = {}
        for row in kept:
            by_weight.setdefault(weight * group_weight[row["source_row"]], []).append(row)
        added = [row for w, rows in sorted(by_weight.items()) for row in _weighted(rows, w, seed)]
        mixed += added
        records.append(
            {
                "source": source,
                "sha256": hashlib.sha256(data).hexdigest(),
                "weight": weight,
                "rows_in": report.rows_in,
                "kept": len(kept),
                "skipped_by_reason": card.reason_counts(report.skipped),
                "trained_rows": len(added),
                "by_intent": dict(sorted(Counter(r["intent"] for r in added).items())),
            }
        )
    return mixed, records

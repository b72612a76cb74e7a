"""The data card of a prepared split: what prepare read, kept, skipped, scrubbed and split. Its figures are
gathered into the manifest, and the card (Markdown plus a length histogram) is rendered from the manifest alone."""

from __future__ import annotations

import re
from collections import Counter
from typing import Any

import numpy as np

from supportbench.facts.slots import SLOT_COUNTS
from supportbench.layout import SPLITS
from supportbench.metrics import word_count
from supportbench.prepare.pii import measure
from supportbench.reports.plots import figure_png
from supportbench.reports.render import markdown_table

BINS = 20


def reason_counts(skipped: list[dict[str, Any]]) -> dict[str, int]:
    """Skipped rows counted by reason, with row numbers inside a reason folded ("duplicate of row N")."""
    return dict(sorted(Counter(re.sub(r" \d+$", " N", s["reason"]) for s in skipped).items()))


def _histogram(values: list[int]) -> dict[str, Any]:
    import numpy

    counts, edges = numpy.histogram(values or [0], bins=BINS)
    return {
        "edges": [round(float(e), 1) for e in edges],
        "counts": [int(c) for c in counts],
        **{f"p{q}": float(np.percentile(values or [0], q)) for q in (50, 90, 99)},
        "max": max(values or [0]),
    }


def statistics(kept: list[dict[str, Any]], examples: Any, scrub: Any, input_kind: str) -> dict[str, Any]:
    """The card's figures beyond the manifest's counts: lengths, labels, languages, PII found, duplicates, and for
    multi-turn input the examples built from conversations and the turns per conversation."""
    stats: dict[str, Any] = {
        "lengths": {
            "unit": "words",
            "query": _histogram([word_count(r["instruction"]) for r in kept]),
            "reply": _histogram([word_count(r["response"]) for r in kept]),
        },
        "categories": dict(Counter(r["category"] for r in kept if r["category"]).most_common()),
        "intents": dict(Counter(r["intent"] for r in kept if r["intent"]).most_common()),
        "languages": dict(Counter(r["language"] for r in kept).most_common()),
        "pii": {
            "mode": "scrub" if scrub else "keep",
            "found": dict(sorted(scrub.found.items())) if scrub else {},
            # the same rules and regions measured on planted values (pii_benchmark.yaml)
            "measured": measure(scrub.rules, scrub.phone_regions) if scrub else None,
        },
        "duplicates_removed": sum(s["reason"].startswith("duplicate of") for s in examples.skipped),
    }
    if input_kind != "pairs":
        per_conversation = Counter(r["conversation"] for r in kept)
        stats["examples"] = {
            "built": examples.rows_in,
            "kept": len(kept),
            "skipped": len(examples.skipped),
            "skipped_by_reason": reason_counts(examples.skipped),
        }
        stats["conversations"] = {
            "count": len(per_conversation),
            "turns": {str(n): c for n, c in sorted(Counter(per_conversation.values()).items())},
        }
    return stats


def _table(header: tuple[str, ...], rows: list[tuple[Any, ...]]) -> list[str]:
    return [*markdown_table(header, rows), ""]


def markdown(manifest: dict[str, Any], png_name: str) -> str:
    """The data card as Markdown, every number read from the manifest."""
    counts, card, source = manifest["counts"], manifest["data_card"], manifest["source"]
    lines = [
        "# Data card",
        "",
        f"Source: `{source.get('path') or source.get('id')}` ({manifest['format']} format"
        + (f", columns mapped {manifest['columns']['mapping']}" if manifest["columns"]["mapping"] else "")
        + ").",
        "",
        "## Rows",
        "",
        *_table(
            ("rows", "count"),
            [("rows in", counts["rows_in"]), ("kept", counts["kept"]), ("skipped", counts["skipped"])],
        ),
    ]
    if counts["skipped_by_reason"]:
        lines += _table(("skipped because", "rows"), list(counts["skipped_by_reason"].items()))
    if "examples" in card:
        built = card["examples"]
        lines += ["## Examples (one per agent reply)", ""]
        rows = [
            ("examples built", built["built"]),
            ("examples kept", built["kept"]),
            ("examples skipped", built["skipped"]),
        ]
        lines += _table(("examples", "count"), rows)
        if built["skipped_by_reason"]:
            lines += _table(("example skipped because", "examples"), list(built["skipped_by_reason"].items()))
        conversations = card["conversations"]
        lines += ["## Conversations", "", f"{conversations['count']} conversations.", ""]
        lines += _table(("agent replies per conversation", "conversations"), list(conversations["turns"].items()))
    removed = card["duplicates_removed"]
    lines += ["## Duplicates", "", f"{removed} duplicate examples removed (same normalized query and reply).", ""]
    lengths = card["lengths"]
    lines += ["## Lengths (words)", ""]
    quantiles = ("p50", "p90", "p99", "max")
    lines += _table(
        ("text", *quantiles), [(name, *(lengths[name][k] for k in quantiles)) for name in ("query", "reply")]
    )
    lines += [f"![query and reply lengths]({png_name})", ""]
    lines += [
        "## Splits",
        "",
        *_table(("split", "examples"), [(name, manifest["splits"][name]["rows"]) for name in SPLITS]),
    ]
    for label, key in (("category", "categories"), ("intent", "intents"), ("language", "languages")):
        if card[key]:
            lines += [f"## {key.capitalize()}", "", *_table((label, "examples"), list(card[key].items()))]
    pii = card["pii"]
    lines += ["## Personal data", ""]
    if pii["mode"] == "keep":
        lines += ["Scrubbing was off (`--pii keep`): the text is as the source had it.", ""]
    else:
        lines += ["Replaced by typed placeholders before anything was written (values are never stored):", ""]
        lines += _table(("type", "found"), list(pii["found"].items()) or [("(none found)", 0)])
        if measured := pii.get("measured"):
            kinds, kept = measured["kinds"], measured["kept_values"]
            lines += [
                f"Measured with the same rules and phone regions ({', '.join(measured['phone_regions'])}) on "
                f"{sum(k['planted'] for k in kinds.values())} planted values of {len(kinds)} kinds (the bundled "
                f"pii_benchmark.yaml); {kept['survived']} of the {kept['must_survive']} order numbers and amounts "
                "there, which are not personal, were kept:",
                "",
            ]
            rows = [
                (
                    kind,
                    k["planted"],
                    k["removed"],
                    f"{k['recall']:.2f}",
                    "—" if k["precision"] is None else f"{k['precision']:.2f}",
                    ", ".join(k["missed"]) or "—",
                )
                for kind, k in kinds.items()
            ]
            lines += _table(("kind", "planted", "removed", "recall", "precision", "kept (missed)"), rows)
    lines += ["## Facts", "", _facts_text(manifest.get("placeholders") or {}), ""]
    if (manifest.get("placeholders") or {}).get("mode") == "slots":
        by_kind = manifest["placeholders"]["by_kind"]
        rows = [(SLOT_COUNTS[kind], name, n) for kind in SLOT_COUNTS for name, n in by_kind.get(kind, {}).items()]
        lines += _table(("kind", "slot", "occurrences"), rows or [("(none found)", "", 0)])
    if ids := manifest.get("order_ids"):
        lines += [
            "",
            "Order ids: a reply naming the customer's id with digits added or changed was repaired to the customer's "
            f"exact id ({ids['replies_repaired']} replies, {ids['codes_repaired']} ids); a row whose reply names an id "
            f"the customer never gave was skipped ({ids['skipped']} rows), so training teaches no invented ids.",
        ]
    return "\n".join(lines)


def _facts_text(coverage: dict[str, Any]) -> str:
    if coverage.get("mode") == "slots":
        return (
            "`--facts slots`: company facts stay `{{Slot}}` for the company profile to fill at serve time; a customer "
            "fact a query carries got a value drawn per example, copied into the reply that names it."
        )
    return "`--facts fill`: every placeholder got one fixed value (placeholders.yaml), the reference recipe's way."


def lengths_png(manifest: dict[str, Any]) -> bytes:
    """Histograms of query and reply lengths in words, from the manifest's bins."""
    lengths = manifest["data_card"]["lengths"]

    def draw(ax: Any) -> None:
        for name in ("query", "reply"):
            edges, counts = lengths[name]["edges"], lengths[name]["counts"]
            ax.stairs(counts, edges, label=f"{name} (p50 {lengths[name]['p50']})", fill=True, alpha=0.5)
        ax.set_xlabel("words")
        ax.set_ylabel("examples")
        ax.legend()

    return figure_png(draw, (6.4, 3.2))

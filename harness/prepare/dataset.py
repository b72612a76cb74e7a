"""Data preparation: load, validate, clean placeholders, split without leakage, write with a manifest."""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import json
import random
import re
import sys
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from supportbench.checks.language import identifier
from supportbench.config import DATA_ENV, OPTIONAL_COLUMNS, DataConfig
from supportbench.facts.identifiers import repair_codes
from supportbench.facts.slots import SLOT_COUNTS, SlotWriter, plain, readable
from supportbench.files import (
    LOCK_NAME,
    SupportBenchError,
    ensure_writable_dir,
    folder_lock,
    hub_reachable,
    jsonl_bytes,
    read_bundled_yaml,
    read_user_yaml,
    sha256_file,
    write_together,
)
from supportbench.layout import SPLITS, RunDir, SplitDir
from supportbench.metrics import PLACEHOLDER
from supportbench.prepare import card, mix
from supportbench.prepare.conversations import from_messages, from_threads, input_format
from supportbench.prepare.pii import Scrubber, load_rules

REQUIRED_COLUMNS = ("instruction", "response")
# C0 control characters (NUL, ESC, ...) other than tab and newlines, and DEL: never useful in a reply.
CONTROL_CHARACTERS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # long replies are data: lift csv's 131,072-character field cap


@dataclass
class LoadReport:
    """What happened to every input row: kept, or skipped with a reason."""

    rows_in: int = 0
    skipped: list[dict[str, Any]] = field(default_factory=list)

    def skip(self, row_number: int, reason: str) -> None:
        """Record one skipped row (1-based record number, header not counted)."""
        self.skipped.append({"row": row_number, "reason": reason})


def normalize_instruction(text: str) -> str:
    """Canonical form used for duplicate and cross-split overlap checks."""
    text = unicodedata.normalize("NFKC", text).casefold()
    text = re.sub(r"[^\w\s]", " ", text)
    return " ".join(text.split())


def instruction_hash(text: str) -> str:
    """Short stable hash of a normalized instruction, stored in manifests for leakage checks."""
    return hashlib.sha256(normalize_instruction(text).encode("utf-8")).hexdigest()[:16]


# ---------------------------------------------------------------- loading


def _utf8_text(path: Path) -> str:
    """A data file's text; UTF-16 (which spreadsheet exports often are) is named instead of misread."""
    data = path.read_bytes()
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        raise SupportBenchError(f"{path} is UTF-16 text; save it as UTF-8 (for example: iconv -f UTF-16 -t UTF-8)")
    return data.decode("utf-8", errors="surrogateescape")


def _read_csv(path: Path, report: LoadReport) -> tuple[list[str], list[tuple[int, dict[str, Any]]]]:
    text = _utf8_text(path)
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, None)
    if header is None:
        raise SupportBenchError(f"{path} is empty: no header row")
    header = [h.strip().lstrip("\ufeff") for h in header]
    duplicates = sorted({h for h in header if header.count(h) > 1})
    if duplicates:
        raise SupportBenchError(f"{path}: the header names a column more than once: {duplicates}; rename one of each")
    rows = []
    for number, values in enumerate(reader, start=1):
        report.rows_in += 1
        if len(values) != len(header):
            report.skip(number, f"malformed row: expected {len(header)} fields, got {len(values)}")
            continue
        rows.append((number, dict(zip(header, values, strict=True))))
    return header, rows


def _read_jsonl(path: Path, report: LoadReport) -> tuple[list[str], list[tuple[int, dict[str, Any]]]]:
    header: dict[str, None] = {}
    rows = []
    text = _utf8_text(path)
    if path.suffix.lower() == ".json" and text.lstrip().startswith("["):  # one JSON array of rows, not JSON lines
        try:
            records = json.loads(text)
        except json.JSONDecodeError as err:
            raise SupportBenchError(f"malformed JSON in {path}: {err}") from None
        lines = [json.dumps(record) for record in records]
    else:
        lines = text.splitlines()
    for number, line in enumerate((ln for ln in lines if ln.strip()), start=1):
        report.rows_in += 1
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            report.skip(number, f"malformed JSON: {err.msg}")
            continue
        if not isinstance(row, dict):
            report.skip(number, "malformed row: not a JSON object")
            continue
        header.update(dict.fromkeys(row))
        rows.append((number, row))
    return list(header), rows


def _read_table(records: list[dict[str, Any]], columns: list[str], report: LoadReport):
    report.rows_in = len(records)
    return columns, list(enumerate(records, start=1))


def load_rows(source: str) -> tuple[list[str], list[tuple[int, dict[str, Any]]], LoadReport, dict[str, Any]]:
    """Read a local CSV/JSONL/Parquet file or a hub dataset into numbered rows plus a load report."""
    report = LoadReport()
    path = Path(source).expanduser()
    if path.suffix.lower() in (".csv", ".jsonl", ".json", ".parquet") or path.exists():
        if not path.is_file():
            raise SupportBenchError(f"data file not found: {path}")
        suffix = path.suffix.lower()
        info = {"kind": "file", "path": str(path), "sha256": sha256_file(path)}
        if suffix == ".csv":
            columns, rows = _read_csv(path, report)
        elif suffix in (".jsonl", ".json"):
            columns, rows = _read_jsonl(path, report)
        elif suffix == ".parquet":
            import pyarrow
            import pyarrow.parquet as pq

            try:
                table = pq.read_table(path)
            except (pyarrow.ArrowException, OSError) as err:
                raise SupportBenchError(f"{path} is not a readable Parquet file ({err})") from None
            columns, rows = _read_table(table.to_pylist(), table.column_names, report)
        else:
            raise SupportBenchError(f"unsupported data file type {suffix!r}: use .csv, .jsonl or .parquet")
        return columns, rows, report, info
    if not hub_reachable():
        raise SupportBenchError(
            f"cannot reach the Hugging Face hub to download {source!r}. Set {DATA_ENV}=/path/to/data.csv "
            "(CSV, JSONL or Parquet with 'instruction' and 'response' columns) or pass --data PATH."
        )
    import datasets

    dataset = datasets.load_dataset(source, split="train")
    columns, rows = _read_table(dataset.to_list(), list(dataset.column_names), report)
    return columns, rows, report, {"kind": "hub", "id": source, "fingerprint": dataset._fingerprint}


# ---------------------------------------------------------------- cleaning


def load_placeholder_map(extra: str | None = None) -> dict[str, str]:
    """The bundled placeholder defaults, with a user's YAML map merged over them."""
    mapping = read_bundled_yaml("supportbench.prepare", "placeholders.yaml")
    if extra:
        user = read_user_yaml(extra, "placeholder map") or {}
        if not isinstance(user, dict) or not all(isinstance(v, (str, int, float)) for v in user.values()):
            raise SupportBenchError(f"placeholder map {extra} must be a flat YAML mapping of key: value")
        mapping.update(user)
    return {str(k).strip().casefold(): str(v) for k, v in mapping.items()}


class PlaceholderFiller:
    """Replaces {{…}} placeholders with realistic values and counts what was mapped or fell back."""

    def __init__(self, mapping: dict[str, str]):
        self.mapping = mapping
        self.mapped = 0
        self.fallback: Counter[str] = Counter()

    def _replace(self, match: re.Match[str], avoided: set[str]) -> str:
        key = match.group(1).strip()
        value = self.mapping.get(key.casefold())
        if value is not None and plain(value) not in avoided:
            self.mapped += 1
            return value
        self.fallback[key] += 1
        return readable(key)

    def __call__(self, text: str, avoid: frozenset[str] = frozenset()) -> str:
        """Return text with every placeholder replaced; a fixed value that is one of `avoid` (what PII scrubbing
        removed) becomes the placeholder's readable name instead."""
        avoided = {plain(v) for v in avoid}
        return PLACEHOLDER.sub(lambda match: self._replace(match, avoided), text)

    def fill_example(self, example: dict[str, Any], avoid: frozenset[str] = frozenset()) -> dict[str, Any]:
        """The example with every placeholder of its exchange and history filled (prepare --facts fill)."""
        return _texts_mapped(example, lambda text: self(text, avoid))

    def coverage(self) -> dict[str, Any]:
        """Counts of mapped and fallen-back placeholder occurrences, with the top fallback keys."""
        total = self.mapped + sum(self.fallback.values())
        return {
            "mode": "fill",
            "occurrences": total,
            "mapped": self.mapped,
            "fallback": sum(self.fallback.values()),
            "mapped_share": round(self.mapped / total, 4) if total else 1.0,
            "fallback_keys": len(self.fallback),
            "top_fallback": [[k, n] for k, n in sorted(self.fallback.items(), key=lambda kv: (-kv[1], kv[0]))[:15]],
        }


def _texts(row: dict[str, Any]) -> dict[str, str]:
    """Every text field of an example: the exchange, the optional columns, and each history turn."""
    fields = {c: row.get(c) for c in REQUIRED_COLUMNS + OPTIONAL_COLUMNS}
    for i, (customer, agent) in enumerate(row.get("history") or []):
        fields[f"history.{i}.customer"], fields[f"history.{i}.agent"] = customer, agent
    return {c: "" if v is None else str(v) for c, v in fields.items()}


def _not_text(row: dict[str, Any]) -> str | None:
    """Why an example's exchange is not text (a JSON or Parquet object, list, number or boolean), or None."""
    turns = [value for turn in row.get("history") or [] for value in turn]
    for name, value in [*((c, row.get(c)) for c in REQUIRED_COLUMNS), *(("history", v) for v in turns)]:
        if value is not None and not isinstance(value, str):
            return f"{name} is a {type(value).__name__}, not text"
    return None


def clean_rows(
    rows,
    report: LoadReport,
    filler: PlaceholderFiller | SlotWriter,
    controls: Counter[str],
    scrub: Callable[[str], str] | None,
    codes: Counter[str],
) -> list[dict[str, Any]]:
    """Validate fields, drop empty, badly encoded and duplicate examples (recorded), strip control characters
    (counted in `controls`), replace personal data (`scrub`), repair or skip replies naming an order id the customer
    did not give (counted in `codes`), then fill placeholders or write slots (`filler`)."""
    kept: list[dict[str, Any]] = []
    first_seen: dict[tuple[Any, ...], int] = {}

    def clean(text: str) -> str:
        return scrub(text.strip()) if scrub else text.strip()

    for number, row in rows:
        not_text = _not_text(row)
        if not_text:
            report.skip(number, f"malformed row: {not_text}")
            continue
        texts = _texts(row)
        if any("\udc80" <= ch <= "\udcff" for v in texts.values() for ch in v):
            report.skip(number, "bad encoding: not valid UTF-8")
            continue
        found = [ch for v in texts.values() for ch in CONTROL_CHARACTERS.findall(v)]
        if found:
            controls["rows"] += 1
            controls["characters"] += len(found)
            controls.update(f"U+{ord(ch):04X}" for ch in found)
            texts = {c: CONTROL_CHARACTERS.sub("", v) for c, v in texts.items()}
        empty = [c for c in REQUIRED_COLUMNS if not texts[c].strip()]
        if empty:
            report.skip(number, f"empty field: {', '.join(empty)}")
            continue
        history = [
            [texts[f"history.{i}.customer"], texts[f"history.{i}.agent"]] for i in range(len(row.get("history") or []))
        ]
        key = (
            tuple(normalize_instruction(" ".join(turn)) for turn in history),
            normalize_instruction(texts["instruction"]),
            texts["response"].strip(),
        )
        if key in first_seen:
            report.skip(number, f"duplicate of row {first_seen[key]}")
            continue
        first_seen[key] = number
        example = {
            "id": row.get("_id") or f"row-{number}",
            "source_row": number,
            "instruction": clean(texts["instruction"]),
            "response": clean(texts["response"]),
            **{c: texts[c].strip() for c in OPTIONAL_COLUMNS},
        }
        if "conversation" in row:
            example["conversation"] = row["conversation"]
            example["history"] = [[clean(customer), clean(agent)] for customer, agent in history]
        customer = [turn[0] for turn in example.get("history", [])] + [example["instruction"]]
        example["response"], fixed, unexplained = repair_codes(example["response"], customer)
        if unexplained:
            codes["skipped"] += 1
            report.skip(number, "reply names an order id the customer did not give")
            continue
        codes["replies_repaired"] += bool(fixed)
        codes["codes_repaired"] += fixed
        removed = scrub.take_removed() if scrub else {}
        if removed:  # a value removed from one text of the example is removed from all of them
            example = _texts_mapped(example, functools.partial(Scrubber.everywhere, removed=removed))
        kept.append(filler.fill_example(example, frozenset(removed)))
    return kept


def _texts_mapped(example: dict[str, Any], change: Callable[[str], str]) -> dict[str, Any]:
    """The example with `change` applied to its query, reply and history."""
    changed = {**example, "instruction": change(example["instruction"]), "response": change(example["response"])}
    if "history" in example:
        changed["history"] = [[change(customer), change(agent)] for customer, agent in example["history"]]
    return changed


def detect_languages(rows: list[dict[str, Any]], languages: str) -> None:
    """Set each row's `language`: the customer query's, by py3langid (offline) among the allowed languages."""
    identify = identifier(languages)  # an unknown code fails here, before any row
    for row in rows:
        row["language"] = identify.classify(row["instruction"])[0]


# ---------------------------------------------------------------- splitting


def _largest_remainder(weights: dict[str, int], total: int) -> dict[str, int]:
    grand = sum(weights.values())
    if grand == 0:
        return {k: 0 for k in weights}
    exact = {k: total * w / grand for k, w in weights.items()}
    quota = {k: int(v) for k, v in exact.items()}
    for k in sorted(weights, key=lambda k: (-(exact[k] - quota[k]), k))[: total - sum(quota.values())]:
        quota[k] += 1
    return quota


def _split_groups(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Rows that must land in one split: those sharing a normalized instruction or a conversation, transitively
    (union-find); each group is keyed by one of its normalized instructions."""
    parent: dict[str, str] = {}

    def root(key: str) -> str:
        while parent.setdefault(key, key) != key:
            parent[key] = parent[parent[key]]
            key = parent[key]
        return key

    for row in rows:
        if "conversation" in row:
            parent[root("\0" + row["conversation"])] = root(normalize_instruction(row["instruction"]))
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[root(normalize_instruction(row["instruction"]))].append(row)
    return groups


def split_rows(rows: list[dict[str, Any]], config: DataConfig) -> dict[str, list[dict[str, Any]]]:
    """Seeded split stratified by intent; rows sharing a normalized instruction stay in one split."""
    rng = random.Random(config.seed)
    if config.mode in ("sample", "notebook"):
        rows = rng.sample(rows, min(config.sample_size, len(rows)))
        test_total = round(0.1 * len(rows))
        val_total = min(config.validation_size, (len(rows) - test_total) // 10)
    else:
        test_total, val_total = config.test_size, config.validation_size
    if test_total + val_total >= len(rows):
        raise SupportBenchError(
            f"{len(rows)} usable rows cannot hold a test split of {test_total} and a validation split of {val_total}; "
            "pass smaller --test-size and --validation-size (together under the row count, leaving rows to train on)"
        )
    groups = _split_groups(rows)
    by_intent: dict[str, list[str]] = defaultdict(list)
    for key, members in groups.items():
        by_intent[members[0]["intent"] or "(none)"].append(key)
    sizes = {intent: sum(len(groups[k]) for k in keys) for intent, keys in by_intent.items()}
    test_quota = _largest_remainder(sizes, test_total)
    val_quota = _largest_remainder(sizes, val_total)
    splits: dict[str, list[dict[str, Any]]] = {name: [] for name in SPLITS}
    for intent in sorted(by_intent):
        keys = sorted(by_intent[intent])
        rng.shuffle(keys)
        filled = {"test": 0, "validation": 0}
        for key in keys:
            members = groups[key]
            if filled["test"] < test_quota[intent]:
                target = "test"
            elif filled["validation"] < val_quota[intent]:
                target = "validation"
            else:
                target = "train"
            filled[target] = filled.get(target, 0) + len(members)
            splits[target].extend(members)
    for name in SPLITS:  # a seeded shuffle, so that any prefix (eval --limit 50) samples every category
        splits[name].sort(key=lambda r: r["source_row"])
        rng.shuffle(splits[name])
    return splits


def overlap_report(splits: dict[str, list[dict[str, Any]]]) -> dict[str, int]:
    """Count normalized instructions and conversations shared by each pair of splits (all zero for a clean split)."""
    keys = {
        name: {normalize_instruction(r["instruction"]) for r in rows}
        | {"\0" + r["conversation"] for r in rows if "conversation" in r}
        for name, rows in splits.items()
    }
    names = sorted(keys)
    return {f"{a}&{b}": len(keys[a] & keys[b]) for i, a in enumerate(names) for b in names[i + 1 :]}


# ---------------------------------------------------------------- the stage


def _mapped(config: DataConfig, columns: list[str], records: list[tuple[int, dict[str, Any]]]):
    """Rename the file's columns as --columns says, and tell its format from the result; missing columns are errors."""
    mapping = config.column_mapping()
    unknown = sorted(set(mapping.values()) - set(columns))
    if unknown:
        raise SupportBenchError(
            f"{config.source}: --columns names {unknown}, which the file lacks; its columns are {columns}"
        )
    rename = {source: target for target, source in mapping.items()}
    if rename:
        records = [(n, {rename.get(k, k): v for k, v in row.items()}) for n, row in records]
        columns = [rename.get(c, c) for c in columns]
    input_kind = input_format(columns)
    needed = {
        "pairs": REQUIRED_COLUMNS,
        "messages": ("messages",),
        "threads": ("text", "role") if "conversation" in columns else ("text", "role", "message_id", "reply_to"),
    }[input_kind]
    missing = [c for c in needed if c not in columns]
    if missing:
        raise SupportBenchError(
            f"{config.source}: missing required column(s) {', '.join(repr(c) for c in missing)}; found columns "
            f"{columns} (map yours with --columns {needed[0]}=YOUR_COLUMN,...)"
        )
    return records, columns, input_kind


def input_files(source: str) -> set[Path]:
    """The local files a source reads (none for a hub id), resolved."""
    path = Path(source)
    if path.is_file():
        return {path.resolve()}
    return {p.resolve() for p in path.rglob("*") if p.is_file()} if path.is_dir() else set()


def prepare(config: DataConfig, out_dir: Path, force: bool = False) -> dict[str, Any]:
    """Run the whole preparation into out_dir (see `_prepare`), holding the folder's lock while it writes."""
    with folder_lock(Path(out_dir), "prepare"):
        return _prepare(config, out_dir, force)


def _prepare(config: DataConfig, out_dir: Path, force: bool = False) -> dict[str, Any]:
    """Run the whole preparation and write the splits plus manifest.json into out_dir, each file atomically.

    Only prepare's own files are ever replaced; a folder holding a training run is refused, and a folder
    holding a different split or other files needs `force`."""
    config.validate()
    out = SplitDir(Path(out_dir))
    if RunDir(out.path).holds_run:
        raise SupportBenchError(
            f"{out.path} holds a training run; prepare writes a split folder (a run keeps its own in data/), choose another --out"
        )
    replaced = input_files(config.source) & {p.resolve() for p in out.outputs()}
    if replaced:
        names = ", ".join(sorted(str(p) for p in replaced))
        raise SupportBenchError(
            f"prepare would replace its own input ({names}); choose another --out (--force never replaces an input)"
        )
    found_columns, records, report, source_info = load_rows(config.source)
    records, columns, input_kind = _mapped(config, found_columns, records)
    filler = (
        SlotWriter(config.seed)
        if config.facts == "slots"
        else PlaceholderFiller(load_placeholder_map(config.placeholders))
    )
    scrub = Scrubber(load_rules(config.pii_rules), config.phone_regions()) if config.pii == "scrub" else None
    controls: Counter[str] = Counter()
    codes: Counter[str] = Counter()
    if input_kind == "pairs":
        examples, example_report = records, report  # one example per row: a row is kept or skipped as a whole
    else:
        examples = (from_messages if input_kind == "messages" else from_threads)(records, report)
        example_report = LoadReport(rows_in=len(examples))
    kept = clean_rows(examples, example_report, filler, controls, scrub, codes)
    if not kept:
        skipped = report.skipped + ([] if example_report is report else example_report.skipped)
        reasons = Counter(card.reason_counts(skipped)).most_common(3)
        shown = "; ".join(f"{n} x {reason}" for reason, n in reasons) or "the input holds no rows"
        raise SupportBenchError(f"no usable examples in {config.source}: {shown}")
    detect_languages(kept, config.languages)
    splits = split_rows(kept, config)
    overlap = overlap_report(splits)
    if any(overlap.values()):
        raise SupportBenchError(f"internal error: split overlap {overlap}")
    mixed, mix_sources = _mix_rows(config, splits, filler, scrub)
    manifest = {
        "config": asdict(config),
        "source": source_info,
        "format": input_kind,
        "columns": {
            "found": found_columns,
            "mapping": config.column_mapping(),
            "used_optional": [c for c in OPTIONAL_COLUMNS if c in columns],
        },
        "counts": {
            "rows_in": report.rows_in,
            "kept": report.rows_in - len(report.skipped),
            "skipped": len(report.skipped),
            "skipped_by_reason": card.reason_counts(report.skipped),
            "examples": len(kept),
            "unused_after_sampling": len(kept) - sum(len(v) for v in splits.values()),
        },
        "skipped_rows": report.skipped,
        "data_card": card.statistics(kept, example_report, scrub, input_kind),
        "placeholders": filler.coverage(),
        "control_characters_removed": dict(sorted(controls.items())),
        # replies naming an order id the customer did not give: repaired to the customer's, or the row skipped
        "order_ids": {key: codes[key] for key in ("replies_repaired", "codes_repaired", "skipped")},
        "overlap": {"normalized_instruction_pairs": overlap, "shared_total": sum(overlap.values())},
        # training-only rows from --mix, kept in their own file: the splits above are the same with or without them
        "mix": {"sources": mix_sources, "rows": len(mixed), "file": out.mix_path.name} if mixed else None,
        "splits": {
            name: {
                "rows": len(rows_),
                "file": out.split_path(name).name,
                "by_category": dict(sorted(Counter(r["category"] or "(none)" for r in rows_).items())),
                "intents": len({r["intent"] for r in rows_}),
                "instruction_hashes": sorted({instruction_hash(r["instruction"]) for r in rows_}),
            }
            for name, rows_ in splits.items()
        },
    }
    if manifest["counts"]["rows_in"] != manifest["counts"]["kept"] + manifest["counts"]["skipped"]:
        raise SupportBenchError("internal error: rows in != kept + skipped")
    return _write_split(out, splits, mixed, manifest, force)


def _mix_rows(
    config: DataConfig,
    splits: dict[str, list[dict[str, Any]]],
    filler: PlaceholderFiller | SlotWriter,
    scrub: Scrubber | None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The --mix rows, cleaned like the split's; one that repeats a validation or test query, or a query of the
    default behaviour suite, is skipped (the split's normalized-instruction overlap check)."""
    if not config.mix:
        return [], []
    from supportbench.checks.behavior import load_suite
    from supportbench.evaluation.behavior import default_suite

    suite = load_suite(default_suite())
    held_out = {
        name: {normalize_instruction(r["instruction"]) for r in splits[name]} for name in ("validation", "test")
    }
    held_out["behaviour suite"] = {normalize_instruction(c.query) for c in suite} | {
        normalize_instruction(m.content) for c in suite for m in c.history if m.role in ("customer", "user")
    }

    def clean(numbered: list[tuple[int, dict[str, Any]]], report: LoadReport) -> list[dict[str, Any]]:
        rows = clean_rows(numbered, report, filler, Counter(), scrub, Counter())
        detect_languages(rows, config.languages)
        return rows

    return mix.build(config.mix, clean, held_out, config.seed)


def _write_split(
    out: SplitDir,
    splits: dict[str, list[dict[str, Any]]],
    mixed: list[dict[str, Any]],
    manifest: dict[str, Any],
    force: bool,
) -> dict[str, Any]:
    """Write the splits, the mix, data card and manifest into out, refusing (without --force) to replace a different
    split or to write beside other files; the files commit together, the manifest last."""
    ensure_writable_dir(out.path)  # the first write, after every check of the input
    contents = {name: jsonl_bytes(rows_) for name, rows_ in splits.items()}
    for name, data in contents.items():
        manifest["splits"][name]["sha256"] = hashlib.sha256(data).hexdigest()
    if mixed:
        mix_bytes = jsonl_bytes(mixed)
        manifest["mix"]["sha256"] = hashlib.sha256(mix_bytes).hexdigest()
    ours = set(out.outputs())
    others = (
        sorted(p.name for p in out.path.iterdir() if p not in ours and p.name != LOCK_NAME)
        if out.path.is_dir()
        else []
    )
    if not force:
        if out.is_prepared and [out.manifest().get(k) for k in ("splits", "mix")] != [
            manifest[k] for k in ("splits", "mix")
        ]:
            raise SupportBenchError(
                f"{out.path} already holds different data; pass --force to replace it or choose another --out"
            )
        if not out.is_prepared and others:
            raise SupportBenchError(
                f"{out.path} holds other files ({', '.join(others[:5])}); pass --force or choose another --out"
            )
    outputs = {out.split_path(name): data for name, data in contents.items()}
    if mixed:
        outputs[out.mix_path] = mix_bytes
    outputs[out.data_card_png] = card.lengths_png(manifest)
    outputs[out.data_card] = card.markdown(manifest, out.data_card_png.name).encode("utf-8")
    return write_together(outputs, out.manifest_path, manifest)  # the manifest last, naming each file's hash


def summary_lines(manifest: dict[str, Any], out_dir: Path) -> list[str]:
    """A one-screen human summary of a prepare manifest."""
    counts, ph = manifest["counts"], manifest["placeholders"]
    lines = [
        f"source       {manifest['source'].get('path') or manifest['source'].get('id')}",
        f"rows         {counts['rows_in']} in = {counts['kept']} kept + {counts['skipped']} skipped",
    ]
    lines += [f"  skipped    {n} x {reason}" for reason, n in counts["skipped_by_reason"].items()]
    for name in SPLITS:
        s = manifest["splits"][name]
        lines.append(f"{name:<12} {s['rows']:>5} rows  {s['intents']} intents  sha256 {s['sha256'][:12]}")
    lines.append(f"overlap      {manifest['overlap']['normalized_instruction_pairs']}")
    card_stats = manifest["data_card"]
    lines.append(f"format       {manifest['format']}: {counts['examples']} examples kept")
    pii = card_stats["pii"]
    lines.append(
        "pii          " + ("off (--pii keep)" if pii["mode"] == "keep" else f"replaced {pii['found'] or 'nothing'}")
    )
    lines.append(f"languages    {dict(list(card_stats['languages'].items())[:5])}")
    ids = manifest["order_ids"]
    lines.append(
        f"order ids    {ids['replies_repaired']} replies repaired to the customer's id, {ids['skipped']} rows skipped"
    )
    if manifest.get("mix"):
        shown = ", ".join(f"{s['source']} x{s['weight']:g}: {s['trained_rows']}" for s in manifest["mix"]["sources"])
        lines.append(f"mix          {manifest['mix']['rows']} training-only rows ({shown})")
    lines.append(f"placeholders {facts_line(ph)}")
    lines.append(f"written to   {out_dir}")
    return lines


def facts_line(coverage: dict[str, Any]) -> str:
    """One line on what prepare did with the data's placeholders, for either --facts mode."""
    if coverage.get("mode") == "slots":
        kinds = coverage["by_kind"]
        counted = {kind: sum(kinds.get(kind, {}).values()) for kind in SLOT_COUNTS}
        return f"{coverage['occurrences']} found (--facts slots): " + ", ".join(
            f"{n} {SLOT_COUNTS[kind]}" for kind, n in counted.items()
        )
    return (
        f"{coverage['occurrences']} found: {coverage['mapped']} mapped ({coverage['mapped_share']:.1%}), "
        f"{coverage['fallback']} readable fallback over {coverage['fallback_keys']} keys"
    )


def load_twcs_pairs(path: Path) -> list[dict[str, Any]]:
    """Customer tweet -> company reply pairs from a TWCS CSV, for out-of-domain scoring only."""
    path = Path(path)
    if not path.is_file():
        raise SupportBenchError(f"TWCS file not found: {path}")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise SupportBenchError(f"{path} is not UTF-8 text (byte {err.start}); save it as UTF-8") from None
    tweets = list(csv.DictReader(io.StringIO(text, newline="")))
    needed = {"tweet_id", "author_id", "inbound", "text", "response_tweet_id"}
    if not tweets:
        raise SupportBenchError(f"{path}: no tweets (an empty or header-only TWCS file)")
    if not needed <= set(tweets[0]):
        raise SupportBenchError(f"{path}: missing TWCS column(s) {sorted(needed - set(tweets[0]))}")
    by_id = {t["tweet_id"]: t for t in tweets}
    strip = lambda text: re.sub(r"^(@\w+\s*)+", "", text).strip()  # noqa: E731
    pairs = []
    for tweet in tweets:
        if tweet["inbound"] != "True":
            continue
        for reply_id in filter(None, tweet["response_tweet_id"].split(",")):
            reply = by_id.get(reply_id)
            if reply and reply["inbound"] == "False" and strip(tweet["text"]) and strip(reply["text"]):
                pairs.append(
                    {
                        "id": f"twcs-{tweet['tweet_id']}-{reply_id}",
                        "source_row": int(tweet["tweet_id"]),
                        "instruction": strip(tweet["text"]),
                        "response": strip(reply["text"]),
                        "category": reply["author_id"],
                        "intent": "twcs",
                        "flags": "",
                        "tags": "",
                    }
                )
    if not pairs:
        raise SupportBenchError(f"{path}: no customer tweet is answered by a company reply; nothing to score")
    return pairs

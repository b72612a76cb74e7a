"""The preference store: the pairs shown to raters (query, both replies, which variant is behind A and B, the
decoding and weights hashes) and the votes cast on them, in one SQLite file. Every write is one transaction; a
vote on a pair the store never showed is refused."""

from __future__ import annotations

import json
import random
import sqlite3
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from supportbench.files import SupportBenchError, ensure_writable_dir

CHOICES = ("A", "B", "tie", "both_bad")
REASONS = ("wrong intent", "wrong or invented fact", "rude", "incomplete", "wrong language")
MAX_RATER_CHARS = 80
SCHEMA = """
CREATE TABLE IF NOT EXISTS pairs (
    id TEXT PRIMARY KEY,
    created REAL NOT NULL,
    query TEXT NOT NULL,
    reply_a TEXT NOT NULL,
    reply_b TEXT NOT NULL,
    variant_a TEXT NOT NULL,
    variant_b TEXT NOT NULL,
    settings TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS votes (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    pair_id TEXT NOT NULL REFERENCES pairs(id),
    rater TEXT NOT NULL,
    choice TEXT NOT NULL CHECK (choice IN ('A', 'B', 'tie', 'both_bad')),
    reasons TEXT NOT NULL,
    created REAL NOT NULL
);
"""


@dataclass(frozen=True)
class Pair:
    """Two replies to one query, in the order shown (A left, B right), and the variants behind them."""

    id: str
    query: str
    reply_a: str
    reply_b: str
    variant_a: str
    variant_b: str
    settings: dict[str, Any] = field(default_factory=dict)


class PreferenceStore:
    """One SQLite file of pairs and votes; each call opens its own connection, so threads and processes share it."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        ensure_writable_dir(self.path.parent)
        with self._connection() as db:
            db.executescript(SCHEMA)

    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        try:
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        except sqlite3.Error as err:
            raise SupportBenchError(f"cannot open the preference store {self.path}: {err}") from None
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA foreign_keys=ON")
            yield db
        except sqlite3.DatabaseError as err:
            raise SupportBenchError(f"the preference store {self.path} cannot be used: {err}") from None
        finally:
            db.close()

    def add_pair(self, query: str, replies: dict[str, str], settings: dict[str, Any], rng: random.Random) -> Pair:
        """Store two variants' replies to a query in a random order (A, B) and return the pair as shown."""
        if len(replies) != 2:
            raise SupportBenchError(f"a pair needs the replies of exactly two variants, got {sorted(replies)}")
        order = list(replies)
        rng.shuffle(order)
        pair = Pair(uuid.uuid4().hex, query, replies[order[0]], replies[order[1]], order[0], order[1], settings)
        with self._connection() as db:
            db.execute(
                "INSERT INTO pairs VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (pair.id, time.time(), query, pair.reply_a, pair.reply_b, order[0], order[1], json.dumps(settings)),
            )
        return pair

    def vote(self, pair_id: str, rater: str, choice: str, reasons: list[str] | tuple[str, ...] = ()) -> int:
        """Record one vote in a transaction; an unknown pair, choice, reason or an empty rater is refused."""
        rater = (rater or "").strip()
        if not rater or len(rater) > MAX_RATER_CHARS:
            raise SupportBenchError(f"a vote needs a rater name of 1 to {MAX_RATER_CHARS} characters")
        if choice not in CHOICES:
            raise SupportBenchError(f"unknown choice {choice!r}; choose one of {', '.join(CHOICES)}")
        unknown = sorted(set(reasons) - set(REASONS))
        if unknown:
            raise SupportBenchError(f"unknown reason {unknown[0]!r}; reasons: {', '.join(REASONS)}")
        with self._connection() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                if db.execute("SELECT 1 FROM pairs WHERE id = ?", (pair_id,)).fetchone() is None:
                    raise SupportBenchError(
                        f"unknown pair {pair_id!r}: votes are taken only on pairs the store showed"
                    )
                cursor = db.execute(
                    "INSERT INTO votes (pair_id, rater, choice, reasons, created) VALUES (?, ?, ?, ?, ?)",
                    (pair_id, rater, choice, json.dumps(sorted(reasons)), time.time()),
                )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return int(cursor.lastrowid)

    def pair(self, pair_id: str) -> Pair:
        """A stored pair, by id."""
        with self._connection() as db:
            row = db.execute(
                "SELECT id, query, reply_a, reply_b, variant_a, variant_b, settings FROM pairs WHERE id = ?",
                (pair_id,),
            ).fetchone()
        if row is None:
            raise SupportBenchError(f"unknown pair {pair_id!r}")
        return Pair(*row[:6], json.loads(row[6]))

    def pair_ids(self) -> list[str]:
        """Every stored pair's id, oldest first."""
        with self._connection() as db:
            return [row[0] for row in db.execute("SELECT id FROM pairs ORDER BY created, rowid")]

    def votes(self) -> list[dict[str, Any]]:
        """Every vote with its pair, oldest first."""
        query = (
            "SELECT v.id, v.rater, v.choice, v.reasons, v.created, p.id, p.query, p.reply_a, p.reply_b, p.variant_a, "
            "p.variant_b, p.settings FROM votes v JOIN pairs p ON p.id = v.pair_id ORDER BY v.id"
        )
        with self._connection() as db:
            rows = db.execute(query).fetchall()
        keys = (
            "vote",
            "rater",
            "choice",
            "reasons",
            "created",
            "pair",
            "query",
            "reply_a",
            "reply_b",
            "variant_a",
            "variant_b",
            "settings",
        )
        return [
            {**dict(zip(keys, row, strict=True)), "reasons": json.loads(row[3]), "settings": json.loads(row[11])}
            for row in rows
        ]

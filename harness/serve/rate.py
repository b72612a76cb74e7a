"""The Rate tab's logic: blind pairs of two variants' replies (base and fine-tuned, or this run's fine-tuned model
and another run's) to a test query (in a seeded order) or a typed one,
stored before they are shown, and votes recorded against the stored pair; the variant names come back only after
the vote is stored."""

from __future__ import annotations

import random
import threading
from dataclasses import asdict
from pathlib import Path

from supportbench.deploy.export import adapter_sha256, exported_format
from supportbench.files import SupportBenchError, sha256_file
from supportbench.layout import RunDir
from supportbench.preference.store import CHOICES, Pair, PreferenceStore
from supportbench.serve.assistant import Assistant

BASE_AND_FINETUNED = {"base": False, "finetuned": True}  # variant name: whether the adapter answers
CHOICE_LABELS = {"A": "A is better", "B": "B is better", "tie": "Tie", "both_bad": "Both bad"}


class RateSession:
    """Pairs for blind rating from one run's assistant, and the store they and their votes go to."""

    def __init__(
        self,
        run_dir: Path,
        assistant: Assistant,
        store: Path | None = None,
        seed: int = 1234,
        against: tuple[Path, Assistant] | None = None,
    ):
        run = RunDir(run_dir)
        self.assistant = assistant
        # base against fine-tuned; or, against another run, each run's fine-tuned model, named by its folder
        self.variants: dict[str, tuple[Assistant, bool]] = {
            name: (assistant, adapter) for name, adapter in BASE_AND_FINETUNED.items()
        }
        other = {}
        if against is not None:
            other_run = RunDir(against[0])
            if other_run.path.name == run.path.name:
                raise SupportBenchError(f"--rate-against {other_run.path}: its folder name is this run's; rename one")
            self.variants = {run.path.name: (assistant, True), other_run.path.name: (against[1], True)}
            other = {"against_run": other_run.path.name, "against_adapter_sha256": adapter_sha256(other_run)}
        self.store = PreferenceStore(store or run.ratings_store)
        rows = run.data.rows("test")
        random.Random(seed).shuffle(rows)
        self.queries = [row["instruction"] for row in rows]
        self.rng = random.Random(f"{seed}:order")
        self.lock = threading.Lock()
        self.next_query = 0
        self.settings = {
            "run": run.path.name,
            "decoding": asdict(assistant.decoding),
            "adapter_sha256": adapter_sha256(run),
            "export_sha256": sha256_file(run.export_manifest) if exported_format(run.path) else None,
            "backend": assistant.backend.description,
            **other,
        }

    def new_pair(self, typed: str, max_tokens: int) -> Pair:
        """A stored pair for a typed query, or for the next test query when none is typed."""
        with self.lock:
            if typed.strip():
                query = typed
            else:
                query = self.queries[self.next_query % len(self.queries)]
                self.next_query += 1
            order = random.Random(self.rng.random())
        replies = {
            name: model.reply([], query, finetuned=adapter, max_new_tokens=int(max_tokens)).text
            for name, (model, adapter) in self.variants.items()
        }
        return self.store.add_pair(
            self.assistant.check_query(query), replies, {**self.settings, "max_new_tokens": int(max_tokens)}, order
        )

    def vote(self, pair_id: str | None, rater: str, choice: str, reasons: list[str]) -> str:
        """Store a vote on a shown pair; the Markdown that reveals which variant was A and which was B."""
        if not pair_id:
            raise SupportBenchError("Ask for a pair first (Next pair).")
        if choice not in CHOICES:
            raise SupportBenchError(f"unknown choice {choice!r}")
        self.store.vote(pair_id, rater, choice, reasons)
        pair = self.store.pair(pair_id)
        return f"Vote stored ({CHOICE_LABELS[choice]}). A was **{pair.variant_a}**, B was **{pair.variant_b}**."

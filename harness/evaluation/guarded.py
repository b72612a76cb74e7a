"""Eval's guarded column: the fine-tuned replies to the in-domain test split put through the reply policy, as the app
serves them. The share of in-domain queries the policy turned away (false refusals, Wilson interval), and the guarded
ROUGE-L, semantic similarity and intent fidelity paired against raw on the same examples."""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

from supportbench.checks import intent
from supportbench.checks.embedding import similarity
from supportbench.files import read_json
from supportbench.layout import RunDir
from supportbench.metrics import rouge
from supportbench.serve.policy import TURNED_AWAY, ReplyPolicy
from supportbench.stats import mean_interval, paired_difference, wilson_interval
from supportbench.templates import row_turns

GUARDED_METRICS = ("rougeL", "semantic_similarity", "intent_fidelity")


def _scores(reply: str, sample: dict[str, Any], embedding_model: str, classifier: str) -> dict[str, float]:
    """A changed reply's scores, computed as the task computes the raw reply's."""
    return {
        "rougeL": rouge(reply, sample["reference"])["rougeL"],
        "semantic_similarity": similarity(reply, sample["reference"], embedding_model),
        "intent_fidelity": (
            float(intent.predict(classifier, reply) == sample["intent"])
            if classifier and sample["intent"]
            else math.nan
        ),
    }


def guarded_record(
    policy: ReplyPolicy, run: RunDir, samples: list[dict[str, Any]], embedding_model: str, classifier: str, seed: int
) -> dict[str, Any]:
    """The guarded column of an eval's side-by-side samples (the run's test split)."""
    rows = {row["id"]: row for row in run.data.rows("test")}
    reasons: Counter = Counter()
    changed, raw, guarded = [], {m: [] for m in GUARDED_METRICS}, {m: [] for m in GUARDED_METRICS}
    for sample in samples:
        customer = [turn.customer for turn in row_turns(rows[sample["id"]])]
        reply = policy.guard(sample["finetuned"], customer)
        reasons[reply.reason] += 1
        before = {m: sample[f"finetuned_{m}"] for m in GUARDED_METRICS}
        after = (
            before if reply.text == sample["finetuned"] else _scores(reply.text, sample, embedding_model, classifier)
        )
        if reply.text != sample["finetuned"]:
            changed.append({"id": sample["id"], "reason": reply.reason, "changes": reply.changes, "reply": reply.text})
        for m in GUARDED_METRICS:
            raw[m].append(before[m])
            guarded[m].append(after[m])
    metrics = {}
    for m in GUARDED_METRICS:
        pairs = [(r, g) for r, g in zip(raw[m], guarded[m], strict=True) if r is not None and not math.isnan(r)]
        if len(pairs) >= 2:
            first, second = zip(*pairs, strict=True)
            metrics[m] = {
                "raw": mean_interval(first, seed),
                "guarded": mean_interval(second, seed),
                "difference": paired_difference(first, second, seed),
            }
    turned_away = sum(reasons[r] for r in TURNED_AWAY)
    return {
        "n": len(samples),
        "reasons": dict(reasons.most_common()),
        "false_refusal": wilson_interval(turned_away, len(samples)),
        "changed": len(changed),
        "scope": read_json(run.scope_record),  # the threshold and its calibration
        "metrics": metrics,
        "changed_replies": changed,
    }

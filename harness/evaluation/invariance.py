"""`supportbench invariance`: CheckList's INV test on the held-out split. The first test queries are answered
clean and under each seeded perturbation (typos, casing, punctuation removed, politeness added) by the base and
the fine-tuned model, and the fine-tuned replies through the reply policy (guarded, as served); how far intent
fidelity and semantic similarity drop from the clean query is reported, paired per example, with intervals."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

from supportbench.checks import intent
from supportbench.checks.embedding import DEFAULT_EMBEDDING_MODEL, similarity
from supportbench.checks.invariance import perturb
from supportbench.config import InvarianceConfig
from supportbench.evaluation.behavior import MODELS, VARIANTS, SuiteRunner
from supportbench.files import SupportBenchError, write_json
from supportbench.layout import RunDir
from supportbench.serve.policy import ReplyPolicy
from supportbench.stats import mean_interval, paired_difference
from supportbench.templates import Turn, row_turns

CLEAN = "clean"


def run_invariance(
    run_dir: Path, config: InvarianceConfig, profile: str | None = None, embedding_model: str = DEFAULT_EMBEDDING_MODEL
) -> dict[str, Any]:
    """Answer config.limit test queries clean and perturbed with both models, guard the fine-tuned replies as served;
    write eval/invariance.json."""
    from supportbench.tasks.customer_support.utils import intent_classifier, read_reference

    config.validate()
    kinds = tuple(config.perturbations)
    run = RunDir(run_dir)
    run.require_adapter()
    classifier = intent_classifier(str(run.data.path), profile or "")
    if not classifier:
        raise SupportBenchError(
            f"{run.data.path}'s training split has no intent labels: intent fidelity cannot be read"
        )
    known = intent.intents(classifier)
    rows = [r for r in run.data.rows("test") if r.get("intent") in known][: config.limit]
    started = time.perf_counter()
    runner = SuiteRunner(run, config.answering(), profile)
    policy = ReplyPolicy.for_run(run, runner.profile)  # None where the profile switches it off: served raw
    variants = (CLEAN, *kinds)

    def conversation(row: dict[str, Any], kind: str) -> list[Turn]:
        turns = row_turns(row)
        query = turns[-1].customer if kind == CLEAN else perturb(turns[-1].customer, kind, config.seed)
        return [*turns[:-1], Turn(query)]

    scores: dict[str, dict[str, dict[str, list[float]]]] = {}
    examples = []
    references = [read_reference(r, runner.profile) for r in rows]
    replies_of: dict[str, dict[str, list[str]]] = {variant: {} for variant in VARIANTS}
    for kind in variants:
        conversations = [conversation(r, kind) for r in rows]
        for model in MODELS:
            replies_of[model][kind] = [r[0] for r in runner.replies(conversations, model == "finetuned")]
        replies_of["guarded"][kind] = [
            policy.guard(reply, [t.customer for t in turns]).text if policy else reply
            for reply, turns in zip(replies_of["finetuned"][kind], conversations, strict=True)
        ]
    for model in VARIANTS:
        scores[model] = {}
        for kind in variants:
            replies = replies_of[model][kind]
            scores[model][kind] = {
                "intent_fidelity": [
                    float(intent.predict(classifier, t) == r["intent"]) for t, r in zip(replies, rows, strict=True)
                ],
                "semantic_similarity": [
                    similarity(t, ref, embedding_model) for t, ref in zip(replies, references, strict=True)
                ],
            }
            if model == "finetuned":
                examples.append(
                    {"perturbation": kind, "query": conversation(rows[0], kind)[-1].customer, "reply": replies[0]}
                )
    table = {
        model: {
            metric: {
                kind: {
                    "mean": mean_interval(scores[model][kind][metric], config.seed),
                    **(
                        {
                            "drop": paired_difference(
                                scores[model][CLEAN][metric], scores[model][kind][metric], config.seed
                            )
                        }
                        if kind != CLEAN
                        else {}
                    ),
                }
                for kind in variants
            }
            for metric in ("intent_fidelity", "semantic_similarity")
        }
        for model in VARIANTS
    }
    summary = {
        "run": str(run.path),
        "n": len(rows),
        "perturbations": list(kinds),
        "seed": config.seed,
        "decoding": {**dataclasses.asdict(runner.decoding), "label": runner.decoding.label()},
        "embedding_model": embedding_model,
        "metrics": table,
        "examples": examples,
        "seconds": round(time.perf_counter() - started, 1),
    }
    write_json(run.eval.invariance, summary)
    return summary


def summary_lines(summary: dict[str, Any]) -> list[str]:
    """Intent fidelity per perturbation, base, fine-tuned raw and guarded, with the paired change from the clean
    query."""
    shown = [v for v in VARIANTS if v in summary["metrics"]]  # an older record has no guarded column
    lines = [f"{summary['n']} test queries; decoding {summary['decoding']['label']}"]
    lines.append(f"{'perturbation':<16}" + "".join(f"{v:>12}{'change':>26}" for v in shown))
    for kind in (CLEAN, *summary["perturbations"]):
        cells = []
        for model in shown:
            row = summary["metrics"][model]["intent_fidelity"][kind]
            drop = row.get("drop")
            change = "" if drop is None else f"{drop['mean']:+.3f} [{drop['low']:+.3f}, {drop['high']:+.3f}]"
            cells += [f"{row['mean']['mean']:.3f}", change]
        lines.append(
            f"{kind:<16}"
            + "".join(f"{value:>12}{change:>26}" for value, change in zip(cells[::2], cells[1::2], strict=True))
        )
    return ["intent fidelity:", *lines]

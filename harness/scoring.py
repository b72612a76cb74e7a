"""The eval stage: run the customer_support lm-eval tasks for base and base+LoRA, the same way, honestly."""

from __future__ import annotations

import importlib.metadata
import re
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from harness.device import pick_device
from harness.io import SupportBenchError, read_json, write_json, write_jsonl
from harness.metrics import ROUGE_TYPES, corpus_bleu
from harness.models import model_path, resolve
from harness.templates import cut_at_stops

TASKS_DIR = Path(__file__).resolve().parent.parent / "tasks"
GEN_TASK, PPL_TASK = "customer_support_gen", "customer_support_ppl"
GEN_METRICS = (*ROUGE_TYPES, "bleu", "runon", "placeholder_leak", "response_words")
EVAL_DIR = "eval"


@dataclass
class EvalConfig:
    """What one eval compares and on how much data."""

    limit: int | None = 50  # generation examples; None = the whole split
    ppl_limit: int | None = None  # perplexity examples; None = the whole split (the default everywhere but rank)
    gen_batch_size: int = 32  # decoding is memory-bound on CPU: wide batches cost little more per step
    ppl_batch_size: int = 8  # scoring is compute-bound and holds batch x length x vocab logits
    max_new_tokens: int = 100
    base_model: str | None = None  # another base model to score alone (no adapter) on the run's split
    twcs: str | None = None  # score the out-of-domain TWCS pairs instead of the Bitext test split
    seed: int = 1234


def check_no_leakage(run_dir: Path) -> dict[str, Any]:
    """Refuse a test split that shares a normalized instruction with the adapter's training split."""
    data = read_json(run_dir / "data" / "manifest.json")
    train = read_json(run_dir / "train.json")
    if train["data"]["train"] != data["splits"]["train"]["sha256"]:
        raise SupportBenchError(
            f"{run_dir}/data no longer holds the split the adapter was trained on (train sha256 differs); refusing to score"
        )
    shared = set(data["splits"]["test"]["instruction_hashes"]) & set(data["splits"]["train"]["instruction_hashes"])
    if shared:
        raise SupportBenchError(
            f"test split shares {len(shared)} normalized instruction(s) with the training split; refusing to score"
        )
    return {
        "train_sha256": data["splits"]["train"]["sha256"],
        "test_sha256": data["splits"]["test"]["sha256"],
        "shared_instructions": 0,
    }


def _metric(task_results: dict[str, Any], name: str) -> float:
    return next(v for k, v in task_results.items() if k.split(",")[0] == name)


def score_model(model_path: str, adapter: str | None, metadata: dict[str, Any], config: EvalConfig) -> dict[str, Any]:
    """Run generation (limited) and perplexity (whole split unless ppl_limit) for one model through lm-eval."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    device = pick_device()
    started = time.perf_counter()
    lm = HFLM(
        pretrained=model_path, peft=adapter, device=device.device, dtype=device.dtype_name, batch_size=config.gen_batch_size
    )
    load_s = time.perf_counter() - started
    manager = TaskManager(include_path=str(TASKS_DIR), include_defaults=False, metadata={**metadata, "tokenizer": model_path})
    common = {
        "model": lm,
        "task_manager": manager,
        "log_samples": True,
        "bootstrap_iters": 0,
        "random_seed": config.seed,
        "numpy_random_seed": config.seed,
        "torch_random_seed": config.seed,
        "gen_kwargs": {"max_gen_toks": config.max_new_tokens},
    }
    t0 = time.perf_counter()
    gen = simple_evaluate(tasks=[GEN_TASK], limit=config.limit, **common)
    t1 = time.perf_counter()
    lm.batch_size_per_gpu = config.ppl_batch_size  # HFLM has one batch size; scoring wants a narrower one
    ppl = simple_evaluate(tasks=[PPL_TASK], limit=config.ppl_limit, **common)
    t2 = time.perf_counter()
    gen_results = gen["results"][GEN_TASK]
    budget = lm.max_length - config.max_new_tokens
    truncated = sum(s["doc"]["prompt_tokens"] > budget for s in gen["samples"][GEN_TASK])
    capped = sum(len(lm.tok_encode(_raw(s))) >= config.max_new_tokens - 1 for s in gen["samples"][GEN_TASK])
    return {
        "metrics": {
            **{m: _metric(gen_results, m) for m in GEN_METRICS},
            "perplexity": _metric(ppl["results"][PPL_TASK], "perplexity"),
            "perplexity_fulltext": _metric(ppl["results"][PPL_TASK], "perplexity_fulltext"),
        },
        "n": {
            "generation": len(gen["samples"][GEN_TASK]),
            "perplexity": len(ppl["samples"][PPL_TASK]),
            "prompts_left_truncated": truncated,
            "context_budget_tokens": budget,
            "replies_at_token_cap": capped,
        },
        "timing_s": {"load": round(load_s, 2), "generation": round(t1 - t0, 1), "perplexity": round(t2 - t1, 1)},
        "samples": gen["samples"][GEN_TASK],
        "lm_eval_config": gen["config"],
    }


def _raw(sample: dict[str, Any]) -> str:
    raw = sample["filtered_resps"][0]
    return raw[0] if isinstance(raw, list) else raw


def _reply(sample: dict[str, Any]) -> str:
    return cut_at_stops(_raw(sample), sample["doc"]["stop"])[0]


def per_category(samples: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """ROUGE means and corpus BLEU per category, from the per-sample logs."""
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for sample in samples:
        groups[sample["doc"]["category"]].append(sample)
    table = {}
    for category, members in sorted(groups.items()):
        row = {m: sum(s[m] for s in members) / len(members) for m in ROUGE_TYPES}
        row["bleu"] = corpus_bleu([_reply(s) for s in members], [s["doc"]["reference"] for s in members])
        row["n"] = len(members)
        table[category] = row
    return table


def delta_pct(base: float, tuned: float) -> float | None:
    """Relative change in percent, as the notebook showed it (None when the base is zero)."""
    return None if base == 0 else 100.0 * (tuned - base) / base


def evaluate_run(run_dir: Path, config: EvalConfig) -> dict[str, Any]:
    """Score base and base+adapter on the run's held-out split and write eval/ into the run folder."""
    run_dir = Path(run_dir)
    if not (run_dir / "train.json").is_file():
        raise SupportBenchError(f"{run_dir} holds no finished training run (train.json); run `supportbench train` first")
    leakage = check_no_leakage(run_dir)
    train = read_json(run_dir / "train.json")
    metadata = {"template": train["template"], "data_dir": str(run_dir / "data")}
    if config.twcs:
        metadata["twcs"] = config.twcs
    if config.base_model and config.base_model != train["config"]["model"]:
        return score_other_base(run_dir, config, metadata)
    base_name = train["config"]["model"]
    path = model_path(base_name)
    results = {
        "base": score_model(path, None, metadata, config),
        "finetuned": score_model(path, str(run_dir / train["adapter"]), metadata, config),
    }
    base, tuned = results["base"], results["finetuned"]
    by_id = {s["doc"]["id"]: s for s in tuned["samples"]}
    side_by_side = [
        {
            "id": s["doc"]["id"],
            "category": s["doc"]["category"],
            "query": s["doc"]["instruction"],
            "reference": s["doc"]["reference"],
            "base": _reply(s),
            "finetuned": _reply(by_id[s["doc"]["id"]]),
            "base_rougeL": s["rougeL"],
            "finetuned_rougeL": by_id[s["doc"]["id"]]["rougeL"],
        }
        for s in base["samples"]
    ]
    summary = {
        "run": str(run_dir),
        "dataset": "twcs" if config.twcs else "bitext-test",
        "base_model": base_name,
        "template": train["template"],
        "config": asdict(config),
        "leakage_check": leakage,
        "n": {"base": base["n"], "finetuned": tuned["n"]},
        "caps": {"generation_limit": config.limit, "perplexity_limit": config.ppl_limit, "max_new_tokens": config.max_new_tokens},
        "metrics": {"base": base["metrics"], "finetuned": tuned["metrics"]},
        "delta_pct": {m: delta_pct(base["metrics"][m], tuned["metrics"][m]) for m in base["metrics"]},
        "timing_s": {"base": base["timing_s"], "finetuned": tuned["timing_s"]},
        "lm_eval": {"version": importlib.metadata.version("lm_eval"), "config": base["lm_eval_config"]},
    }
    out = run_dir / EVAL_DIR / ("ood" if config.twcs else "")
    write_json(out / "per_category.json", {"base": per_category(base["samples"]), "finetuned": per_category(tuned["samples"])})
    write_jsonl(out / "samples.jsonl", side_by_side)
    write_json(out / "metrics.json", summary)
    return summary


def score_other_base(run_dir: Path, config: EvalConfig, metadata: dict[str, Any]) -> dict[str, Any]:
    """Score another base model alone on the run's held-out split, in its own template; write eval/base_models/."""
    name = config.base_model
    result = score_model(model_path(name), None, {**metadata, "template": resolve(name).template}, config)
    summary = {
        "run": str(run_dir),
        "dataset": "twcs" if config.twcs else "bitext-test",
        "base_model": name,
        "template": resolve(name).template,
        "config": asdict(config),
        "n": {"base": result["n"]},
        "metrics": {"base": result["metrics"]},
        "timing_s": {"base": result["timing_s"]},
        "lm_eval": {"version": importlib.metadata.version("lm_eval"), "config": result["lm_eval_config"]},
    }
    write_json(run_dir / EVAL_DIR / "base_models" / f"{re.sub(r'[^A-Za-z0-9._-]+', '_', name)}.json", summary)
    return summary


def table_lines(summary: dict[str, Any]) -> list[str]:
    """The base / fine-tuned / delta table, as the notebook printed it (base only for another base model)."""
    base = summary["metrics"]["base"]
    n = summary["n"]["base"]
    header = f"{summary['dataset']}: {n['generation']} generated, {n['perplexity']} for perplexity"
    if "finetuned" not in summary["metrics"]:
        return [f"{summary['base_model']} (base, {summary['template']} template), {header}"] + [
            f"{metric:<22}{value:>10.4f}" for metric, value in base.items()
        ]
    tuned, delta = summary["metrics"]["finetuned"], summary["delta_pct"]
    lines = [header, f"{'metric':<22}{'base':>10}{'fine-tuned':>12}{'change':>10}"]
    for metric in base:
        change = "n/a" if delta[metric] is None else f"{delta[metric]:+.1f}%"
        lines.append(f"{metric:<22}{base[metric]:>10.4f}{tuned[metric]:>12.4f}{change:>10}")
    return lines

"""The eval stage: run the customer_support lm-eval tasks for base and base+LoRA, the same way, honestly."""

from __future__ import annotations

import dataclasses
import functools
import importlib.metadata
import importlib.util
import math
import time
from collections import Counter, defaultdict
from dataclasses import asdict
from pathlib import Path
from typing import Any

from supportbench.bench.flops import eval_lines
from supportbench.checks.embedding import model_folder
from supportbench.config import EvalConfig
from supportbench.decoding import (
    CHOICE_RULE,
    SEARCH_RULE,
    Decoding,
    budget_check,
    candidates,
    compare_to_greedy,
    first_fitting,
    fits,
    frozen,
    given_settings,
    pick,
    run_budget,
)
from supportbench.deploy.export import exported_format
from supportbench.device import pick_device, process_state, shared
from supportbench.evaluation.guarded import guarded_record
from supportbench.evaluation.score_cache import base_score_key, load_scores, store_scores
from supportbench.facts.profile import profile_for_run
from supportbench.files import (
    SupportBenchError,
    ensure_writable_dir,
    folder_lock,
    json_bytes,
    jsonl_bytes,
    read_json,
    read_jsonl,
    sha256_file,
    write_json,
    write_together,
)
from supportbench.launch import world_size
from supportbench.layout import RunDir
from supportbench.metrics import GEN_TASK, METRICS, PPL_TASK, REPLY_METRICS, ROUGE_TYPES, corpus_bleu
from supportbench.models import model_path, resolve
from supportbench.prepare.dataset import instruction_hash, load_twcs_pairs
from supportbench.reports.plots import forest_png
from supportbench.serve.policy import ReplyPolicy
from supportbench.stats import eval_statistics, evidence_lines, mean_interval, paired_difference, signed_interval
from supportbench.tasks import include_path
from supportbench.tasks.customer_support.utils import intent_classifier, intent_classifier_record, shown_reply


def check_no_leakage(run: RunDir) -> dict[str, Any]:
    """Hash the exact train and test bytes that will be scored, match them to the manifests, and count shared
    normalized instructions in those rows; refuse on any mismatch or overlap."""
    split, trained = run.data, run.trained()
    hashes = {}
    for name in ("train", "test"):
        path = split.split_path(name)
        hashes[name] = sha256_file(path) if path.is_file() else "missing"
        if hashes[name] != split.split_sha256(name):
            raise SupportBenchError(
                f"{split.split_path(name)} is not the {name} split its manifest describes (sha256 differs: edited, "
                "truncated or missing); refusing to score"
            )
    if trained.split_sha256("train") != hashes["train"]:
        raise SupportBenchError(
            f"{split.path} no longer holds the split the adapter was trained on (train sha256 differs); refusing to score"
        )
    instructions = {name: {instruction_hash(r["instruction"]) for r in split.rows(name)} for name in ("train", "test")}
    shared = len(instructions["train"] & instructions["test"])
    if shared:
        raise SupportBenchError(
            f"test split shares {shared} normalized instruction(s) with the training split; refusing to score"
        )
    return {"train_sha256": hashes["train"], "test_sha256": hashes["test"], "shared_instructions": shared}


def _metric(task_results: dict[str, Any], name: str) -> float | None:
    value = next(v for k, v in task_results.items() if k.split(",")[0] == name)
    return None if isinstance(value, float) and math.isnan(value) else value  # NaN: no reply the check applies to


VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # the max_lora_rank values vLLM accepts


def check_backend(config: EvalConfig, adapter: Path) -> None:
    """Fail before any work when the chosen backend cannot run here, or cannot serve the adapter."""
    if config.backend != "vllm":
        return
    if importlib.util.find_spec("vllm") is None:
        raise SupportBenchError(
            "--backend vllm needs vLLM, which is not installed: `pip install vllm` on a machine with a GPU "
            "(or use --backend hf, data-parallel with --num-processes N)"
        )
    vllm_lora_rank(adapter)


def vllm_lora_rank(adapter: Path) -> int:
    """The adapter's r rounded up to a max_lora_rank that vLLM accepts (its default of 16 refuses a larger adapter)."""
    rank = read_json(Path(adapter) / "adapter_config.json")["r"]
    if rank > VLLM_LORA_RANKS[-1]:
        raise SupportBenchError(f"vLLM serves LoRA ranks up to {VLLM_LORA_RANKS[-1]}; {adapter} has r={rank}")
    return next(r for r in VLLM_LORA_RANKS if r >= rank)


def vllm_model_args(model_path: str, adapter: str | None, config: EvalConfig) -> dict[str, Any]:
    """lm-eval's vLLM model arguments: the base, the adapter as a LoRA request with max_lora_rank raised to cover its
    r (vLLM's default of 16 refuses a larger adapter), the parallel sizes, and the eval's token cap and seed."""
    args = {
        "pretrained": model_path,
        "dtype": pick_device().dtype_name,
        "tensor_parallel_size": config.tensor_parallel_size,
        "data_parallel_size": config.data_parallel_size,
        "batch_size": "auto",
        "max_gen_toks": config.max_new_tokens,
        "seed": config.seed,
    }
    if adapter:
        args["lora_local_path"] = adapter
        args["max_lora_rank"] = vllm_lora_rank(Path(adapter))
    return args


def load_lm(model_path: str, adapter: str | None, config: EvalConfig) -> Any:
    """The lm-eval model for one scoring: vLLM, the exact CTranslate2 runtime, or transformers sharded over the
    launched processes."""
    if config.backend == "vllm":
        from lm_eval.api.registry import get_model

        return get_model("vllm")(**vllm_model_args(model_path, adapter, config))
    from supportbench.evaluation.shrinking_batch import ShrinkingBatchHFLM

    device = pick_device()
    args = {"pretrained": model_path, "peft": adapter, "device": device.device, "dtype": device.dtype_name}
    processes = process_state()
    if config.backend == "ct2":
        from supportbench.evaluation import exact_runtime

        why_not = exact_runtime.available() or (
            f"{processes.num_processes} launched processes share the examples" if processes.num_processes > 1 else None
        )
        if why_not is None:
            folder = exact_runtime.converted(model_path, adapter)
            return exact_runtime.ExactRuntimeLM(folder, batch_size=config.gen_batch_size, **args)
        if processes.is_main_process:
            print(f"eval runs on transformers: {why_not}")
    lm = ShrinkingBatchHFLM(batch_size=config.gen_batch_size, **args)
    if processes.num_processes > 1 and lm.world_size == 1:
        # lm-eval splits the requests over launched processes only when they hold GPUs; CPU processes split the same way
        lm._rank, lm._world_size = processes.process_index, processes.num_processes
    return lm


def runtime_record(lm: Any, config: EvalConfig) -> dict[str, Any]:
    """Which runtime generated with the config's decoding and scored log-likelihoods, with the exact runtime's checks."""
    from supportbench.evaluation import exact_runtime

    if isinstance(lm, exact_runtime.ExactRuntimeLM):
        return lm.record(config_decoding(config).controls())
    used = "vllm" if config.backend == "vllm" else "transformers"
    return {"generation": used, "perplexity": used}


def score_model(
    model_path: str, adapter: str | None, metadata: dict[str, Any], config: EvalConfig, greedy_reference: bool = False
) -> dict[str, Any] | None:
    """Run generation (limited) and perplexity (whole split unless ppl_limit) for one model through lm-eval, and with
    greedy_reference the plain greedy generation too; None in every launched process but the main one,
    which gathers the results."""

    started = time.perf_counter()
    lm = load_lm(model_path, adapter, config)
    load_s = time.perf_counter() - started
    gen = generation_scores(lm, model_path, metadata, config, config.limit)
    reference = None
    if greedy_reference:
        reference = generation_scores(
            lm, model_path, metadata, with_decoding(config, plain_greedy(config)), config.limit
        )
    t1 = time.perf_counter()
    ppl = perplexity_scores(lm, model_path, metadata, config, config.ppl_limit)
    t2 = time.perf_counter()
    if gen is None:
        return None
    generated = gen["samples"]
    scored = sorted(ppl["samples"][PPL_TASK], key=lambda s: s["doc_id"])
    budget = lm.max_length - config.max_new_tokens
    truncated = sum(s["doc"]["prompt_tokens"] > budget for s in generated)
    return {
        "metrics": {**gen["metrics"], **{m: _metric(ppl["results"][PPL_TASK], m) for m in task_metrics(PPL_TASK)}},
        "n": {
            "generation": len(generated),
            "perplexity": len(scored),
            "prompts_left_truncated": truncated,
            "context_budget_tokens": budget,
        },
        "timing_s": {
            "load": round(load_s, 2),
            "generation": gen["seconds"],
            "perplexity": round(t2 - t1, 3),
        },
        "runtime": runtime_record(lm, config),
        "samples": [_example(s) for s in generated],  # in the split's order, however many processes scored them
        "perplexity_items": {s["doc"]["id"]: list(s["perplexity"]) for s in scored},
        "greedy_reference": reference and {"decoding": asdict(plain_greedy(config)), "metrics": reference["metrics"]},
        "lm_eval_config": gen["lm_eval_config"],
        "flops": stage_accounts(lm, config, generated, scored),
    }


def stage_accounts(
    lm: Any, config: EvalConfig, generated: list[dict[str, Any]], scored: list[dict[str, Any]]
) -> dict[str, Any] | None:
    """The FLOP accounts of one model's generation and perplexity (supportbench.bench.flops); None on a runtime
    without a transformers model to count the parameters of."""
    from supportbench.bench import flops

    model = getattr(lm, "_model", None)
    if model is None or not hasattr(model, "num_parameters"):
        return None
    parameters = model.num_parameters()
    # rows leave the batch as they end where transformers generated (supportbench.evaluation.shrinking_batch)
    shrinking = runtime_record(lm, config)["generation"] == "transformers"
    replies = lm.tokenizer([_raw(s) for s in generated], add_special_tokens=False)["input_ids"]
    # the generated tokens: the reply and the end of its turn, at most the cap
    reply_tokens = [min(len(ids) + 1, config.max_new_tokens) for ids in replies]
    prompts = [s["doc"]["prompt_tokens"] for s in generated]
    # two requests per perplexity doc: the reference reply after the prompt, and the prompt from the start token
    sequences = [s["doc"]["prompt_tokens"] + s["doc"]["target_tokens"] for s in scored]
    sequences += [s["doc"]["prompt_tokens"] + 1 for s in scored]
    return {
        "parameters": parameters,
        "generation": flops.generation_account(prompts, reply_tokens, config.gen_batch_size, parameters, shrinking),
        "perplexity": flops.scoring_account(sequences, config.ppl_batch_size, parameters),
    }


def task_metrics(task: str) -> list[str]:
    """The metrics one of our lm-eval tasks reports."""
    return [name for name, metric in METRICS.items() if metric.task == task]


def generation_scores(
    lm: Any, tokenizer_path: str, metadata: dict[str, Any], config: EvalConfig, limit: int | None
) -> dict[str, Any] | None:
    """Generate and score `limit` replies of the task's split with the config's decoding; None in every launched
    process but the main one."""
    from lm_eval import simple_evaluate

    started = time.perf_counter()
    gen = simple_evaluate(tasks=[GEN_TASK], limit=limit, **evaluate_kwargs(lm, tokenizer_path, metadata, config))
    if gen is None:
        return None
    return {
        "metrics": {m: _metric(gen["results"][GEN_TASK], m) for m in task_metrics(GEN_TASK)},
        "samples": sorted(gen["samples"][GEN_TASK], key=lambda s: s["doc_id"]),
        "seconds": round(time.perf_counter() - started, 3),
        "lm_eval_config": gen["config"],
    }


def perplexity_scores(
    lm: Any, tokenizer_path: str, metadata: dict[str, Any], config: EvalConfig, limit: int | None
) -> dict[str, Any] | None:
    """lm-eval's perplexity task on `limit` examples at the config's perplexity batch; None in every launched process
    but the main one."""
    from lm_eval import simple_evaluate

    if config.backend != "vllm":
        lm.batch_size_per_gpu = config.ppl_batch_size  # HFLM has one batch size; scoring wants a narrower one
    return simple_evaluate(tasks=[PPL_TASK], limit=limit, **evaluate_kwargs(lm, tokenizer_path, metadata, config))


def config_decoding(config: EvalConfig) -> Decoding:
    """The decoding a resolved eval config generates with."""
    return Decoding(config.max_new_tokens, config.repetition_penalty, config.no_repeat_ngram_size)


def plain_greedy(config: EvalConfig) -> Decoding:
    """Plain greedy decoding at the config's cap: no repetition controls."""
    return Decoding(config.max_new_tokens)


def with_decoding(config: EvalConfig, decoding: Decoding) -> EvalConfig:
    """The config with every decoding setting filled in."""
    return dataclasses.replace(config, **asdict(decoding))


def report_environment_once() -> None:
    """Collect torch's environment report, which lm-eval's simple_evaluate adds to every result, once per process: it
    runs `pip list` and ten other commands (0.25 s, measured) on each of an eval's eight calls, and cannot change."""
    from torch.utils import collect_env

    if not hasattr(collect_env.get_pretty_env_info, "cache_info"):
        collect_env.get_pretty_env_info = functools.cache(collect_env.get_pretty_env_info)


def evaluate_kwargs(lm: Any, tokenizer_path: str, metadata: dict[str, Any], config: EvalConfig) -> dict[str, Any]:
    """simple_evaluate's arguments shared by every model scored: our tasks, seeds, samples kept, the decoding."""
    from lm_eval.tasks import TaskManager

    report_environment_once()

    task_metadata = {**metadata, "tokenizer": tokenizer_path, "max_new_tokens": config.max_new_tokens}
    manager = TaskManager(include_path=str(include_path()), include_defaults=False, metadata=task_metadata)
    return {
        "model": lm,
        "task_manager": manager,
        "log_samples": True,
        "bootstrap_iters": 0,
        "random_seed": config.seed,
        "numpy_random_seed": config.seed,
        "torch_random_seed": config.seed,
        "gen_kwargs": {"max_gen_toks": config.max_new_tokens, **config_decoding(config).controls()},
    }


def validation_metadata(run: RunDir) -> dict[str, Any]:
    """lm-eval task metadata that scores the run's validation split in its template."""
    split = run.data
    return {
        "template": run.trained().template,
        "data_dir": str(split.path),
        "split": "validation",
        "sha256": split.split_sha256("validation"),
    }


def validation_scores(
    lm: Any, path: str, metadata: dict[str, Any], config: EvalConfig, limit: int
) -> dict[str, Any] | None:
    """Generation metrics on the validation split's first `limit` examples, ROUGE-L as its mean with the 95% bootstrap
    interval, and the seconds taken; None in launched processes but the main one."""
    result = generation_scores(lm, path, metadata, config, limit)
    if result is None:
        return None
    per_example = [s["rougeL"] for s in result["samples"]]
    rouge_l = mean_interval(per_example, config.seed)
    return {**result["metrics"], "rougeL": rouge_l, "per_example_rougeL": per_example, "seconds": result["seconds"]}


def choose_decoding(run: RunDir, config: EvalConfig, metadata: dict[str, Any]) -> Decoding:
    """Freeze the run's decoding (decoding.json, main process) and return it in every process. Plain greedy is
    generated on the validation split's first examples (the budget check); it is kept unless it leaves more than 2%
    at the cap or loops, when the other candidates are tried in order until one fits. --choose-decoding tries every
    candidate and picks by decoding.pick."""
    trained = run.trained()
    path = model_path(trained.base_model)
    cap = config.max_new_tokens or run_budget(run)
    validation = {**metadata, **validation_metadata(run)}
    tried = candidates(cap, ngram_controls=config.backend != "vllm")
    lm = load_lm(path, str(run.adapter), with_decoding(config, tried[0]))
    scored: list[dict[str, Any]] = []
    why = ""
    for candidate in tried:
        result = validation_scores(lm, path, validation, with_decoding(config, candidate), config.validation_limit)
        if result is not None:
            scored.append({"decoding": asdict(candidate), **result})
            why = why or budget_check(scored[0], config.validation_limit)
        # every process generates the same candidates: the main one decides whether to go on
        if not config.choose_decoding and shared(bool(scored) and first_fitting(scored) is not None):
            break
    processes = process_state()
    if processes.is_main_process:
        scored = compare_to_greedy(scored, config.seed)
        searched = config.choose_decoding or len(scored) > 1 or not fits(scored[0])
        choice, reason = (None if config.choose_decoding else first_fitting(scored)) or pick(scored)
        write_json(
            run.decoding,
            {
                "chosen": asdict(choice),
                "label": choice.label(),
                "searched": searched,
                "why": "--choose-decoding: every candidate compared"
                if config.choose_decoding
                else why
                + ("; the other candidates were tried in order until one fitted" if searched else "; no search"),
                "rule": CHOICE_RULE if config.choose_decoding else SEARCH_RULE,
                "reason": reason if searched else "plain greedy: it fits, so no other candidate was generated",
                "budget": trained.reply_tokens and trained.reply_tokens.model_dump(),
                "validation_examples": config.validation_limit,
                "runtime": runtime_record(lm, with_decoding(config, tried[0])),
                "candidates": scored,
            },
        )
    processes.wait_for_everyone()
    return frozen(run)


def _raw(sample: dict[str, Any]) -> str:
    raw = sample["filtered_resps"][0]
    return raw[0] if isinstance(raw, list) else raw


def _example(sample: dict[str, Any]) -> dict[str, Any]:
    """What eval keeps of one lm-eval generation sample: the doc's fields, the cut reply and its ROUGE scores."""
    doc = sample["doc"]
    filled = shown_reply(doc, _raw(sample))[0]
    fields = {
        "id": doc["id"],
        "category": doc["category"],
        "intent": doc["intent"],
        "language": doc.get("language", ""),
        "tags": doc.get("tags", ""),
    }
    fields["query"] = doc["instruction"]
    scores = {m: _metric(sample, m) for m in (*ROUGE_TYPES, *REPLY_METRICS)}
    return {**fields, "reference": doc["reference"], "reply": filled.text, "slot_fills": dict(filled.counts), **scores}


def slot_fills(samples: list[dict[str, Any]]) -> dict[str, int]:
    """How the replies' slots were filled, summed (fill_reply's counts: from the profile, from the conversation, a
    neutral phrase, mapped to the nearest slot, unknown, an open `{{` dropped); empty for cached older scores."""
    return dict(sum((Counter(s.get("slot_fills", {})) for s in samples), Counter()))


def per_category(samples: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """ROUGE means and corpus BLEU per category, from the per-example records."""
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for sample in samples:
        groups[sample["category"]].append(sample)
    table = {}
    for category, members in sorted(groups.items()):
        row = {m: sum(s[m] for s in members) / len(members) for m in ROUGE_TYPES}
        row["bleu"] = corpus_bleu([s["reply"] for s in members], [s["reference"] for s in members])
        row["n"] = len(members)
        table[category] = row
    return table


def delta_pct(base: float | None, tuned: float | None) -> float | None:
    """Relative change in percent (None when the base is zero, or either was not measured)."""
    return None if not base or tuned is None else 100.0 * (tuned - base) / base


def check_adapter_applied(base: dict[str, Any], tuned: dict[str, Any]) -> None:
    """Refuse to report a fine-tuned score that equals the base in every reply and log-likelihood: the adapter did nothing."""
    same_replies = [s["reply"] for s in base["samples"]] == [s["reply"] for s in tuned["samples"]]
    if same_replies and base["perplexity_items"] == tuned["perplexity_items"]:
        raise SupportBenchError(
            "the fine-tuned model's replies and log-likelihoods equal the base model's on every example: "
            "the adapter was not applied (or changes nothing); refusing to report a fine-tuned score"
        )


def check_before_work(run: RunDir, config: EvalConfig) -> dict[str, Any]:
    """Every eval precondition, checked before any model loads; returns the lm-eval task metadata."""
    config.validate()
    trained = run.require_adapter()
    check_backend(config, run.adapter)
    ensure_writable_dir(run.path)
    profile = profile_for_run(run.data, config.profile)  # a slot the model can emit and the profile lacks: refused
    metadata: dict[str, Any] = {
        "template": trained.template,
        "data_dir": str(run.data.path),
        "profile": config.profile,
        "profile_sha256": profile.sha256,
        "embedding_model": config.embedding_model,
    }
    model_folder(config.embedding_model)  # the default embedding model with other weights: refused before any work
    leakage = check_no_leakage(run)
    if config.twcs:
        load_twcs_pairs(Path(config.twcs))  # missing, header-only or pairless files fail here, not after a model load
        metadata["twcs"] = config.twcs
    else:
        metadata["sha256"] = leakage["test_sha256"]  # the task refuses to load other bytes than these
    # the reply policy of the guarded column (in-domain only): a profile it refuses fails here, before any model
    policy = None if config.twcs else ReplyPolicy.for_run(run, profile)
    return {
        "metadata": metadata,
        "leakage": leakage,
        "trained": trained,
        "profile": profile.record(),
        "policy": policy,
    }


def resolve_decoding(run: RunDir, config: EvalConfig, metadata: dict[str, Any]) -> tuple[EvalConfig, str]:
    """The config with its decoding filled in: the flags given, else the run's frozen decoding, else (or with
    --choose-decoding) one chosen on the validation split now (and frozen); with where it came from."""
    flags = given_settings(asdict(config))
    if len(flags) == len(Decoding.__dataclass_fields__):
        return config, "command line"
    chosen, source = frozen(run), f"frozen in {run.decoding.name}"
    if chosen is None or config.choose_decoding:
        chosen, source = (
            choose_decoding(run, config, metadata),
            f"chosen on validation now, frozen in {run.decoding.name}",
        )
    return with_decoding(config, dataclasses.replace(chosen, **flags)), source


def evaluate_run(run_dir: Path, config: EvalConfig) -> dict[str, Any] | None:
    """Score base and base+adapter on the run's held-out split and write eval/ into the run folder, holding the run's
    lock; None in every launched process but the main one."""
    with folder_lock(Path(run_dir), "eval"):
        summary = _evaluate_run(run_dir, config)
    if world_size() > 1:  # no process exits while another still writes: a peer's early teardown can abort it
        process_state().wait_for_everyone()
    return summary


def _evaluate_run(run_dir: Path, config: EvalConfig) -> dict[str, Any] | None:
    run = RunDir(run_dir)
    checked = check_before_work(run, config)
    metadata, trained = checked["metadata"], checked["trained"]
    base_name = trained.base_model
    config, decoding_source = resolve_decoding(run, config, metadata)
    if config.base_model and config.base_model != base_name:
        return score_other_base(run, config, metadata)
    path = model_path(base_name)
    key = base_score_key(path, metadata, config)
    base = load_scores(key)
    base_from_cache = base is not None
    if base is None:
        base = score_model(path, None, metadata, config)
        if base is not None:
            store_scores(key, base)
    decoding = config_decoding(config)
    tuned = score_model(path, str(run.adapter), metadata, config, greedy_reference=not decoding.is_plain_greedy)
    if base is None or tuned is None:
        return None
    check_adapter_applied(base, tuned)
    by_id = {s["id"]: s for s in tuned["samples"]}
    side_by_side = [
        {
            **{k: s[k] for k in ("id", "category", "intent", "language", "tags", "query", "reference")},
            "base": s["reply"],
            "finetuned": by_id[s["id"]]["reply"],
            **{f"base_{m}": s[m] for m in (*ROUGE_TYPES, *REPLY_METRICS)},
            **{f"finetuned_{m}": by_id[s["id"]][m] for m in (*ROUGE_TYPES, *REPLY_METRICS)},
        }
        for s in base["samples"]
    ]
    perplexity_pairs = [
        [*base["perplexity_items"][i], *tuned["perplexity_items"][i]] for i in base["perplexity_items"]
    ]
    summary = {
        "run": str(run.path),
        "dataset": "twcs" if config.twcs else "heldout-test",
        "base_model": base_name,
        "template": trained.template,
        "config": asdict(config),
        "processes": world_size(),  # the examples were split over this many processes; the scores do not depend on it
        "leakage_check": checked["leakage"],
        "profile": checked["profile"],  # the company profile that filled replies and references
        # what the customer-facing checks rest on: the embedding model, and the intent classifier's test accuracy
        "reply_checks": {
            "embedding_model": config.embedding_model,
            "intent_classifier": None if config.twcs else intent_classifier_record(metadata),
        },
        "n": {"base": base["n"], "finetuned": tuned["n"]},
        "caps": {
            "generation_limit": config.limit,
            "perplexity_limit": config.ppl_limit,
            "max_new_tokens": config.max_new_tokens,
        },
        "decoding": {**asdict(decoding), "label": decoding.label(), "source": decoding_source},
        "metrics": {"base": base["metrics"], "finetuned": tuned["metrics"]},
        "slot_fills": {"base": slot_fills(base["samples"]), "finetuned": slot_fills(tuned["samples"])},
        # the fine-tuned model decoded plain greedy, when the chosen decoding differs
        "greedy_reference": tuned["greedy_reference"],
        "delta_pct": {m: delta_pct(base["metrics"][m], tuned["metrics"][m]) for m in base["metrics"]},
        "timing_s": {"base": base["timing_s"], "finetuned": tuned["timing_s"]},
        # which runtime generated and scored, with its exactness check (a cached entry keeps the one that scored it)
        "runtime": {"base": base.get("runtime"), "finetuned": tuned["runtime"]},
        "base_scores": {"from_cache": base_from_cache, "key": key},
        # the model FLOPs each stage needed against this CPU's matmul rate (bench.flops.matmul_limit; a cached base has none)
        "flops": flop_shares({"finetuned": tuned, **({} if base_from_cache else {"base": base})}),
        "lm_eval": {"version": importlib.metadata.version("lm_eval"), "config": base["lm_eval_config"]},
    }
    out = run.evaluation(ood=bool(config.twcs))
    statistics = eval_statistics(side_by_side, perplexity_pairs, config.seed)
    policy = checked["policy"]
    summary["reply_policy"] = "on" if policy else "off"
    outputs = {
        out.per_category: json_bytes(
            {"base": per_category(base["samples"]), "finetuned": per_category(tuned["samples"])}
        ),
        out.samples: jsonl_bytes(side_by_side),
        out.stats: json_bytes(statistics),
    }
    slices = [
        (f"{r['intent']} (n={r['n']})", *(r["difference"][k] for k in ("mean", "low", "high")), r["judged"])
        for r in statistics["by_intent"]
        if "difference" in r
    ]
    if policy:
        classifier = intent_classifier(str(run.data.path), config.profile or "")
        record = guarded_record(policy, run, side_by_side, config.embedding_model, classifier, config.seed)
        outputs[out.guarded] = json_bytes(record)
    else:
        out.guarded.unlink(missing_ok=True)  # an earlier eval's guarded column would not belong to these replies
    if slices:
        outputs[out.forest] = forest_png(slices, "ROUGE-L, fine-tuned minus base (95% interval)")
    else:
        out.forest.unlink(missing_ok=True)  # an earlier eval's plot would not belong to these scores
    # the files commit together, metrics.json last with each one's hash: a failed eval leaves no mixed folder
    return write_together(outputs, out.metrics, summary)


def flop_shares(scored: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Each model's stage accounts with their wall times and shares of the matmul limit, measured once here."""
    from supportbench.bench import flops

    rate = flops.matmul_limit()
    shares: dict[str, Any] = {"matmul": rate}
    for side, result in scored.items():
        accounts = result.get("flops")
        shares[side] = accounts and {
            stage: flops.with_share(accounts[stage], result["timing_s"][stage], rate["flops_per_s"])
            for stage in ("generation", "perplexity")
        }
    return shares


def score_other_base(run: RunDir, config: EvalConfig, metadata: dict[str, Any]) -> dict[str, Any] | None:
    """Score another base model alone on the run's held-out split, in its own template; write eval/base_models/."""
    name = config.base_model
    result = score_model(model_path(name), None, {**metadata, "template": resolve(name).template}, config)
    if result is None:
        return None
    summary = {
        "run": str(run.path),
        "dataset": "twcs" if config.twcs else "heldout-test",
        "base_model": name,
        "template": resolve(name).template,
        "config": asdict(config),
        "n": {"base": result["n"]},
        "metrics": {"base": result["metrics"]},
        "timing_s": {"base": result["timing_s"]},
        "runtime": {"base": result["runtime"]},
        "lm_eval": {"version": importlib.metadata.version("lm_eval"), "config": result["lm_eval_config"]},
    }
    write_json(run.base_model_scores(name), summary)
    return summary


def score_exported(run_dir: Path) -> dict[str, Any]:
    """Score the exported fine-tuned model with the settings of the run's fp32 eval, paired with it example by example."""
    from supportbench.deploy import runtime

    run = RunDir(Path(run_dir))
    if not run.eval.metrics.is_file():
        raise SupportBenchError(
            f"{run.path} has no eval to pair the exported model with; run `supportbench eval --run {run.path}` first"
        )
    fp32 = run.eval.summary()
    config = fp32.config
    if config.twcs:
        raise SupportBenchError(
            f"{run.eval.metrics} scores TWCS; the exported model pairs with the held-out split's eval"
        )
    checked = check_before_work(run, config)
    if exported_format(run.path) is None:
        raise SupportBenchError(f"{run.path} has no exported model; run `supportbench export --run {run.path}` first")
    folder = run.exported(runtime.FORMAT)
    started = time.perf_counter()
    lm = runtime.exported_lm(folder, config.gen_batch_size)
    load_s = time.perf_counter() - started
    gen = generation_scores(lm, str(folder), checked["metadata"], config, config.limit)
    samples = [_example(s) for s in gen["samples"]]
    reference = {s["id"]: s for s in read_jsonl(run.eval.samples)}
    if set(reference) != {s["id"] for s in samples}:
        raise SupportBenchError(
            f"the exported eval scored other examples than {run.eval.samples}; refusing to pair them"
        )
    fp32_rouge = [reference[s["id"]]["finetuned_rougeL"] for s in samples]
    summary = {
        "format": runtime.FORMAT,
        "path": str(folder),
        "n": len(samples),
        "metrics": {
            "exported": gen["metrics"],
            "fp32": {m: fp32.metrics["finetuned"][m] for m in task_metrics(GEN_TASK)},
        },
        "rougeL_difference": paired_difference(fp32_rouge, [s["rougeL"] for s in samples], config.seed),
        "identical_replies": sum(reference[s["id"]]["finetuned"] == s["reply"] for s in samples),
        "config": asdict(config),
        "timing_s": {"load": round(load_s, 2), "generation": gen["seconds"]},
    }
    return write_together({run.exported_eval.samples: jsonl_bytes(samples)}, run.exported_eval.metrics, summary)


def table_lines(summary: dict[str, Any]) -> list[str]:
    """The base / fine-tuned / change table (base only for another base model)."""
    base = summary["metrics"]["base"]
    n = summary["n"]["base"]
    header = f"{summary['dataset']}: {n['generation']} generated, {n['perplexity']} for perplexity"
    if "finetuned" not in summary["metrics"]:
        return [f"{summary['base_model']} (base, {summary['template']} template), {header}"] + [
            f"{metric:<22}{_shown(value):>10}" for metric, value in base.items()
        ]
    tuned, delta = summary["metrics"]["finetuned"], summary["delta_pct"]
    if summary["base_scores"]["from_cache"]:
        header += " (base scores reused from the cache)"
    decoding = summary["decoding"]
    lines = [header, f"decoding: {decoding['label']} ({decoding['source']})"]
    lines.append(f"{'metric':<22}{'base':>10}{'fine-tuned':>12}{'change':>10}")
    for metric in (m for m in METRICS if m in base):  # the declared order, also for base scores read from the cache
        change = "n/a" if delta[metric] is None else f"{delta[metric]:+.1f}%"
        lines.append(f"{metric:<22}{_shown(base[metric]):>10}{_shown(tuned[metric]):>12}{change:>10}")
    if summary["greedy_reference"]:
        greedy = summary["greedy_reference"]["metrics"]
        shown = ", ".join(f"{m} {greedy[m]:.4f}" for m in ("rougeL", "bleu", "at_cap", "runon"))
        lines.append(f"fine-tuned, plain greedy (reference): {shown}")
    if fills := summary.get("slot_fills", {}).get("finetuned"):
        lines.append("fine-tuned slots filled: " + ", ".join(f"{how} {n}" for how, n in sorted(fills.items())))
    scored = RunDir(Path(summary["run"])).evaluation(ood=summary["dataset"] == "twcs")
    return lines + evidence_lines(scored.statistics())[:2] + eval_lines(summary.get("flops"))


def _shown(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"  # None: no reply the check applies to


def exported_lines(summary: dict[str, Any]) -> list[str]:
    """The exported model against the fp32 fine-tuned model, metric by metric, with the paired ROUGE-L difference."""
    exported, fp32 = summary["metrics"]["exported"], summary["metrics"]["fp32"]
    lines = [f"{summary['format']} against the fp32 fine-tuned model, {summary['n']} examples (same prompts, greedy):"]
    lines += [
        f"{metric:<22}{fp32[metric]:>10.4f}{exported[metric]:>12.4f}"
        for metric in ("rougeL", "bleu", "runon", "placeholder_leak")
    ]
    return [*lines, f"ROUGE-L exported - fp32: {signed_interval(summary['rougeL_difference'])}"]

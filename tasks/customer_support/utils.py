"""Helpers for the customer_support lm-eval tasks: data loading, per-sample scoring, aggregation."""

from __future__ import annotations

import functools
import hashlib
import math
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

import datasets
from lm_eval.api.instance import Instance
from lm_eval.api.task import ConfigurableTask

from supportbench.checks import intent
from supportbench.checks.embedding import DEFAULT_EMBEDDING_MODEL, similarity
from supportbench.checks.language import judgeable, language_of
from supportbench.checks.repetition import repeats
from supportbench.config import DataConfig, resolve_source
from supportbench.facts.identifiers import copied, invented
from supportbench.facts.profile import Profile, load_profile
from supportbench.facts.slots import Filled, fill_reply, stated_slots
from supportbench.files import SupportBenchError, sha256_file
from supportbench.layout import SplitDir
from supportbench.metrics import best_rouge_l, corpus_bleu, leaks_placeholder, rouge, word_count
from supportbench.models import cache_root
from supportbench.prepare.dataset import load_twcs_pairs, prepare
from supportbench.templates import cut_at_stops, get_template, has_runon, row_turns

SPLIT_ENV = "SUPPORTBENCH_SPLIT"


def _default_split() -> SplitDir:
    """Prepare the default split once into the cache (keyed by the data source) and return its folder."""
    source = resolve_source(None)
    split = SplitDir(cache_root().parent / "data" / hashlib.sha256(source.encode()).hexdigest()[:12])
    if not split.is_prepared:
        prepare(DataConfig(source=source), split.path)
    return split


def _split(metadata: dict[str, Any]) -> SplitDir:
    data_dir = metadata.get("data_dir") or os.environ.get(SPLIT_ENV)
    return SplitDir(Path(data_dir)) if data_dir else _default_split()


def _rows(metadata: dict[str, Any]) -> list[dict[str, Any]]:
    if metadata.get("twcs"):
        return load_twcs_pairs(Path(metadata["twcs"]))
    split, name = _split(metadata), metadata.get("split", "test")
    expected = metadata.get("sha256")
    if expected and split.split_path(name).is_file() and sha256_file(split.split_path(name)) != expected:
        raise SupportBenchError(
            f"{split.split_path(name)} changed after it was checked (sha256 differs); refusing to score it"
        )
    return split.rows(name)


def read_reference(row: dict[str, Any], profile: Profile) -> str:
    """A reference reply as a customer would read it: its slots filled from the profile and the conversation."""
    return fill_reply(row["response"], [turn.customer for turn in row_turns(row)], profile.values).text


@functools.lru_cache(maxsize=4)
def intent_classifier(data_dir: str, profile_path: str) -> str:
    """The intent classifier's cached file, fitted on the split's training replies read like references; "" where
    they carry fewer than two intents (intent fidelity is then absent)."""
    split, profile = SplitDir(Path(data_dir)), _profile(profile_path)
    rows = split.rows("train")
    path = intent.fit_cached([read_reference(r, profile) for r in rows], [r.get("intent") or "" for r in rows])
    return str(path or "")


def intent_classifier_record(metadata: dict[str, Any]) -> dict[str, Any] | None:
    """The classifier's accuracy on the test split's reference replies (None without a classifier)."""
    split, profile = _split(metadata), _profile(metadata.get("profile") or "")
    path = intent_classifier(str(split.path), metadata.get("profile") or "")
    if not path:
        return None
    rows = [r for r in split.rows("test") if r.get("intent")]
    return intent.accuracy_record(path, [read_reference(r, profile) for r in rows], [r["intent"] for r in rows])


def split_languages(split: SplitDir) -> str:
    """The languages the split's queries were detected among (its prepare config), comma-separated."""
    return split.manifest().get("config", {}).get("languages") or DataConfig().languages


def _tokenizer_source(metadata: dict[str, Any]) -> str:
    source = metadata.get("tokenizer") or metadata.get("pretrained")
    if not source or not isinstance(source, str):
        raise SupportBenchError(
            'customer_support tasks need a tokenizer: pass --metadata \'{"tokenizer": "<id or dir>"}\''
        )
    return source


@functools.lru_cache(maxsize=4)
def _load_tokenizer(source: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(source)


def at_cap(raw: str, doc: dict[str, Any]) -> bool:
    """True when a generation used the whole new-token cap (within one token: a final end-of-turn may be dropped)."""
    if not doc["reply_cap"]:
        return False
    return len(_load_tokenizer(doc["tokenizer"])(raw, add_special_tokens=False)["input_ids"]) >= doc["reply_cap"] - 1


def load_docs(**metadata: Any) -> datasets.DatasetDict:
    """lm-eval `custom_dataset` hook: the prepared split rendered in the chosen template, with token counts."""
    source = _tokenizer_source(metadata)
    tokenizer = _load_tokenizer(source)
    template = get_template(metadata.get("template", "seed"))
    stops = template.stop_sequences(tokenizer)
    encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    profile = _profile(metadata.get("profile") or "")
    split, rows = _split(metadata), _rows(metadata)
    classifier = intent_classifier(str(split.path), metadata.get("profile") or "")
    known_intents = intent.intents(classifier) if classifier else set()
    references = [read_reference(row, profile) for row in rows]
    by_intent: dict[str, list[str]] = defaultdict(list)
    if not metadata.get("twcs"):  # tweets carry no intent: one reference each
        for row, reference in zip(rows, references, strict=True):
            by_intent[row.get("intent") or ""].append(reference)
    docs = []
    for row, reference in zip(rows, references, strict=True):
        turns = row_turns(row)
        customer_texts = [turn.customer for turn in turns]
        prompt = template.prompt(turns, tokenizer)
        target = template.target(row["response"])
        context = prompt.rstrip()  # lm-eval moves the prompt's trailing spaces into the continuation
        docs.append(
            {
                "id": row["id"],
                "category": row["category"],
                "intent": row["intent"],
                "language": row.get("language", ""),
                "tags": row.get("tags") or "",
                "instruction": row["instruction"],
                # what a customer would read: the reference's slots filled like the reply's (fill_reply)
                "reference": reference,
                "reference_slots": sorted(stated_slots(reference, customer_texts, profile.values)),
                # every test reference of the same intent, for the multi-reference ROUGE-L
                "intent_references": by_intent.get(row["intent"], []) if row["intent"] else [],
                "intent_model": classifier if row["intent"] in known_intents else "",
                "languages": split_languages(split),
                "embedding_model": metadata.get("embedding_model") or DEFAULT_EMBEDDING_MODEL,
                "customer_texts": customer_texts,
                "profile": metadata.get("profile") or "",
                "prompt": prompt,
                "target": target,
                "stop": stops,
                "target_tokens": len(encode(prompt + target)) - len(encode(context)),
                "prompt_tokens": len(encode(prompt)),
                "tokenizer": source,
                "reply_cap": metadata.get("max_new_tokens") or 0,  # 0: the reply cap is unknown, at_cap is not counted
            }
        )
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(docs)})


@functools.lru_cache(maxsize=4)
def _profile(path: str) -> Profile:
    return load_profile(path or None)  # "": the bundled profile


def shown_reply(doc: dict[str, Any], raw: str) -> tuple[Filled, bool]:
    """A generation as the customer sees it: cut at the template's stops, its slots filled from the doc's profile and
    the customer's texts (fill_reply, which counts how each slot was filled); with whether a stop was hit."""
    reply, stopped = cut_at_stops(raw, doc["stop"])
    return fill_reply(reply, doc["customer_texts"], _profile(doc["profile"]).values), stopped


def share(part: int, whole: int) -> float:
    """part / whole, NaN where whole is 0: the check does not apply to this reply (lm-eval's nanmean skips it)."""
    return part / whole if whole else math.nan


def process_gen(doc: dict[str, Any], results: list[str]) -> dict[str, Any]:
    """Score one generation as the customer sees it (shown_reply): ROUGE, BLEU pair, format and fact checks."""
    raw = results[0]
    filled, stopped = shown_reply(doc, raw)
    reply = filled.text
    profile = _profile(doc["profile"]).values
    used = copied(reply, doc["customer_texts"], doc["reference"])
    wanted, stated = set(doc["reference_slots"]), stated_slots(reply, doc["customer_texts"], profile)
    return {
        **rouge(reply, doc["reference"]),
        "bleu": (reply, doc["reference"]),
        "runon": float(stopped or has_runon(raw)),
        "placeholder_leak": float(leaks_placeholder(reply)),
        "response_words": float(word_count(reply)),
        "at_cap": float(at_cap(raw, doc)),
        "invented_facts": float(bool(invented(reply, doc["customer_texts"], profile.values()))),
        "copied_facts": math.nan if used is None else float(used),
        "slot_recall": share(len(wanted & stated), len(wanted)),
        "slot_precision": share(len(wanted & stated), len(stated)),
        **customer_checks(doc, reply),
    }


def customer_checks(doc: dict[str, Any], reply: str) -> dict[str, float]:
    """What a customer sees in one reply: its meaning against the reference, the intent it answers, the best
    ROUGE-L over the intent's references, its language against the query's, and whether it loops; NaN where a
    check has no label to check against (no intent, or a query too short to tell its language by)."""
    return {
        "semantic_similarity": similarity(reply, doc["reference"], doc["embedding_model"]),
        "intent_fidelity": (
            float(intent.predict(doc["intent_model"], reply) == doc["intent"]) if doc["intent_model"] else math.nan
        ),
        "rougeL_multi": best_rouge_l(reply, doc["intent_references"]) if doc["intent_references"] else math.nan,
        "language_match": (
            float(bool(reply.strip()) and language_of(reply, doc["languages"]) == doc["language"])
            if doc["language"] and judgeable(doc["instruction"])
            else math.nan
        ),
        "repetition": float(repeats(reply)),
    }


def bleu(items: list[tuple[str, str]]) -> float:
    """Aggregate (prediction, reference) pairs into corpus BLEU-4."""
    predictions, references = zip(*items, strict=True)
    return corpus_bleu(list(predictions), list(references))


class PerplexityTask(ConfigurableTask):
    """A log-likelihood task with two requests per doc: the reply given the prompt, and the prompt itself."""

    def __init__(self, config: dict[str, Any]) -> None:
        super().__init__(config={k: v for k, v in config.items() if k != "class"})

    def construct_requests(self, doc: dict[str, Any], ctx: str, **kwargs: Any) -> list[Instance]:
        kwargs.pop("apply_chat_template", None)
        kwargs.pop("chat_template", None)
        pairs = [(ctx, doc["target"]), ("", doc["prompt"])]
        return [
            Instance(request_type="loglikelihood", doc=doc, arguments=pair, idx=i, **kwargs)
            for i, pair in enumerate(pairs)
        ]


def process_ppl(doc: dict[str, Any], results: list[tuple[float, bool]]) -> dict[str, tuple[float, int]]:
    """Response-only and whole-text (reference recipe) log-likelihoods, each with its token count."""
    (reply_ll, _), (prompt_ll, _) = results
    return {
        "perplexity": (reply_ll, doc["target_tokens"]),
        "perplexity_fulltext": (reply_ll + prompt_ll, doc["target_tokens"] + doc["prompt_tokens"]),
    }

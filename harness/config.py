"""The typed configs of every stage: defaults, help, type checks and range checks, presets. No torch import."""

from __future__ import annotations

import math
import os
import types
import typing
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

from supportbench.checks.embedding import DEFAULT_EMBEDDING_MODEL
from supportbench.checks.invariance import PERTURBATIONS
from supportbench.files import SupportBenchError, read_bundled_yaml, read_user_yaml
from supportbench.metrics import METRICS

DEFAULT_DATASET = "bitext/Bitext-customer-support-llm-chatbot-training-dataset"
DATA_ENV = "SUPPORTBENCH_DATA"
DEFAULT_PRESET = "ci"
PRESET_PACKAGE, PRESET_DIR = "supportbench.trainers", "presets"
FACT_MODES = ("fill", "slots")
SPLIT_MODES = ("heldout", "sample", "notebook")  # notebook: the old name of sample, kept for one release
TRAIN_METHODS = ("sft", "dpo")
GENERATION_EXAMPLES = 50  # the reference recipe's eval size; eval and rank share it
MIN_VALIDATION = 2  # validation replies are scored with a bootstrap interval, which needs two
OPTIONAL_COLUMNS = ("category", "intent", "flags", "tags")  # labels an example may carry, whatever its format
MAPPABLE_COLUMNS = (
    *("instruction", "response", *OPTIONAL_COLUMNS),  # one exchange per row
    "messages",  # chat transcripts: a list of {role, content}
    *("text", "role", "conversation", "order", "message_id", "reply_to"),  # one message per row
)


def option(default: Any, help: str, **cli: Any) -> Any:
    """A config field with its help text; `cli` holds flag, choices or parse for the command line."""
    factory = {"default_factory": lambda: list(default)} if isinstance(default, list) else {"default": default}
    return field(**factory, metadata={"help": help, **cli})


def resolve_source(explicit: str | None) -> str:
    """Pick the data source: an explicit path or id, else $SUPPORTBENCH_DATA, else the hub default."""
    return explicit or os.environ.get(DATA_ENV) or DEFAULT_DATASET


def preset_names() -> list[str]:
    """Names of the bundled training presets."""
    folder = resources.files(PRESET_PACKAGE).joinpath(PRESET_DIR)
    return sorted(p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml"))


def comma_list(text: str) -> list[str]:
    """Parse "a,b" into ["a", "b"], dropping blanks."""
    return [part.strip() for part in text.split(",") if part.strip()]


def lora_targets(text: str) -> list[str] | str:
    """Parse --lora-targets: "all-linear" as is, else a comma-separated list of module names."""
    return text if text == "all-linear" else comma_list(text)


def _check(config: Any, checks: dict[str, bool], what: str) -> None:
    bad = [name for name, ok in checks.items() if not ok]
    if bad:
        shown = {n: list(v) if isinstance(v := getattr(config, n), tuple) else v for n in bad}
        raise SupportBenchError(f"invalid {what}: " + ", ".join(f"{n}={v!r}" for n, v in shown.items()))


@dataclass
class DataConfig:
    """Everything that decides the prepared split; the same config and input give the same bytes."""

    source: str = option(
        DEFAULT_DATASET, "hub dataset id or local CSV/JSONL/Parquet file", flag="--data", env=DATA_ENV
    )
    seed: int = option(42, "split seed")
    mode: str = option(
        "heldout",
        "heldout: fixed-size held-out test set; sample: sample N rows, then split them 90/10 (notebook: old name)",
        choices=SPLIT_MODES,
    )
    test_size: int = option(500, "held-out test rows")
    validation_size: int = option(100, "validation rows")
    sample_size: int = option(5000, "rows sampled in sample mode")
    facts: str = option(
        "slots",
        "slots: keep company facts as {{Slot}} for the profile to fill at serve time, and give customer facts a varied "
        "value per example; fill: write one fixed value into every {{placeholder}} (the reference recipe's way)",
        choices=FACT_MODES,
    )
    placeholders: str | None = option(
        None, "YAML map of {{placeholder}} values merged over the defaults (--facts fill)"
    )
    columns: str | None = option(
        None,
        "your column names, as target=yours pairs: instruction=customer_message,response=agent_reply,category=queue; "
        f"targets: {', '.join(MAPPABLE_COLUMNS)} (a messages column holds chat transcripts; text and role with "
        "conversation, or message_id and reply_to, hold one message per row)",
    )
    pii: str = option(
        "scrub",
        "scrub: replace e-mails, phone numbers, card numbers, IBANs, IP addresses and ID patterns with typed "
        "placeholders; keep: leave the text as it is (data that is already clean)",
        choices=("scrub", "keep"),
    )
    pii_rules: str | None = option(
        None, "YAML file of PII rules (placeholders, patterns) merged over the bundled ones"
    )
    phone_region: str = option(
        "US", "regions of phone numbers written without a country code, comma-separated ISO 3166 codes (US,GB)"
    )
    languages: str = option(
        "en,es,fr,de,it,pt,nl,pl,sv,da,no,fi,tr,ru,ar,hi,zh,ja,ko,id",
        "languages the language detector may answer, ISO 639-1 codes",
    )
    mix: list[str] = option(
        [],
        "training-only example sources, comma-separated SOURCE[:WEIGHT]: behaviour (the bundled behaviour set) or a "
        "YAML/CSV/JSONL/Parquet file; WEIGHT repeats each row (0.5: a seeded half, 2: twice; default 1)",
        parse=comma_list,
    )

    def phone_regions(self) -> list[str]:
        """--phone-region as upper-case region codes."""
        return [region.upper() for region in comma_list(self.phone_region)]

    def column_mapping(self) -> dict[str, str]:
        """--columns as {target: the file's column}."""
        pairs = [part.split("=", 1) for part in comma_list(self.columns or "")]
        bad = [p for p in pairs if len(p) != 2 or p[0].strip() not in MAPPABLE_COLUMNS or not p[1].strip()]
        if bad:
            shown = ["=".join(p) for p in bad]
            raise SupportBenchError(
                f"--columns: {shown} are not target=column pairs with a target in {list(MAPPABLE_COLUMNS)}"
            )
        return {target.strip(): column.strip() for target, column in pairs}

    def validate(self) -> None:
        """Reject impossible settings before any work starts."""
        from phonenumbers import SUPPORTED_REGIONS

        if self.placeholders is not None and self.facts != "fill":
            raise SupportBenchError(
                f"--placeholders {self.placeholders} gives fixed values, which only --facts fill writes; slots (the "
                "default) keeps company facts for the profile (--profile): add --facts fill, or drop --placeholders"
            )

        _check(
            self,
            {
                "mode": self.mode in SPLIT_MODES,
                "facts": self.facts in FACT_MODES,
                # eval scores the test split and train validates on the other: neither may be empty
                "test_size": self.test_size > 0,
                "validation_size": self.validation_size > 0,
                "sample_size": self.sample_size >= 0,
                "pii": self.pii in ("scrub", "keep"),
                "phone_region": bool(self.phone_regions()) and set(self.phone_regions()) <= SUPPORTED_REGIONS,
                "languages": bool(comma_list(self.languages)),
            },
            "data config",
        )
        self.column_mapping()
        from supportbench.prepare.mix import parse_entry

        for entry in self.mix:
            parse_entry(entry)


@dataclass
class TrainConfig:
    """Everything one LoRA run needs; presets and user YAML files fill it in."""

    model: str = option("smollm2-135m", "base model: registry alias, hub id or folder")
    template: str | None = option(None, "prompt template, seed or chat (none: the registry's for the model)")
    lora_r: int = option(16, "LoRA rank")
    lora_alpha: int = option(32, "LoRA alpha")
    lora_dropout: float = option(0.05, "LoRA dropout")
    lora_targets: list[str] | str = option(
        ["q_proj", "v_proj"], "all-linear, or comma-separated module names", parse=lora_targets
    )
    learning_rate: float = option(2e-4, "peak learning rate (cosine schedule)")
    epochs: float = option(3.0, "training epochs")
    max_steps: int = option(-1, "stop after this many optimizer steps (-1: run the epochs)")
    batch_size: int = option(4, "micro-batch per device")
    gradient_accumulation: int = option(4, "micro-batches per optimizer step")
    max_length: int | None = option(None, "token cap per example (none: from the length distribution)")
    max_length_percentile: float = option(99.0, "percentile of training lengths that sets max_length")
    max_train_examples: int | None = option(
        None, "train on a seeded sample of this many rows of the train split (none: all), and on every mix row"
    )
    mix: list[str] = option(
        [],
        "behaviour examples trained on beside the split, SOURCE[:WEIGHT] as in `prepare --mix` (behaviour: the "
        "bundled set)",
        parse=comma_list,
    )
    max_eval_examples: int | None = option(100, "validation rows scored for eval loss (none: all)")
    warmup_ratio: float = option(0.05, "share of steps spent warming up")
    weight_decay: float = option(0.0, "AdamW weight decay")
    seed: int = option(42, "training and data-order seed")
    logging_steps: int = option(5, "log the loss every N steps")
    eval_steps: int | None = option(None, "validation loss every N steps (none: at each epoch end)")
    save_steps: int = option(25, "checkpoint every N steps")
    method: str = option(
        "sft",
        "sft: supervised fine-tuning of a new adapter; dpo: preference training (TRL DPOTrainer) of the adapter of "
        "--from on --pairs",
        choices=TRAIN_METHODS,
    )
    from_run: str | None = option(None, "dpo: the finished run whose adapter is trained further", flag="--from")
    pairs: list[str] = option(
        [],
        "dpo: preference pair sources, comma-separated: guarded (the --from model's replies that the reply policy "
        "overrode, as rejected, against the guarded reply, as chosen), ratings (the Rate tab's votes in the --from "
        "run's ratings.sqlite, people only) or ratings=FILE",
        parse=comma_list,
    )
    judge: str | None = option(None, "dpo: also use the votes of this judge model (rater judge:NAME) in ratings")
    max_pairs: int | None = option(None, "dpo: use a seeded sample of at most this many pairs (none: all)")
    beta: float = option(0.1, "dpo: how far the adapter may move from the reference (DPO's beta)")

    @property
    def effective_batch(self) -> int:
        """Examples per optimizer step."""
        return self.batch_size * self.gradient_accumulation

    def validate(self) -> None:
        """Reject impossible values before any model is loaded."""
        _check(
            self,
            {
                "lora_r": self.lora_r > 0,
                "lora_alpha": self.lora_alpha > 0,
                "lora_dropout": 0 <= self.lora_dropout < 1,
                "learning_rate": self.learning_rate > 0,
                "batch_size": self.batch_size > 0,
                "gradient_accumulation": self.gradient_accumulation > 0,
                "max_steps": self.max_steps == -1 or self.max_steps > 0,
                "epochs": self.epochs > 0 or self.max_steps > 0,
                "max_length_percentile": 50 <= self.max_length_percentile <= 100,
                "save_steps": self.save_steps > 0,
                "logging_steps": self.logging_steps > 0,
                "eval_steps": self.eval_steps is None or self.eval_steps > 0,
                "warmup_ratio": 0 <= self.warmup_ratio < 1,
                "max_length": self.max_length is None or self.max_length >= 16,
                "max_train_examples": self.max_train_examples is None or self.max_train_examples > 0,
                "max_eval_examples": self.max_eval_examples is None or self.max_eval_examples >= 0,
                "lora_targets": self.lora_targets == "all-linear"
                or (isinstance(self.lora_targets, list) and self.lora_targets),
                "method": self.method in TRAIN_METHODS,
                "beta": self.beta > 0,
                "max_pairs": self.max_pairs is None or self.max_pairs > 0,
            },
            "training config",
        )
        dpo_only = {"from_run": self.from_run, "pairs": self.pairs, "judge": self.judge, "max_pairs": self.max_pairs}
        if self.method == "dpo" and not (self.from_run and self.pairs):
            raise SupportBenchError(
                "--method dpo trains a finished run's adapter on preference pairs: give --from RUN and --pairs SOURCE "
                "(guarded, ratings or ratings=FILE)"
            )
        if self.method == "sft" and (given := [k for k, v in dpo_only.items() if v]):
            raise SupportBenchError(f"{', '.join(given)} apply to --method dpo only; this run's method is sft")
        if self.method == "dpo" and self.mix:
            raise SupportBenchError("--mix adds SFT examples; with --method dpo, train the --from run with it instead")


@dataclass
class EvalConfig:
    """What one eval compares and on how much data."""

    limit: int | None = option(GENERATION_EXAMPLES, "generated examples (greedy), a prefix of the shuffled split")
    ppl_limit: int | None = option(None, "perplexity examples (none: the whole split)")
    gen_batch_size: int = option(
        64,
        "generation batch, left-padded; decoding is memory-bound and a row leaves the batch as its reply ends, so "
        "wide batches cost little",
    )
    ppl_batch_size: int = option(8, "perplexity batch; scoring holds batch x length x vocabulary logits")
    max_new_tokens: int | None = option(
        None, "new-token cap per reply (none: the run's frozen decoding, else its training replies' p99 length)"
    )
    repetition_penalty: float | None = option(
        None, "generation repetition penalty, 1 for none (none: the run's frozen decoding, chosen on validation)"
    )
    no_repeat_ngram_size: int | None = option(
        None, "never repeat an n-gram of this size, 0 for none (none: the run's frozen decoding, chosen on validation)"
    )
    validation_limit: int = option(
        24,
        "validation replies of the budget check (and per candidate decoding), when the run has no frozen decoding yet; "
        "at least 2",
    )
    choose_decoding: bool = option(
        False,
        "compare every candidate decoding on validation and pick by the choice rule (default: plain greedy unless the "
        "budget check finds over 2% at the cap or looping replies, then the first candidate that fits)",
    )
    profile: str | None = option(
        None, "company profile YAML whose values fill the replies' company slots (none: the bundled profile.yaml)"
    )
    embedding_model: str = option(
        DEFAULT_EMBEDDING_MODEL,
        "sentence-embedding model for semantic similarity: hub id or folder (the default ships offline, hash-pinned)",
    )
    base_model: str | None = option(
        None, "score another base model (alias, hub id or folder) alone on the run's split", flag="--model"
    )
    twcs: str | None = option(None, "score the out-of-domain TWCS tweet pairs (CSV) instead; written to eval/ood/")
    backend: str = option(
        "hf",
        "hf: transformers through lm-eval, data-parallel under --num-processes or accelerate launch; ct2: CTranslate2 "
        "float32 on one CPU process where a check on the first requests finds it exact (same replies, "
        "log-likelihoods within 1e-4), else transformers; vllm: lm-eval's vLLM model with the adapter as a LoRA "
        "request (GPU, `pip install vllm`)",
        choices=("hf", "ct2", "vllm"),
    )
    tensor_parallel_size: int = option(1, "vllm: GPUs that hold one model replica")
    data_parallel_size: int = option(1, "vllm: model replicas that share the examples")
    seed: int = 1234

    def validate(self) -> None:
        """Reject sizes that make no sense before any model loads."""
        vllm = self.backend == "vllm"
        _check(
            self,
            {
                "limit": self.limit is None or self.limit > 0,
                "ppl_limit": self.ppl_limit is None or self.ppl_limit > 0,
                "gen_batch_size": self.gen_batch_size > 0,
                "ppl_batch_size": self.ppl_batch_size > 0,
                "max_new_tokens": self.max_new_tokens is None or self.max_new_tokens > 0,
                "repetition_penalty": self.repetition_penalty is None or self.repetition_penalty > 0,
                "no_repeat_ngram_size": self.no_repeat_ngram_size is None or self.no_repeat_ngram_size >= 0,
                "validation_limit": self.validation_limit >= MIN_VALIDATION,
                "backend": self.backend in ("hf", "ct2", "vllm"),
                "tensor_parallel_size": self.tensor_parallel_size == 1 or vllm and self.tensor_parallel_size > 1,
                "data_parallel_size": self.data_parallel_size == 1 or vllm and self.data_parallel_size > 1,
            },
            "eval config (the parallel sizes are vLLM's; the other backends run data-parallel under --num-processes)",
        )


@dataclass
class BehaviorConfig:
    """How the behaviour suites are answered: the replies per case and, above one, how they are sampled."""

    samples: int = option(1, "replies per case and model; above 1 they are sampled and pass^k is reported")
    temperature: float = option(0.7, "sampling temperature when --samples is above 1")
    top_p: float = option(0.95, "nucleus sampling mass when --samples is above 1")
    batch_size: int = option(16, "cases generated together, left-padded")
    max_new_tokens: int | None = option(None, "new-token cap per reply (none: the run's frozen decoding)")
    seed: int = option(1234, "seed of the sampled replies")

    def validate(self) -> None:
        """Reject counts and sampling settings that make no sense."""
        _check(
            self,
            {
                "samples": 1 <= self.samples <= 64,
                "temperature": self.temperature > 0,
                "top_p": 0 < self.top_p <= 1,
                "batch_size": self.batch_size > 0,
                "max_new_tokens": self.max_new_tokens is None or self.max_new_tokens > 0,
            },
            "behaviour config (samples 1 to 64)",
        )


PERTURBATION_NAMES = tuple(PERTURBATIONS)


@dataclass
class InvarianceConfig:
    """Which test queries are perturbed, how, and how they are answered."""

    limit: int = option(50, "test queries answered clean and under each perturbation (a prefix of the split)")
    perturbations: tuple[str, ...] = option(
        PERTURBATION_NAMES, "comma-separated perturbations: " + ", ".join(PERTURBATION_NAMES), parse=comma_list
    )
    batch_size: int = option(16, "queries generated together, left-padded")
    max_new_tokens: int | None = option(None, "new-token cap per reply (none: the run's frozen decoding)")
    seed: int = option(1234, "seed of the perturbations")

    def validate(self) -> None:
        """Reject an unknown perturbation and sizes that make no sense."""
        _check(
            self,
            {
                "limit": self.limit >= 2,
                "perturbations": bool(self.perturbations) and set(self.perturbations) <= set(PERTURBATION_NAMES),
                "batch_size": self.batch_size > 0,
                "max_new_tokens": self.max_new_tokens is None or self.max_new_tokens > 0,
            },
            f"invariance config (limit 2 or more; perturbations among {', '.join(PERTURBATION_NAMES)})",
        )

    def answering(self) -> BehaviorConfig:
        """The greedy generation settings the queries are answered with."""
        return BehaviorConfig(batch_size=self.batch_size, max_new_tokens=self.max_new_tokens, seed=self.seed)


@dataclass
class RankConfig:
    """Which models, how each is trained and scored, and what the leaderboard sorts by."""

    models: tuple[str, ...] = option(
        ("smollm2-135m", "gemma3-270m"), "comma-separated aliases, hub ids or folders", parse=comma_list
    )
    preset: str = option(DEFAULT_PRESET, "training preset for every model", choices=preset_names)
    metric: str = option("rougeL", "fine-tuned metric the leaderboard sorts by", choices=tuple(METRICS))
    limit: int | None = option(GENERATION_EXAMPLES, "generated examples per model")
    ppl_limit: int | None = option(None, "perplexity examples per model (none: the whole split)")
    max_steps: int | None = option(None, "cap training steps per model")
    data: str | None = option(None, f"data for runs without a prepared split (default: ${DATA_ENV})")
    ratings: str | None = option(
        None,
        "a preference store whose votes compare the ranked models' runs (app --rate-against): the leaderboard shows "
        "their human-preference rating",
    )

    def validate(self) -> None:
        """Reject an empty model list, an unknown preset or metric, and sizes that make no sense."""
        _check(
            self,
            {
                "models": bool(self.models),
                "preset": self.preset in preset_names(),
                "metric": self.metric in METRICS,
                "limit": self.limit is None or self.limit > 0,
                "ppl_limit": self.ppl_limit is None or self.ppl_limit > 0,
                "max_steps": self.max_steps is None or self.max_steps > 0,
            },
            "rank config",
        )


@dataclass
class SweepConfig:
    """An Optuna search over LoRA settings under a wall-clock budget, scored on validation ROUGE-L."""

    models: tuple[str, ...] = option(
        ("smollm2-135m", "gemma3-270m"), "comma-separated base models the search chooses from", parse=comma_list
    )
    preset: str = option(DEFAULT_PRESET, "preset whose other settings every trial keeps", choices=preset_names)
    budget_min: float = option(30.0, "wall-clock minutes for the whole sweep; a trial still training then is stopped")
    trials: int = option(20, "trials to start (fewer when the budget runs out first)")
    min_examples: int = option(120, "fewest training examples a trial may sample")
    max_examples: int = option(1200, "most training examples a trial may sample")
    max_epochs: int = option(2, "most epochs a trial may sample")
    validation_limit: int = option(32, "validation examples each trial generates and scores (at least 2)")
    seed: int = option(42, "sampler seed")
    data: str | None = option(
        None,
        f"a folder written by `supportbench prepare`, or data to prepare once for every trial (default: ${DATA_ENV}, "
        "else the hub)",
    )

    def validate(self) -> None:
        """Reject an empty model list, an unknown preset and ranges that make no sense."""
        _check(
            self,
            {
                "models": bool(self.models),
                "preset": self.preset in preset_names(),
                "budget_min": self.budget_min > 0,
                "trials": self.trials > 0,
                "min_examples": self.min_examples > 0,
                "max_examples": self.max_examples >= self.min_examples,
                "max_epochs": self.max_epochs >= 1,
                "validation_limit": self.validation_limit >= MIN_VALIDATION,
            },
            "sweep config",
        )


def _type_error(origin: str, name: str, expected: str, value: Any) -> SupportBenchError:
    return SupportBenchError(f"{origin}: {name} must be {expected}, got {value!r}")


def typed(cls: type, values: dict[str, Any], origin: str) -> dict[str, Any]:
    """Check (and where lossless, convert) values against cls's field types; unknown keys are an error."""
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(values) - set(hints))
    if unknown:
        raise SupportBenchError(f"{origin}: unknown config key(s) {unknown}; known keys: {sorted(hints)}")
    out = {}
    for name, value in values.items():
        hint = hints[name]
        options = set(typing.get_args(hint)) if isinstance(hint, types.UnionType) else {hint}
        if value is None and type(None) in options:
            out[name] = None
        elif float in options and isinstance(value, str):
            try:  # YAML 1.1 reads 1e-4 (no dot) as a string
                out[name] = float(value)
            except ValueError:
                raise _type_error(origin, name, "a number", value) from None
            if not math.isfinite(out[name]):
                raise _type_error(origin, name, "a finite number", value)
        elif float in options and isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise _type_error(origin, name, "a finite number", value)
            out[name] = float(value)
        elif int in options and isinstance(value, int) and not isinstance(value, bool):
            out[name] = value
        elif bool in options and isinstance(value, bool) or str in options and isinstance(value, str):
            out[name] = value
        elif any(typing.get_origin(o) in (list, tuple) for o in options) and isinstance(value, (list, tuple)):
            if not all(isinstance(v, str) for v in value):
                raise _type_error(origin, name, "a list of names", value)
            out[name] = tuple(value) if tuple in map(typing.get_origin, options) else list(value)
        else:
            expected = " or ".join(sorted(getattr(o, "__name__", str(o)) for o in options))
            raise _type_error(origin, name, expected.replace("NoneType", "empty"), value)
    return out


def read_config_file(cls: type, path: Path) -> dict[str, Any]:
    """A YAML mapping of cls's keys, type-checked, with errors that name the file."""
    data = read_user_yaml(path, "config file") or {}
    if not isinstance(data, dict):
        raise SupportBenchError(f"{path}: a config must be a YAML mapping")
    return typed(cls, data, str(path))


def preset_values(preset: str) -> dict[str, Any]:
    """A bundled training preset's keys, type-checked."""
    if preset not in preset_names():
        raise SupportBenchError(f"unknown preset {preset!r}; choose one of {preset_names()}")
    values = read_bundled_yaml(PRESET_PACKAGE, f"{PRESET_DIR}/{preset}.yaml") or {}
    return typed(TrainConfig, values, f"preset {preset}")


def layered(cls: type, *layers: tuple[str, dict[str, Any]]) -> Any:
    """cls from its defaults, then its fields' environment variables, then each (origin, values) layer in order; validated.

    Every command builds its config this way (preset, config file, flags given), so a later layer always wins.
    """
    values = {f.name: os.environ[f.metadata["env"]] for f in fields(cls) if os.environ.get(f.metadata.get("env", ""))}
    for origin, layer in layers:
        values.update(typed(cls, layer, origin))
    config = cls(**values)
    config.validate()
    return config


def load_train_config(
    preset: str | None = DEFAULT_PRESET, config_file: str | None = None, **overrides: Any
) -> TrainConfig:
    """A TrainConfig from a preset (none: built-in defaults), then a user YAML file, then explicit overrides."""
    layers = [(f"preset {preset}", preset_values(preset))] if preset else []
    if config_file:
        layers.append((str(config_file), read_config_file(TrainConfig, Path(config_file))))
    layers.append(("command line", {k: v for k, v in overrides.items() if v is not None}))
    return layered(TrainConfig, *layers)

"""The run, prepared-split, leaderboard and sweep folders: the one module that knows their file names."""

from __future__ import annotations

import dataclasses
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from supportbench.config import EvalConfig, TrainConfig
from supportbench.files import SupportBenchError, check_outputs, parse_jsonl, read_json

SPLITS = ("train", "validation", "test")
VARIANTS = ("base", "lora", "merged")


class Record(BaseModel):
    """A stage's JSON record, read by other stages through its typed fields; fields it does not declare are kept."""

    model_config = ConfigDict(extra="allow", frozen=True)

    @classmethod
    def read(cls, path: Path) -> Any:
        """The record in path, or a clear error naming the file and the first field of the wrong shape."""
        return cls.check(path, read_json(path))

    @classmethod
    def check(cls, path: Path, data: Any) -> Any:
        """data (read from path) as this record, or a clear error naming the file and the first wrong field."""
        try:
            return cls.model_validate(data)
        except ValidationError as err:
            first = err.errors()[0]
            where = ".".join(map(str, first["loc"])) or "the top level"
            raise SupportBenchError(f"{path} is not a valid {cls.__name__} ({where}: {first['msg']})") from None


class ReplyBudget(Record):
    """The new-token cap measured on the training replies."""

    max_new_tokens: int


class ParameterCount(Record):
    """Trainable and total parameters of the adapted model."""

    trainable: int
    total: int


class TrainRecord(Record):
    """train.json: what a finished training run was, on which data, and what it measured."""

    config: dict[str, Any]
    template: str
    data: dict[str, str]
    reply_tokens: ReplyBudget | None = None
    wall_time_s: float
    tokens_per_s: float
    steps: int
    train_examples: int
    parameters: ParameterCount

    @property
    def base_model(self) -> str:
        """The base model the adapter was trained on: registry alias, hub id or folder."""
        return self.train_config.model

    @property
    def train_config(self) -> TrainConfig:
        """The config the run trained with (settings this version no longer has are left out)."""
        known = {f.name for f in dataclasses.fields(TrainConfig)}
        return TrainConfig(**{k: v for k, v in self.config.items() if k in known})

    def split_sha256(self, name: str) -> str:
        """The sha256 of the split file the run trained (or validated) on."""
        return self.data[name]


class ScoredCount(Record):
    """How many examples one model generated for and scored perplexity on."""

    generation: int
    perplexity: int


class StageSeconds(Record):
    """Seconds one model spent loading, generating and scoring perplexity."""

    generation: float
    perplexity: float | None = None
    load: float | None = None


class EvalCaps(Record):
    """The examples and new tokens an eval was capped at."""

    generation_limit: int | None
    perplexity_limit: int | None
    max_new_tokens: int


class LeakageCheck(Record):
    """The hashes of the splits an eval trained and tested on, and the instructions they share."""

    train_sha256: str
    test_sha256: str
    shared_instructions: int


class EvalSummary(Record):
    """eval/metrics.json: what was scored, how, and the summary metrics of each model."""

    template: str
    dataset: str
    config: EvalConfig
    metrics: dict[str, dict[str, float | None]]
    n: dict[str, ScoredCount]
    timing_s: dict[str, StageSeconds]
    caps: EvalCaps
    leakage_check: LeakageCheck
    flops: dict[str, Any] | None = None  # supportbench.bench.flops accounts; None in an eval from before them

    @property
    def generation_seconds(self) -> float:
        """Generation seconds over every model scored."""
        return sum(times.generation for times in self.timing_s.values())


class Interval(Record):
    """A mean with its 95% interval."""

    mean: float
    low: float
    high: float


class Difference(Interval):
    """A paired difference, with its permutation p-value and size where the metric has one per example."""

    p_value: float | None = None
    n: int | None = None


class MetricStats(Record):
    """One metric's statistics; the paired difference where both models were scored."""

    difference: Difference | None = None


class Slice(Record):
    """One intent's (or category's) examples and paired ROUGE-L difference, where it has two or more."""

    n: int
    judged: bool
    difference: Difference | None = None


class Planner(Record):
    """The examples a ROUGE-L interval of a given half-width, or detecting a given difference, needs."""

    model_config = ConfigDict(populate_by_name=True)

    examples_to_detect: dict[str, int | None]
    examples_for_half_width: int | None = Field(alias="examples_for_half_width_0.03")


class StatsRecord(Record):
    """eval/stats.json: intervals, paired differences, slices and the planner that a verdict rests on."""

    seed: int
    metrics: dict[str, MetricStats]
    win_rate_rougeL: Interval
    planner_rougeL: Planner
    by_intent: list[Slice]
    min_slice: int
    worst_intents: list[str]

    @model_validator(mode="after")
    def _rouge_l_is_paired(self) -> StatsRecord:
        rouge_l = self.metrics.get("rougeL")
        if rouge_l is None or rouge_l.difference is None or rouge_l.difference.p_value is None:
            raise ValueError("metrics.rougeL needs a paired difference with its p-value")
        return self


class VariantLatency(Record):
    """One variant's row of the latency benchmark."""

    ttft_p50_s: float
    e2e_p50_s: float
    tokens_per_s_batch1: float
    peak_rss_mib: float


class BenchSummary(Record):
    """bench/summary.json: one latency row per variant, and whether the quick suite measured it."""

    variants: dict[str, VariantLatency]
    quick: bool


class ExportRecord(Record):
    """export/export.json: which adapter was exported, and into which formats."""

    adapter_sha256: str
    formats: dict[str, dict[str, Any]]


TRAINED_SHARE = 0.05  # a language with at least this share of the training queries counts as trained on


@dataclass(frozen=True)
class SplitDir:
    """A folder written by `supportbench prepare`: one JSONL file per split plus manifest.json."""

    path: Path

    @property
    def manifest_path(self) -> Path:
        """The manifest: config, counts, skipped rows and each split's sha256."""
        return self.path / "manifest.json"

    def split_path(self, name: str) -> Path:
        """One split's JSONL file."""
        return self.path / f"{name}.jsonl"

    data_card = property(lambda self: self.path / "data_card.md", doc="The data card, rendered from the manifest.")
    data_card_png = property(lambda self: self.path / "data_card.png", doc="The data card's length histograms.")

    mix_path = property(lambda self: self.path / "mix.jsonl", doc="The --mix rows, trained on beside the train split.")

    def outputs(self) -> list[Path]:
        """Every file prepare writes here (and the only ones it may replace)."""
        splits = (self.split_path(name) for name in SPLITS)
        return [*splits, self.mix_path, self.data_card, self.data_card_png, self.manifest_path]

    @property
    def is_prepared(self) -> bool:
        """True when a manifest is present."""
        return self.manifest_path.is_file()

    def manifest(self) -> dict[str, Any]:
        """The manifest, with a clear error when the folder holds none."""
        if not self.is_prepared:
            raise SupportBenchError(
                f"no prepared split at {self.path}; run `supportbench prepare --out {self.path}` first"
            )
        return read_json(self.manifest_path)

    def split_sha256(self, name: str) -> str:
        """The sha256 the manifest records for one split's file."""
        return self.manifest()["splits"][name]["sha256"]

    def trained_languages(self) -> list[str]:
        """The languages the split's queries are written in: each with at least TRAINED_SHARE of the kept rows (the
        data card's language counts)."""
        counts = self.manifest().get("data_card", {}).get("languages") or {"en": 1}
        total = sum(counts.values())
        return sorted(lang for lang, n in counts.items() if n / total >= TRAINED_SHARE)

    def rows(self, name: str) -> list[dict[str, Any]]:
        """Read one prepared split, refusing bytes other than the ones its manifest records (hashed as read)."""
        return self._checked_rows(self.split_path(name), self.split_sha256(name), f"{name} split")

    def mix_rows(self) -> list[dict[str, Any]]:
        """The --mix rows to train on beside the train split (weights applied); none when prepared without a mix."""
        mix = self.manifest().get("mix")
        return self._checked_rows(self.mix_path, mix["sha256"], "mix") if mix else []

    def _checked_rows(self, path: Path, sha256: str, name: str) -> list[dict[str, Any]]:
        if not path.is_file():
            raise SupportBenchError(
                f"no prepared {name} at {path}; run `supportbench prepare --out {self.path}` first"
            )
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() != sha256:
            raise SupportBenchError(
                f"{path} is not the {name} its manifest describes (sha256 differs: edited, truncated, or written "
                f"by a prepare that did not finish); run `supportbench prepare --out {self.path}` again"
            )
        return parse_jsonl(data, path)


@dataclass(frozen=True)
class EvalDir:
    """One eval's outputs: metrics, per-category table, side-by-side samples, statistics and the forest plot."""

    path: Path

    metrics = property(lambda self: self.path / "metrics.json", doc="Summary metrics, n, timings and settings.")
    per_category = property(lambda self: self.path / "per_category.json", doc="Metrics per category.")
    samples = property(lambda self: self.path / "samples.jsonl", doc="Query, reference and both replies per example.")
    stats = property(lambda self: self.path / "stats.json", doc="Intervals, paired differences, slices, planner.")
    forest = property(lambda self: self.path / "forest.png", doc="The paired ROUGE-L difference per intent.")
    guarded = property(
        lambda self: self.path / "guarded.json", doc="The fine-tuned replies through the reply policy, against raw."
    )
    behavior = property(lambda self: self.path / "behavior.json", doc="Behaviour cases: replies and verdicts.")
    behavior_md = property(lambda self: self.path / "behavior.md", doc="Behaviour pass rates and failing cases.")
    invariance = property(lambda self: self.path / "invariance.json", doc="Intent fidelity under perturbed queries.")
    ratings = property(lambda self: self.path / "ratings.json", doc="What the preference votes say.")
    judge = property(lambda self: self.path / "judge.json", doc="A model judge's answers and its agreement.")

    def summary(self) -> EvalSummary:
        """metrics.json, checked: its shape, and that every file this eval wrote is the one it recorded."""
        data = read_json(self.metrics)
        record = EvalSummary.check(self.metrics, data)
        check_outputs(self.metrics, data)
        return record

    def settings(self) -> EvalConfig:
        """The settings metrics.json was scored with (its files not checked: enough to decide whether to score again)."""
        return EvalSummary.read(self.metrics).config

    def statistics(self) -> StatsRecord:
        """stats.json, its shape checked."""
        return StatsRecord.read(self.stats)

    def finetuned_scores(self, metric: str) -> dict[str, float]:
        """The fine-tuned model's per-example score on one ROUGE metric, by example id, from samples.jsonl."""
        rows = parse_jsonl(self.samples.read_bytes(), self.samples)
        try:
            return {row["id"]: row[f"finetuned_{metric}"] for row in rows}
        except KeyError as err:
            raise SupportBenchError(f"{self.samples} has a row without {err}") from None


def safe_name(name: str) -> str:
    """A model name or id as a single folder or file name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name.strip("/"))


@dataclass(frozen=True)
class RunDir:
    """A training run folder and every stage's outputs inside it."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    data = property(lambda self: SplitDir(self.path / "data"), doc="The prepared split the run trains and scores on.")
    adapter = property(lambda self: self.path / "adapter", doc="PEFT adapter (safetensors + adapter_config.json).")
    checkpoints = property(lambda self: self.path / "checkpoints", doc="Trainer checkpoints for --resume.")
    manifest_path = property(lambda self: self.path / "train.json", doc="The finished run's manifest.")
    config_path = property(lambda self: self.path / "train_config.json", doc="The config of a started run.")
    decoding = property(
        lambda self: self.path / "decoding.json", doc="Decoding chosen on validation, frozen for every stage."
    )
    loss_history = property(lambda self: self.path / "loss_history.json", doc="The Trainer's log history.")
    loss_curve = property(lambda self: self.path / "loss_curve.png", doc="Train and validation loss plot.")
    eval = property(lambda self: EvalDir(self.path / "eval"), doc="Base vs fine-tuned on the held-out split.")
    ratings_store = property(lambda self: self.path / "ratings.sqlite", doc="Blind pairwise votes (SQLite).")
    ood = property(lambda self: EvalDir(self.path / "eval" / "ood"), doc="Base vs fine-tuned on the TWCS tweets.")
    bench_dir = property(lambda self: self.path / "bench", doc="Benchmark outputs.")
    bench_raw = property(lambda self: self.path / "bench" / "pytest_benchmark.json", doc="pytest-benchmark's JSON.")
    bench_summary = property(lambda self: self.path / "bench" / "summary.json", doc="One row per variant.")
    eval_speed = property(lambda self: self.path / "bench" / "eval_speed.json", doc="Batched eval vs one at a time.")
    train_throughput = property(
        lambda self: self.path / "bench" / "train_throughput.json", doc="Training tokens/s arms."
    )
    serving_load = property(lambda self: self.path / "bench" / "serving.json", doc="Concurrent users per serving arm.")
    quality_latency = property(
        lambda self: self.path / "bench" / "quality_latency.png", doc="ROUGE-L against reply p50."
    )
    export_dir = property(lambda self: self.path / "export", doc="Deployable models written by `supportbench export`.")
    export_manifest = property(lambda self: self.path / "export" / "export.json", doc="What export wrote, and how.")
    export_profile = property(
        lambda self: self.path / "export" / "profile.yaml", doc="The company profile export checked, for deployments."
    )
    merged = property(lambda self: self.path / "export" / "merged", doc="Adapter merged into the base: safetensors.")
    scope_record = property(
        lambda self: self.path / "policy" / "scope.json",
        doc="The reply policy's scope threshold, calibrated on this run's split, and its measured error rates.",
    )
    exported_eval = property(lambda self: EvalDir(self.path / "eval" / "exported"), doc="The exported model's scores.")

    def bench_record(self) -> BenchSummary:
        """bench/summary.json, its shape checked."""
        return BenchSummary.read(self.bench_summary)

    def export_record(self) -> ExportRecord:
        """export.json, its shape checked."""
        return ExportRecord.read(self.export_manifest)

    def exported(self, fmt: str, model: str = "finetuned") -> Path:
        """The folder of one exported runtime format, of the fine-tuned model or of its base."""
        return self.path / "export" / f"{model}-{fmt}"

    def evaluation(self, ood: bool) -> EvalDir:
        """The eval folder of the held-out split, or of the out-of-domain TWCS pairs."""
        return self.ood if ood else self.eval

    def base_model_scores(self, model: str) -> Path:
        """Scores of another base model on this run's split."""
        return self.path / "eval" / "base_models" / f"{safe_name(model)}.json"

    def report(self, kind: str) -> Path:
        """report.html or report.md."""
        return self.path / f"report.{kind}"

    def gate(self, kind: str) -> Path:
        """gate.json or gate.md: the release gate's verdict."""
        return self.path / f"gate.{kind}"

    def comparison(self, kind: str) -> Path:
        """comparison.html or comparison.md."""
        return self.path / f"comparison.{kind}"

    @property
    def is_finished(self) -> bool:
        """True when training wrote its manifest."""
        return self.manifest_path.is_file()

    @property
    def holds_run(self) -> bool:
        """True when any training output is here (a started, interrupted or finished run)."""
        return any(p.exists() for p in (self.manifest_path, self.config_path, self.adapter, self.checkpoints))

    def trained(self) -> TrainRecord:
        """The finished run's record, or a clear error naming the missing stage."""
        if not self.is_finished:
            raise SupportBenchError(
                f"{self.path} holds no finished training run ({self.manifest_path.name}); run `supportbench train` first"
            )
        return TrainRecord.read(self.manifest_path)

    @property
    def base_model(self) -> str:
        """The finished run's base model."""
        return self.trained().base_model

    def require_adapter(self) -> TrainRecord:
        """The finished run's record, after checking that its adapter is complete."""
        record = self.trained()
        config, weights = self.adapter / "adapter_config.json", self.adapter / "adapter_model.safetensors"
        if not config.is_file():
            raise SupportBenchError(
                f"{self.path} has no LoRA adapter at {self.adapter}; train one with `supportbench train`"
            )
        damaged = f"the adapter at {self.adapter} is damaged"
        try:
            settings = read_json(config)
        except SupportBenchError as err:
            raise SupportBenchError(f"{damaged}: {err}") from None
        if not isinstance(settings, dict) or not isinstance(settings.get("r"), int):
            raise SupportBenchError(f"{damaged}: {config.name} is not a LoRA config (no integer r)")
        if not weights.is_file():
            raise SupportBenchError(f"{damaged}: {weights.name} is missing")
        from safetensors import SafetensorError, safe_open

        try:  # reads the header and checks it against the file's size: a truncated file fails here
            with safe_open(str(weights), framework="pt") as handle:
                tensors = list(handle.keys())
        except (SafetensorError, OSError, ValueError) as err:
            raise SupportBenchError(f"{damaged}: {weights.name} cannot be read ({err})") from None
        if not tensors:
            raise SupportBenchError(f"{damaged}: {weights.name} holds no tensors")
        return record

    def load_variant(self, variant: str) -> tuple[Any, Any]:
        """(model, tokenizer) for base, base+adapter (unmerged) or the merged model, in eval mode."""
        if variant not in VARIANTS:
            raise SupportBenchError(f"unknown variant {variant!r}; choose one of {VARIANTS}")
        from supportbench.models import load_model

        record = self.require_adapter() if variant != "base" else self.trained()
        model, tokenizer = load_model(record.base_model)
        if variant != "base":
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, self.adapter)
            if variant == "merged":
                model = model.merge_and_unload()
        return model.eval(), tokenizer


@dataclass(frozen=True)
class BoardDir:
    """A leaderboard folder: one run folder per model, plus leaderboard.json/.html/.md."""

    path: Path

    def run(self, model: str) -> RunDir:
        """The run folder of one model."""
        return RunDir(Path(self.path) / safe_name(model))

    def failure(self, model: str) -> Path:
        """The error of one model's failed job, kept for `rank --collect` until a later job of that model succeeds."""
        return Path(self.path) / "failed" / f"{safe_name(model)}.json"

    def page(self, kind: str) -> Path:
        """leaderboard.json, .html or .md."""
        return Path(self.path) / f"leaderboard.{kind}"

    @property
    def chart(self) -> Path:
        """leaderboard.png: fine-tuned quality against reply latency."""
        return Path(self.path) / "leaderboard.png"


@dataclass(frozen=True)
class SweepDir:
    """A sweep folder: the prepared split, one run folder per trial, the study and what the sweep writes."""

    path: Path

    data = property(lambda self: SplitDir(self.path / "data"), doc="The split every trial trains and validates on.")
    study = property(
        lambda self: self.path / "study.db", doc="The Optuna study (SQLite): every trial, whatever its end."
    )
    summary = property(lambda self: self.path / "sweep.json", doc="Every trial's settings, state and scores.")
    table = property(lambda self: self.path / "trials.md", doc="The trials as a Markdown table.")
    chart = property(lambda self: self.path / "pareto.png", doc="Validation ROUGE-L against training minutes.")
    best_preset = property(lambda self: self.path / "best.yaml", doc="The best trial's configuration as a preset.")

    def trial(self, number: int) -> RunDir:
        """One trial's run folder."""
        return RunDir(self.path / "trials" / f"{number:03d}")

"""The sweep stage: Optuna searches LoRA settings under a wall-clock budget. Each trial trains a run and scores
validation ROUGE-L with eval's statistics; the study (SQLite) keeps every trial, failed and timed-out ones included,
and the sweep writes a table, the quality-against-training-minutes chart with its Pareto front, and the best
configuration as a preset file."""

from __future__ import annotations

import dataclasses
import datetime
import shutil
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from supportbench.config import DataConfig, EvalConfig, SweepConfig, TrainConfig, load_train_config, resolve_source
from supportbench.decoding import Decoding, run_budget
from supportbench.files import SupportBenchError, atomic_write_bytes, atomic_write_text, write_json
from supportbench.layout import RunDir, SplitDir, SweepDir
from supportbench.models import model_path
from supportbench.reports.plots import pareto_png
from supportbench.reports.render import markdown_table
from supportbench.stats import interval_text

LORA_TARGETS = {"all-linear": "all-linear", "attention-qv": ["q_proj", "v_proj"]}
RANKS = (8, 16, 32)
LEARNING_RATES = (1e-4, 1e-3)  # log-uniform between
LENGTH_PERCENTILES = (90.0, 95.0, 99.0)
TABLE_COLUMNS = (
    *("trial", "state", "model", "lr", "r", "targets", "examples", "epochs", "length pct"),
    *("train min", "tok/s", "val ROUGE-L [95% CI]", "BLEU", "at cap", "note"),
)


class TrialTimedOut(SupportBenchError):
    """A trial was still training when the sweep's budget ran out."""


def suggest(trial: Any, config: SweepConfig) -> dict[str, Any]:
    """One point of the search space: base model, learning rate, LoRA rank and targets, examples, epochs, max length."""
    rank = trial.suggest_categorical("lora_r", list(RANKS))
    return {
        "model": trial.suggest_categorical("model", list(config.models)),
        "learning_rate": trial.suggest_float("learning_rate", *LEARNING_RATES, log=True),
        "lora_r": rank,
        "lora_alpha": 2 * rank,
        "lora_targets": LORA_TARGETS[trial.suggest_categorical("lora_targets", list(LORA_TARGETS))],
        "max_train_examples": trial.suggest_int(
            "max_train_examples", config.min_examples, config.max_examples, log=True
        ),
        "epochs": float(trial.suggest_int("epochs", 1, config.max_epochs)),
        "max_length_percentile": trial.suggest_categorical("max_length_percentile", list(LENGTH_PERCENTILES)),
    }


def preset_point(config: SweepConfig) -> dict[str, Any]:
    """The preset's own settings as a point of the search space, the sweep's first trial, so the table starts from a
    known configuration: examples and epochs are clamped to their ranges, a value outside a choice list is sampled."""
    preset = load_train_config(config.preset)
    examples = preset.max_train_examples or config.max_examples
    point = {
        "model": preset.model if preset.model in config.models else config.models[0],
        "learning_rate": min(max(preset.learning_rate, LEARNING_RATES[0]), LEARNING_RATES[1]),
        "lora_r": preset.lora_r,
        "lora_targets": next((name for name, value in LORA_TARGETS.items() if value == preset.lora_targets), None),
        "max_train_examples": min(max(examples, config.min_examples), config.max_examples),
        "epochs": min(max(round(preset.epochs), 1), config.max_epochs),
        "max_length_percentile": preset.max_length_percentile,
    }
    choices = {"lora_r": RANKS, "lora_targets": tuple(LORA_TARGETS), "max_length_percentile": LENGTH_PERCENTILES}
    return {k: v for k, v in point.items() if k not in choices or v in choices[k]}


def trial_config(config: SweepConfig, params: dict[str, Any]) -> TrainConfig:
    """The preset with one trial's settings, in the sampled model's own template (from the registry)."""
    trained = dataclasses.replace(load_train_config(config.preset), **params, template=None)
    trained.validate()
    return trained


class Deadline(TrainerCallback):
    """Stops training once the sweep's budget has run out, and says so."""

    def __init__(self, deadline: float):
        self.deadline, self.hit = deadline, False

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Ask the Trainer to stop after this step when the budget is spent."""
        if time.monotonic() > self.deadline:
            self.hit = control.should_training_stop = True


def validation_rouge(run: RunDir, limit: int, seed: int) -> dict[str, Any]:
    """The trial's fine-tuned model on the validation split's first `limit` examples, decoded greedily at the run's
    budget: ROUGE-L with its 95% bootstrap interval (as eval computes it), BLEU and the share at the cap."""
    from supportbench.evaluation.evaluator import load_lm, validation_metadata, validation_scores, with_decoding

    config = with_decoding(EvalConfig(seed=seed), Decoding(run_budget(run)))
    path = model_path(run.base_model)
    result = validation_scores(load_lm(path, str(run.adapter), config), path, validation_metadata(run), config, limit)
    return {**{m: result[m] for m in ("rougeL", "bleu", "at_cap", "runon")}, "scoring_s": result["seconds"]}


def objective(trial: Any, config: SweepConfig, folder: SweepDir, deadline: float) -> tuple[float, float]:
    """Train and score one trial; its outcome (or its error) is kept in the trial's user attributes."""
    from supportbench.trainers.lora import LoRARecipe

    params = suggest(trial, config)
    run = folder.trial(trial.number)
    trial.set_user_attr("run", str(run.path))
    try:
        recipe = LoRARecipe(trial_config(config, params), run)
        shutil.rmtree(run.path, ignore_errors=True)  # a trial number is never reused; a leftover is an aborted sweep's
        shutil.copytree(folder.data.path, run.data.path)
        recipe.setup()
        stop = Deadline(deadline)
        recipe.trainer.add_callback(stop)
        recipe.fit()
        if stop.hit:
            raise TrialTimedOut(f"still training at the budget's end, after {recipe.trainer.state.global_step} steps")
        recipe.save()
        record = run.trained()
        trial.set_user_attr(
            "train",
            {
                "wall_time_s": record.wall_time_s,
                "tokens_per_s": record.tokens_per_s,
                "steps": record.steps,
                "train_examples": record.train_examples,
            },
        )
        scores = validation_rouge(run, config.validation_limit, config.seed)
        trial.set_user_attr("validation", scores)
    except Exception as err:
        trial.set_user_attr("state", "timed out" if isinstance(err, TrialTimedOut) else "failed")
        trial.set_user_attr("error", f"{type(err).__name__}: {err}")
        raise
    trial.set_user_attr("state", "complete")
    return scores["rougeL"]["mean"], record.wall_time_s / 60


def trial_rows(study: Any) -> list[dict[str, Any]]:
    """Every trial of the study: settings, how it ended, training minutes and validation scores."""
    rows = []
    for t in study.trials:
        train, validation = t.user_attrs.get("train", {}), t.user_attrs.get("validation", {})
        rows.append(
            {
                "trial": t.number,
                # a trial killed with the process stays "running"
                "state": t.user_attrs.get("state", t.state.name.lower()),
                "params": t.params,
                "train_minutes": train["wall_time_s"] / 60 if train else None,
                "tokens_per_s": train.get("tokens_per_s"),
                "validation": validation or None,
                "error": t.user_attrs.get("error"),
                "run": t.user_attrs.get("run"),
            }
        )
    return rows


def table_markdown(rows: list[dict[str, Any]], front: list[int]) -> str:
    """The trials as a Markdown table; Pareto-front trials are starred."""
    table = []
    for r in rows:
        p, v = r["params"], r["validation"]
        scores = ["—"] * 5
        if v:
            ci = v["rougeL"]
            scores = [
                f"{r['train_minutes']:.1f}",
                f"{r['tokens_per_s']}",
                interval_text(ci),
                f"{v['bleu']:.4f}",
                f"{v['at_cap']:.0%}",
            ]
        cells = [
            f"{r['trial']}{' *' if r['trial'] in front else ''}",
            r["state"],
            str(p.get("model", "—")),
            f"{p['learning_rate']:.2e}" if "learning_rate" in p else "—",
            *(
                str(p.get(k, "—"))
                for k in ("lora_r", "lora_targets", "max_train_examples", "epochs", "max_length_percentile")
            ),
            *scores,
            (r["error"] or "")[:120],
        ]
        table.append(cells)
    lines = markdown_table(TABLE_COLUMNS, table, numeric_from=len(TABLE_COLUMNS))  # every column left-aligned
    return "\n".join(lines) + "\n\n\\* on the Pareto front of validation ROUGE-L against training minutes.\n"


def best_preset_yaml(best: dict[str, Any], folder: SweepDir) -> str:
    """The best trial's configuration as a preset file, its measured scores and origin in the comment."""
    import yaml

    trained = RunDir(Path(best["run"])).trained().train_config
    v = best["validation"]["rougeL"]
    header = (
        f"# Sweep best (trial {best['trial']} of {folder.path}, {datetime.date.today().isoformat()}): validation ROUGE-L "
        f"{interval_text(v)} on {v['n']} examples, BLEU {best['validation']['bleu']:.4f},\n"
        f"# {best['train_minutes']:.1f} minutes of training at {best['tokens_per_s']} tokens/s on the sweep's machine.\n"
    )
    keys = [f.name for f in dataclasses.fields(TrainConfig) if f.name != "template"]
    return header + yaml.safe_dump({k: getattr(trained, k) for k in keys}, sort_keys=False)


def sweep(config: SweepConfig, out: Path) -> dict[str, Any]:
    """Run (or continue) the study in `out` under the budget and write its table, chart, best preset and summary."""
    import optuna

    from supportbench.prepare.dataset import prepare

    config.validate()
    given = SplitDir(Path(config.data)) if config.data and Path(config.data).is_dir() else None
    if given:
        given.manifest()  # a folder that holds no prepared split is named, before any model is materialized
    for name in config.models:
        model_path(name)  # an unknown or unavailable model fails before any trial
    folder = SweepDir(Path(out))
    folder.path.mkdir(parents=True, exist_ok=True)
    if not folder.data.is_prepared and given:
        folder.data.path.mkdir()
        for path in filter(Path.is_file, given.outputs()):
            shutil.copy2(path, folder.data.path / path.name)
    elif not folder.data.is_prepared:
        prepare(DataConfig(source=resolve_source(config.data)), folder.data.path)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name="supportbench",
        storage=f"sqlite:///{folder.study}",
        load_if_exists=True,
        directions=["maximize", "minimize"],
        sampler=optuna.samplers.TPESampler(seed=config.seed),
    )
    if not study.trials:
        study.enqueue_trial(preset_point(config))
    budget_s = config.budget_min * 60
    deadline = time.monotonic() + budget_s
    study.optimize(
        lambda trial: objective(trial, config, folder, deadline),
        n_trials=config.trials,
        timeout=budget_s,
        catch=(Exception,),
        gc_after_trial=True,
    )
    rows = trial_rows(study)
    front = sorted(t.number for t in study.best_trials)  # the complete trials no other beats on both objectives
    done = [r for r in rows if r["state"] == "complete"]
    atomic_write_text(folder.table, table_markdown(rows, front))
    points = [(r["trial"], r["train_minutes"], r["validation"]["rougeL"]["mean"], r["trial"] in front) for r in done]
    atomic_write_bytes(folder.chart, pareto_png(points))
    best = max(done, key=lambda r: (r["validation"]["rougeL"]["mean"], -r["train_minutes"]), default=None)
    if best:
        atomic_write_text(folder.best_preset, best_preset_yaml(best, folder))
    summary = {
        "config": dataclasses.asdict(config),
        "trials": rows,
        "pareto_front": front,
        "best_trial": best["trial"] if best else None,
        "states": {state: sum(r["state"] == state for r in rows) for state in sorted({r["state"] for r in rows})},
    }
    write_json(folder.summary, summary)
    return summary


def summary_lines(summary: dict[str, Any], out_dir: Path) -> list[str]:
    """The trials table, the count of trials per state, and the files written."""
    folder = SweepDir(Path(out_dir))
    lines = [
        folder.table.read_text(encoding="utf-8"),
        ", ".join(f"{n} {state}" for state, n in summary["states"].items()),
    ]
    written = (folder.table, folder.chart, folder.best_preset, folder.summary, folder.study)
    return lines + [f"wrote {path}" for path in written if path.is_file()]

"""The release gate: a small YAML of rules applied to a run's eval (and an approved baseline run's), with a verdict."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from supportbench.files import (
    SupportBenchError,
    atomic_write_text,
    read_bundled_yaml,
    read_json,
    read_jsonl,
    read_user_yaml,
    write_json,
)
from supportbench.layout import EvalDir, RunDir
from supportbench.metrics import METRICS, ROUGE_TYPES
from supportbench.stats import evidence_lines, paired_difference, signed_interval

RULE_KEYS = {
    "beats_base": {"metric", "min_lower_bound"},
    "non_inferior_to_baseline": {"metric", "margin"},
    "max_runon_share": None,
    "max_placeholder_leak_share": None,
    "max_at_cap_share": None,
    "max_reply_p50_s": None,
}
SHARE_RULES = {
    "max_runon_share": "runon",
    "max_placeholder_leak_share": "placeholder_leak",
    "max_at_cap_share": "at_cap",
}
COMPARABLE_SETTINGS = ("limit", "ppl_limit", "max_new_tokens", "repetition_penalty", "no_repeat_ngram_size", "seed")


def load_rules(path: str | None) -> dict[str, Any]:
    """The bundled default rules, or a user's YAML file; unknown rules and malformed values are named."""
    origin = path or "the default gate rules"
    rules = (
        read_user_yaml(path, "gate rules file")
        if path
        else read_bundled_yaml("supportbench.evaluation", "gate_rules.yaml")
    ) or {}
    if not isinstance(rules, dict) or not rules:
        raise SupportBenchError(f"{origin}: gate rules must be a non-empty YAML mapping")
    for name, value in rules.items():
        if name not in RULE_KEYS:
            raise SupportBenchError(f"{origin}: unknown gate rule {name!r}; known rules: {sorted(RULE_KEYS)}")
        keys, numbers = RULE_KEYS[name], [value]
        if keys:
            if not isinstance(value, dict) or set(value) != keys:
                raise SupportBenchError(f"{origin}: rule {name} needs exactly the keys {sorted(keys)}")
            if value["metric"] not in (ROUGE_TYPES if name == "non_inferior_to_baseline" else METRICS):
                raise SupportBenchError(f"{origin}: rule {name} cannot use metric {value['metric']!r}")
            numbers = [v for k, v in value.items() if k != "metric"]
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in numbers):
            raise SupportBenchError(f"{origin}: rule {name} needs numbers, finite ones, got {value!r}")
    return rules


def _improvement(stats: dict[str, Any], metric: str) -> dict[str, float]:
    """The fine-tuned minus base difference turned so that positive is better (perplexity: base minus fine-tuned)."""
    d = stats["metrics"][metric]["difference"]
    if METRICS[metric].higher_is_better:
        return d
    return {**d, "mean": -d["mean"], "low": -d["high"], "high": -d["low"]}


def _baseline(path: str) -> EvalDir:
    """A baseline given as a run folder or as its eval/metrics.json."""
    given = Path(path)
    folder = RunDir(given).eval if given.is_dir() else EvalDir(given.parent)
    if not folder.metrics.is_file() or not folder.samples.is_file():
        raise SupportBenchError(f"baseline {path} has no eval (metrics.json and samples.jsonl); evaluate it first")
    return folder


def _check_comparable(mine: dict[str, Any], theirs: dict[str, Any], path: str) -> None:
    reasons = []
    if (
        mine["dataset"] != theirs["dataset"]
        or mine["leakage_check"]["test_sha256"] != theirs["leakage_check"]["test_sha256"]
    ):
        reasons.append("it was scored on a different test split")
    for key in COMPARABLE_SETTINGS:
        if mine["config"].get(key) != theirs["config"].get(key):
            reasons.append(
                f"its eval setting {key} is {theirs['config'].get(key)!r}, this run's is {mine['config'].get(key)!r}"
            )
    if reasons:
        raise SupportBenchError(f"cannot compare with baseline {path}: " + "; ".join(reasons))


def apply_rules(run_dir: Path, baseline: str | None = None, rules_file: str | None = None) -> dict[str, Any]:
    """Check every rule against the run's files; return the verdict with one row per rule."""
    run = RunDir(run_dir)
    trained, rules = run.trained(), load_rules(rules_file)
    if not run.eval.metrics.is_file() or not run.eval.stats.is_file():
        raise SupportBenchError(
            f"{run.path} has no eval with statistics yet; run `supportbench eval --run {run.path}` first"
        )
    metrics, stats = run.eval.summary(), run.eval.statistics()
    if metrics["template"] != trained.template:
        raise SupportBenchError(
            f"the eval used the {metrics['template']} template, training the {trained.template} one"
        )
    tuned = metrics["metrics"]["finetuned"]
    checks = []

    def check(rule: str, value: str, needs: str, passed: bool | None) -> None:
        checks.append({"rule": rule, "value": value, "needs": needs, "passed": passed})

    if "beats_base" in rules:
        rule = rules["beats_base"]
        d = _improvement(stats, rule["metric"])
        check(
            "beats_base",
            f"{METRICS[rule['metric']].label} gain over base {signed_interval(d)}",
            f"lower bound > {rule['min_lower_bound']}",
            d["low"] > rule["min_lower_bound"],
        )
    if "non_inferior_to_baseline" in rules:
        rule = rules["non_inferior_to_baseline"]
        if baseline is None:
            check("non_inferior_to_baseline", "no --baseline given", f"lower bound > -{rule['margin']}", None)
        else:
            theirs = _baseline(baseline)
            _check_comparable(metrics, read_json(theirs.metrics), baseline)
            key = f"finetuned_{rule['metric']}"
            by_id = {s["id"]: s[key] for s in read_jsonl(theirs.samples)}
            mine = read_jsonl(run.eval.samples)
            if set(by_id) != {s["id"] for s in mine}:
                raise SupportBenchError(f"cannot compare with baseline {baseline}: it generated for other examples")
            d = paired_difference([by_id[s["id"]] for s in mine], [s[key] for s in mine], stats["seed"])
            check(
                "non_inferior_to_baseline",
                f"{METRICS[rule['metric']].label} minus the baseline's {signed_interval(d)}",
                f"lower bound > -{rule['margin']}",
                d["low"] > -rule["margin"],
            )
    for rule, metric in SHARE_RULES.items():
        if rule in rules:
            share = tuned.get(metric)
            shown = "not measured (an eval older than the metric)" if share is None else f"{share:.4f}"
            check(rule, shown, f"<= {rules[rule]}", share is not None and share <= rules[rule])
    if "max_reply_p50_s" in rules:
        limit = rules["max_reply_p50_s"]
        if run.bench_summary.is_file():
            p50 = read_json(run.bench_summary)["variants"]["merged"]["e2e_p50_s"]
            check("max_reply_p50_s", f"{p50:.2f} s (merged model)", f"<= {limit} s", p50 <= limit)
        else:
            check("max_reply_p50_s", "no benchmark (run `supportbench bench`)", f"<= {limit} s", False)
    failed = [c["rule"] for c in checks if c["passed"] is False]
    return {
        "run": str(run.path),
        "baseline": baseline,
        "rules": rules,
        "checks": checks,
        "failed": failed,
        "passed": not failed,
        "evidence": evidence_lines(stats),
    }


def write_gate(run_dir: Path, verdict: dict[str, Any]) -> str:
    """Write gate.json and gate.md into the run (and append the Markdown to $GITHUB_STEP_SUMMARY); return it."""
    from supportbench.reports.render import render

    run = RunDir(run_dir)
    markdown = render("gate.j2", "md", gate=verdict)
    write_json(run.gate("json"), verdict)
    atomic_write_text(run.gate("md"), markdown)
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary:
        try:
            with open(summary, "a", encoding="utf-8") as handle:
                handle.write(markdown + "\n")
        except OSError as err:  # the verdict stands; only the CI summary is lost
            print(f"warning: cannot append the verdict to $GITHUB_STEP_SUMMARY ({summary}): {err.strerror}")
    return markdown


def verdict_lines(verdict: dict[str, Any]) -> list[str]:
    """The evidence, then one line per rule: its state, value and what it needs."""
    lines = list(verdict["evidence"])
    for check in verdict["checks"]:
        state = "pass" if check["passed"] else ("not applied" if check["passed"] is None else "FAIL")
        lines.append(f"{state:<12} {check['rule']:<28} {check['value']}  (needs {check['needs']})")
    return lines

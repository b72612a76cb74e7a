"""The release gate: a small YAML of rules applied to a run's eval (and an approved baseline run's), with a verdict."""

from __future__ import annotations

import os
import typing
from collections.abc import Collection
from pathlib import Path
from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, Strict, ValidationError, field_validator

from supportbench.files import (
    SupportBenchError,
    atomic_write_text,
    read_bundled_yaml,
    read_json,
    read_user_yaml,
    write_json,
)
from supportbench.layout import EvalDir, EvalSummary, RunDir, StatsRecord
from supportbench.metrics import METRICS, ROUGE_TYPES
from supportbench.stats import evidence_lines, paired_difference, signed_interval

SHARE_RULES = {
    "max_runon_share": "runon",
    "max_placeholder_leak_share": "placeholder_leak",
    "max_at_cap_share": "at_cap",
    "max_invented_fact_share": "invented_facts",
}
MIN_SHARE_RULES = {"min_copied_fact_share": "copied_facts", "min_language_match_share": "language_match"}
COMPARABLE_SETTINGS = ("limit", "ppl_limit", "max_new_tokens", "repetition_penalty", "no_repeat_ngram_size", "seed")


FiniteNumber = Annotated[float, Strict(), Field(allow_inf_nan=False)]  # an int or float, never a bool or NaN


class _Rule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _MetricRule(_Rule):
    allowed: ClassVar[Collection[str]]
    metric: str

    @field_validator("metric")
    @classmethod
    def _allowed(cls, metric: str) -> str:
        if metric not in cls.allowed:
            raise ValueError(f"cannot use metric {metric!r}")
        return metric


class BeatsBase(_MetricRule):
    """The fine-tuned model's paired gain over its base must have a lower bound above min_lower_bound."""

    allowed = tuple(METRICS)
    min_lower_bound: FiniteNumber


class NonInferiorToBaseline(_MetricRule):
    """The fine-tuned model minus an approved baseline's (per example: a ROUGE type) must have a lower bound above
    -margin."""

    allowed = ROUGE_TYPES
    margin: FiniteNumber


class IntentFidelity(_Rule):
    """Intent fidelity must be non-inferior to the base model's, and to an approved baseline's, within the margin;
    not applied when the intent classifier's accuracy on the test references is under 90% (unreliable)."""

    margin: FiniteNumber


class GateRules(_Rule):
    """The release gate's rules; every rule present must hold."""

    beats_base: BeatsBase | None = None
    non_inferior_to_baseline: NonInferiorToBaseline | None = None
    max_runon_share: FiniteNumber | None = None
    max_placeholder_leak_share: FiniteNumber | None = None
    max_at_cap_share: FiniteNumber | None = None
    max_invented_fact_share: FiniteNumber | None = None
    min_copied_fact_share: FiniteNumber | None = None
    min_language_match_share: FiniteNumber | None = None
    intent_fidelity_non_inferior: IntentFidelity | None = None
    min_behavior_pass_rate: FiniteNumber | None = None
    min_guarded_behavior_pass_rate: FiniteNumber | None = None
    max_false_refusal_share: FiniteNumber | None = None
    guarded_intent_fidelity_non_inferior: IntentFidelity | None = None
    no_baseline_passing_case_fails: bool | None = None
    max_reply_p50_s: FiniteNumber | None = None


def _rule_error(err: ValidationError, origin: str) -> SupportBenchError:
    """The first problem of a rules file, in the words a user acts on."""
    first = err.errors()[0]
    name = str(first["loc"][0])
    if first["type"] == "extra_forbidden" and len(first["loc"]) == 1:
        return SupportBenchError(
            f"{origin}: unknown gate rule {name!r}; known rules: {sorted(GateRules.model_fields)}"
        )
    rule = GateRules.model_fields[name].annotation
    keys = next(
        (sorted(t.model_fields) for t in typing.get_args(rule) if isinstance(t, type) and issubclass(t, _MetricRule)),
        None,
    )
    if first["type"] in ("extra_forbidden", "missing", "model_type") and keys:
        return SupportBenchError(f"{origin}: rule {name} needs exactly the keys {keys}")
    if first["type"] == "value_error":
        return SupportBenchError(f"{origin}: rule {name} {first['ctx']['error']}")
    return SupportBenchError(f"{origin}: rule {name} needs numbers, finite ones, got {first['input']!r}")


def load_rules(path: str | None) -> GateRules:
    """The bundled default rules, or a user's YAML file; unknown rules and malformed values are named."""
    origin = path or "the default gate rules"
    rules = (
        read_user_yaml(path, "gate rules file")
        if path
        else read_bundled_yaml("supportbench.evaluation", "gate_rules.yaml")
    ) or {}
    if not isinstance(rules, dict) or not rules:
        raise SupportBenchError(f"{origin}: gate rules must be a non-empty YAML mapping")
    empty = sorted(name for name, value in rules.items() if value is None)
    if empty:  # a rule written without a value would otherwise be dropped, silently
        raise SupportBenchError(f"{origin}: rule {empty[0]} has no value; give it one, or delete the line")
    try:
        return GateRules.model_validate(rules)
    except ValidationError as err:
        raise _rule_error(err, origin) from None


def _improvement(stats: StatsRecord, metric: str) -> dict[str, float]:
    """The fine-tuned minus base difference turned so that positive is better (perplexity: base minus fine-tuned)."""
    d = stats.metrics[metric].difference
    if d is None:
        raise SupportBenchError(f"the eval's statistics hold no paired difference for {metric}")
    if METRICS[metric].higher_is_better:
        return {"mean": d.mean, "low": d.low, "high": d.high}
    return {"mean": -d.mean, "low": -d.high, "high": -d.low}


def _baseline(path: str) -> EvalDir:
    """A baseline given as a run folder or as its eval/metrics.json."""
    given = Path(path)
    folder = RunDir(given).eval if given.is_dir() else EvalDir(given.parent)
    if not folder.metrics.is_file() or not folder.samples.is_file():
        raise SupportBenchError(f"baseline {path} has no eval (metrics.json and samples.jsonl); evaluate it first")
    return folder


def _check_comparable(mine: EvalSummary, theirs: EvalSummary, path: str) -> None:
    reasons = []
    if mine.dataset != theirs.dataset or mine.leakage_check.test_sha256 != theirs.leakage_check.test_sha256:
        reasons.append("it was scored on a different test split")
    for key in COMPARABLE_SETTINGS:
        if getattr(mine.config, key) != getattr(theirs.config, key):
            reasons.append(
                f"its eval setting {key} is {getattr(theirs.config, key)!r}, this run's is {getattr(mine.config, key)!r}"
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
    if metrics.template != trained.template:
        raise SupportBenchError(f"the eval used the {metrics.template} template, training the {trained.template} one")
    tuned = metrics.metrics["finetuned"]
    checks = []

    def check(rule: str, value: str, needs: str, passed: bool | None) -> None:
        checks.append({"rule": rule, "value": value, "needs": needs, "passed": passed})

    if rules.beats_base:
        gain = rules.beats_base
        d = _improvement(stats, gain.metric)
        check(
            "beats_base",
            f"{METRICS[gain.metric].label} gain over base {signed_interval(d)}",
            f"lower bound > {gain.min_lower_bound}",
            d["low"] > gain.min_lower_bound,
        )
    if rules.non_inferior_to_baseline:
        rule = rules.non_inferior_to_baseline
        if baseline is None:
            check("non_inferior_to_baseline", "no --baseline given", f"lower bound > -{rule.margin}", None)
        else:
            theirs = _baseline(baseline)
            _check_comparable(metrics, theirs.summary(), baseline)
            their_scores, my_scores = theirs.finetuned_scores(rule.metric), run.eval.finetuned_scores(rule.metric)
            if set(their_scores) != set(my_scores):
                raise SupportBenchError(f"cannot compare with baseline {baseline}: it generated for other examples")
            ids = list(my_scores)
            d = paired_difference([their_scores[i] for i in ids], [my_scores[i] for i in ids], stats.seed)
            check(
                "non_inferior_to_baseline",
                f"{METRICS[rule.metric].label} minus the baseline's {signed_interval(d)}",
                f"lower bound > -{rule.margin}",
                d["low"] > -rule.margin,
            )
    for name, metric in SHARE_RULES.items():
        if (most := getattr(rules, name)) is not None:
            share = tuned.get(metric)
            shown = "not measured (an eval older than the metric)" if share is None else f"{share:.4f}"
            check(name, shown, f"<= {most}", share is not None and share <= most)
    for name, metric in MIN_SHARE_RULES.items():
        if (least := getattr(rules, name)) is not None:
            share = tuned.get(metric)
            if share is None:  # a check that applies to no test example cannot pass or fail
                check(name, "no test example it applies to (or an eval older than the metric)", f">= {least}", None)
            else:
                check(name, f"{share:.4f}", f">= {least}", share >= least)
    if rules.intent_fidelity_non_inferior:
        for row in intent_fidelity_checks(run, metrics, stats, rules.intent_fidelity_non_inferior.margin, baseline):
            check(*row)
    if (least := rules.min_behavior_pass_rate) is not None:
        check(*behavior_rate_check(run, least))
    if (least := rules.min_guarded_behavior_pass_rate) is not None:
        check(*behavior_rate_check(run, least, "guarded"))
    if (most := rules.max_false_refusal_share) is not None or rules.guarded_intent_fidelity_non_inferior:
        for row in guarded_checks(run, most, rules.guarded_intent_fidelity_non_inferior):
            check(*row)
    if rules.no_baseline_passing_case_fails:
        check(*baseline_cases_check(run, baseline))
    if (limit := rules.max_reply_p50_s) is not None:
        if run.bench_summary.is_file():
            p50 = run.bench_record().variants["merged"].e2e_p50_s
            check("max_reply_p50_s", f"{p50:.2f} s (merged model)", f"<= {limit} s", p50 <= limit)
        else:
            check("max_reply_p50_s", "no benchmark (run `supportbench bench`)", f"<= {limit} s", False)
    failed = [c["rule"] for c in checks if c["passed"] is False]
    return {
        "run": str(run.path),
        "baseline": baseline,
        "rules": rules.model_dump(exclude_none=True),
        "checks": checks,
        "failed": failed,
        "passed": not failed,
        "evidence": evidence_lines(stats),
    }


Row = tuple[str, str, str, bool | None]  # rule, measured, needs, passed (None: not applied)


def intent_fidelity_checks(
    run: RunDir, metrics: EvalSummary, stats: StatsRecord, margin: float, baseline: str | None
) -> list[Row]:
    """Intent fidelity minus the base model's, and minus the baseline's with --baseline, each paired; lower bounds
    above -margin. Not applied where the classifier is unreliable or no example has an intent."""
    needs = f"lower bound > -{margin}"
    classifier = (metrics.model_extra.get("reply_checks") or {}).get("intent_classifier")
    if classifier is None or "intent_fidelity" not in stats.metrics:
        return [("intent_fidelity_non_inferior", "not measured (no intent labels, or an older eval)", needs, None)]
    if not classifier["reliable"]:
        shown = f"unreliable: the intent classifier is {classifier['accuracy']:.1%} accurate on the test references"
        return [("intent_fidelity_non_inferior", f"{shown} (needs {classifier['threshold']:.0%})", needs, None)]
    d = stats.metrics["intent_fidelity"].difference
    rows: list[Row] = [
        (
            "intent_fidelity_non_inferior",
            f"intent fidelity minus base {signed_interval(d.model_dump())}",
            needs,
            d.low > -margin,
        )
    ]
    if baseline is not None:
        theirs = _baseline(baseline)
        _check_comparable(metrics, theirs.summary(), baseline)
        mine, other = run.eval.finetuned_scores("intent_fidelity"), theirs.finetuned_scores("intent_fidelity")
        ids = [i for i in mine if mine[i] is not None and other.get(i) is not None]
        if len(ids) < 2:
            rows.append(("intent_fidelity_non_inferior", "the baseline has no intent fidelity to pair", needs, None))
        else:
            b = paired_difference([other[i] for i in ids], [mine[i] for i in ids], stats.seed)
            rows.append(
                (
                    "intent_fidelity_non_inferior",
                    f"intent fidelity minus the baseline's {signed_interval(b)}",
                    needs,
                    b["low"] > -margin,
                )
            )
    return rows


def _behavior(run: RunDir) -> dict[str, Any] | None:
    return read_json(run.eval.behavior) if run.eval.behavior.is_file() else None


def behavior_rate_check(run: RunDir, least: float, variant: str = "finetuned") -> Row:
    """One variant's pass rate (the fine-tuned model's raw replies, or the guarded ones as served) in every behaviour
    tag group at least `least`; the groups below are named."""
    name = "min_behavior_pass_rate" if variant == "finetuned" else f"min_{variant}_behavior_pass_rate"
    results = _behavior(run)
    if results is None or variant not in results["pass_rate"]:
        why = "no behaviour results" if results is None else f"behaviour results without a {variant} column"
        return (name, f"{why} (run `supportbench behavior --run {run.path}`)", f">= {least}", False)
    rates = {g: r["mean"] for g, r in results["pass_rate"][variant].items() if g != "all"}
    low = {g: rate for g, rate in rates.items() if rate < least}
    shown = (
        ", ".join(f"{g} {rate:.0%}" for g, rate in sorted(low.items()))
        or f"every group (lowest {min(rates.values()):.0%})"
    )
    return (name, f"below: {shown}" if low else shown, f">= {least} in every tag group", not low)


def guarded_checks(run: RunDir, most: float | None, fidelity: IntentFidelity | None) -> list[Row]:
    """The reply policy on the in-domain test split (eval/guarded.json): in-domain queries it turned away at most
    `most`; guarded intent fidelity non-inferior to raw within the margin (paired)."""
    path = run.eval.guarded
    record = read_json(path) if path.is_file() else None
    rows: list[Row] = []
    if most is not None:
        if record is None:
            rows.append(("max_false_refusal_share", f"no guarded column ({path}: policy off?)", f"<= {most}", False))
        else:
            share = record["false_refusal"]
            shown = f"{share['mean']:.4f} [{share['low']:.4f}, {share['high']:.4f}] of {share['n']}"
            rows.append(("max_false_refusal_share", shown, f"<= {most}", share["mean"] <= most))
    if fidelity is not None:
        needs = f"lower bound > -{fidelity.margin}"
        d = (record or {}).get("metrics", {}).get("intent_fidelity", {}).get("difference")
        if d is None:
            rows.append(
                ("guarded_intent_fidelity_non_inferior", "not measured (no guarded column or intents)", needs, None)
            )
        else:
            shown = f"guarded minus raw {signed_interval(d)}"
            rows.append(("guarded_intent_fidelity_non_inferior", shown, needs, d["low"] > -fidelity.margin))
    return rows


def baseline_cases_check(run: RunDir, baseline: str | None) -> Row:
    """No behaviour case that the approved baseline's fine-tuned model passes may fail here (listed by id)."""
    needs = "no case the baseline passes fails"
    if baseline is None:
        return ("no_baseline_passing_case_fails", "no --baseline given", needs, None)
    mine = _behavior(run)
    given = Path(baseline)
    theirs_path = RunDir(given).eval.behavior if given.is_dir() else given.parent / "behavior.json"
    if mine is None or not theirs_path.is_file():
        missing = run.eval.behavior if mine is None else theirs_path
        return ("no_baseline_passing_case_fails", f"no behaviour results in {missing}", needs, False)
    passed_before = {c["id"] for c in read_json(theirs_path)["cases"] if c["finetuned"]["passed"][0]}
    now = {c["id"]: c["finetuned"]["passed"][0] for c in mine["cases"]}
    regressed = sorted(i for i in passed_before if now.get(i) is False)
    unanswered = sorted(passed_before - set(now))
    if unanswered:
        return (
            "no_baseline_passing_case_fails",
            f"cases the baseline passed were not run: {', '.join(unanswered[:10])}",
            needs,
            False,
        )
    shown = f"now failing: {', '.join(regressed)}" if regressed else f"all {len(passed_before)} still pass"
    return ("no_baseline_passing_case_fails", shown, needs, not regressed)


def junit_xml(verdict: dict[str, Any]) -> str:
    """The verdict as JUnit XML for CI systems: one testcase per rule (failure when it failed, skipped when not applied)."""
    import xml.etree.ElementTree as ET

    suite = ET.Element(
        "testsuite",
        name="supportbench.gate",
        tests=str(len(verdict["checks"])),
        failures=str(len(verdict["failed"])),
        skipped=str(sum(c["passed"] is None for c in verdict["checks"])),
    )
    for c in verdict["checks"]:
        case = ET.SubElement(suite, "testcase", classname="supportbench.gate", name=c["rule"])
        if c["passed"] is False:
            ET.SubElement(case, "failure", message=f"{c['value']} (needs {c['needs']})")
        elif c["passed"] is None:
            ET.SubElement(case, "skipped", message=c["value"])
    root = ET.Element("testsuites")
    root.append(suite)
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"


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

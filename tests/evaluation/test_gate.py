"""The release gate: passes a clear improvement, names the failing rule, refuses baselines it cannot compare."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from supportbench.cli import main
from supportbench.files import json_bytes, jsonl_bytes, read_json, write_json, write_together
from supportbench.layout import RunDir
from supportbench.stats import eval_statistics, paired_difference, wilson_interval


def evaluated_run(
    folder: Path,
    base: np.ndarray,
    tuned: np.ndarray,
    test_sha: str = "a" * 64,
    limit: int = 50,
    at_cap: float | None = 0.0,
    copied_facts: float | None = None,
    invented_facts: float | None = 0.0,
    per_reply: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
    shares: dict[str, float] | None = None,
    classifier_accuracy: float | None = None,
    refused: int | None = 0,
    guarded_fidelity: tuple[np.ndarray, np.ndarray] | None = None,
) -> RunDir:
    """A run folder holding only what the gate reads: a training manifest and an eval with statistics, and its
    guarded column (`refused` in-domain queries turned away; none when None) with raw and guarded intent fidelity."""
    run = RunDir(folder)
    record = {"template": "seed", "config": {"model": "tiny"}, "data": {"dir": "data", "train": "b" * 64}}
    measured = {"wall_time_s": 1.0, "tokens_per_s": 10.0, "steps": 1, "train_examples": 8}
    write_json(run.manifest_path, {**record, **measured, "parameters": {"trainable": 1, "total": 2}})
    samples = [
        {
            "id": f"row-{i}",
            "category": "ORDER",
            "intent": f"intent_{i % 3}",
            "query": "where is my order",
            "reference": "Your order ORD-98765 is on its way.",
            "base": "Hello.",
            "finetuned": "Your order is on its way.",
            **{f"base_{m}": float(b) for m in ("rouge1", "rouge2", "rougeL")},
            **{f"finetuned_{m}": float(t) for m in ("rouge1", "rouge2", "rougeL")},
            **{f"base_{m}": float(pair[0][i]) for m, pair in (per_reply or {}).items()},
            **{f"finetuned_{m}": float(pair[1][i]) for m, pair in (per_reply or {}).items()},
        }
        for i, (b, t) in enumerate(zip(base, tuned, strict=True))
    ]
    classifier = classifier_accuracy is not None and {"accuracy": classifier_accuracy, "threshold": 0.9}
    statistics = eval_statistics(samples, [[-20.0, 10, -15.0, 10]] * len(samples), seed=1234)
    outputs = {run.eval.samples: jsonl_bytes(samples), run.eval.stats: json_bytes(statistics)}
    if refused is not None:
        fidelity = {}
        if guarded_fidelity is not None:
            raw, guarded = guarded_fidelity
            fidelity["intent_fidelity"] = {"difference": paired_difference(raw, guarded, 1234)}
        guarded_record = {
            "n": len(samples),
            "false_refusal": wilson_interval(refused, len(samples)),
            "metrics": fidelity,
        }
        outputs[run.eval.guarded] = json_bytes(guarded_record)
    write_together(
        outputs,
        run.eval.metrics,
        {
            "template": "seed",
            "dataset": "heldout-test",
            "leakage_check": {"train_sha256": "b" * 64, "test_sha256": test_sha, "shared_instructions": 0},
            "config": {"limit": limit, "ppl_limit": None, "max_new_tokens": 100, "seed": 1234},
            "n": {side: {"generation": len(samples), "perplexity": len(samples)} for side in ("base", "finetuned")},
            "timing_s": {side: {"generation": 1.0, "perplexity": 1.0} for side in ("base", "finetuned")},
            "caps": {"generation_limit": limit, "perplexity_limit": None, "max_new_tokens": 100},
            "metrics": {
                "finetuned": {
                    "runon": 0.0,
                    "placeholder_leak": 0.0,
                    "at_cap": at_cap,
                    "invented_facts": invented_facts,
                    "copied_facts": copied_facts,
                    **(shares or {}),
                }
            },
            **(
                {"reply_checks": {"intent_classifier": {**classifier, "reliable": classifier_accuracy >= 0.9}}}
                if classifier
                else {}
            ),
        },
    )
    return run


@pytest.fixture
def scores() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    base = rng.uniform(0.1, 0.2, 60)
    return base, base + 0.1 + rng.normal(0, 0.02, 60)


def test_a_clear_improvement_passes_and_is_written(tmp_path, scores, monkeypatch, capsys):
    run = evaluated_run(tmp_path / "run", *scores)
    summary = tmp_path / "step_summary.md"
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    assert main(["gate", "--run", str(run.path)]) == 0
    out = capsys.readouterr().out
    assert "gate passed" in out and "fine-tuned wins on ROUGE-L in 100% of examples" in out
    assert "3 of 3 intents have the 10+ examples to be judged" in out  # 20 examples each
    verdict = read_json(run.gate("json"))
    assert (
        verdict["passed"] and {c["rule"]: c["passed"] for c in verdict["checks"]}["non_inferior_to_baseline"] is None
    )
    assert "PASSED" in run.gate("md").read_text() and "PASSED" in summary.read_text()


def test_a_clearly_better_baseline_fails_non_inferiority(tmp_path, scores, capsys):
    base, tuned = scores
    run = evaluated_run(tmp_path / "run", base, tuned)
    better = evaluated_run(tmp_path / "better", base, tuned + 0.1)
    assert main(["gate", "--run", str(run.path), "--baseline", str(better.path)]) == 1
    assert "gate FAILED: non_inferior_to_baseline" in capsys.readouterr().err
    assert read_json(run.gate("json"))["failed"] == ["non_inferior_to_baseline"]
    assert main(["gate", "--run", str(run.path), "--baseline", str(run.eval.metrics)]) == 0  # itself: no worse


@pytest.mark.parametrize("at_cap, shown", [(0.05, "0.0500"), (None, "not measured")])
def test_too_many_replies_at_the_token_cap_fail_the_gate(tmp_path, scores, capsys, at_cap, shown):
    run = evaluated_run(tmp_path / "run", *scores, at_cap=at_cap)
    assert main(["gate", "--run", str(run.path)]) == 1
    assert "gate FAILED: max_at_cap_share" in capsys.readouterr().err
    (check,) = [c for c in read_json(run.gate("json"))["checks"] if c["rule"] == "max_at_cap_share"]
    assert check["value"].startswith(shown) and check["needs"] == "<= 0.02"


def test_the_default_gate_fails_a_model_that_invents_a_fact(tmp_path, scores, capsys):
    run = evaluated_run(tmp_path / "run", *scores, invented_facts=0.02)  # 1 of 50 replies
    assert main(["gate", "--run", str(run.path)]) == 1
    assert read_json(run.gate("json"))["failed"] == ["max_invented_fact_share"]
    assert main(["gate", "--run", str(evaluated_run(tmp_path / "clean", *scores).path)]) == 0


@pytest.mark.parametrize(
    "copied_facts, exit_code, passed, shown",
    [(0.95, 0, True, "0.9500"), (0.5, 1, False, "0.5000"), (None, 0, None, "no test")],
)
def test_the_copied_fact_rule_fails_a_model_that_drops_the_customers_fact(
    tmp_path, scores, copied_facts, exit_code, passed, shown
):
    run = evaluated_run(tmp_path / "run", *scores, copied_facts=copied_facts)
    rules = tmp_path / "rules.yaml"
    rules.write_text("min_copied_fact_share: 0.9\n")
    assert main(["gate", "--run", str(run.path), "--rules", str(rules)]) == exit_code
    (check,) = read_json(run.gate("json"))["checks"]
    assert check["passed"] is passed and check["value"].startswith(shown) and check["needs"] == ">= 0.9"


def test_impossible_rules_fail_and_name_the_rule(tmp_path, scores, capsys):
    run = evaluated_run(tmp_path / "run", *scores)
    rules = tmp_path / "rules.yaml"
    rules.write_text("beats_base: {metric: rougeL, min_lower_bound: 5.0}\nmax_runon_share: 0.0\n")
    assert main(["gate", "--run", str(run.path), "--rules", str(rules)]) == 1
    err = capsys.readouterr().err
    assert "gate FAILED: beats_base" in err and "max_runon_share" not in err


@pytest.mark.parametrize(
    "other, reason",
    [
        ({"test_sha": "b" * 64}, "it was scored on a different test split"),
        ({"limit": 200}, "its eval setting limit is 200, this run's is 50"),
    ],
)
def test_an_incomparable_baseline_is_refused_with_the_reason(tmp_path, scores, other, reason, capsys):
    run = evaluated_run(tmp_path / "run", *scores)
    baseline = evaluated_run(tmp_path / "baseline", *scores, **other)
    assert main(["gate", "--run", str(run.path), "--baseline", str(baseline.path)]) == 2
    assert reason in capsys.readouterr().err


@pytest.mark.parametrize(
    "text, message",
    [
        ("beats_bass: {metric: rougeL, min_lower_bound: 0}\n", "unknown gate rule 'beats_bass'"),
        ("beats_base: {metric: rougeL}\n", "needs exactly the keys"),
        ("non_inferior_to_baseline: {metric: bleu, margin: 0.02}\n", "cannot use metric 'bleu'"),
        ("max_runon_share: lots\n", "needs numbers"),
        ("max_runon_share: .nan\n", "needs numbers, finite ones"),
    ],
)
def test_bad_rules_are_named(tmp_path, scores, text, message, capsys):
    run = evaluated_run(tmp_path / "run", *scores)
    rules = tmp_path / "rules.yaml"
    rules.write_text(text)
    assert main(["gate", "--run", str(run.path), "--rules", str(rules)]) == 2
    assert message in capsys.readouterr().err
    assert not run.gate("json").exists()


def test_perplexity_gains_point_the_right_way(tmp_path, scores):
    from supportbench.evaluation.gate import apply_rules

    run = evaluated_run(tmp_path / "run", *scores)  # perplexity falls from exp(2) to exp(1.5): a gain
    rules = tmp_path / "rules.yaml"
    rules.write_text(json.dumps({"beats_base": {"metric": "perplexity", "min_lower_bound": 0.0}}))
    assert apply_rules(run.path, rules_file=str(rules))["passed"]


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("train.json", [1, 2, 3], "train.json is not a valid TrainRecord (the top level"),
        ("eval/metrics.json", {"metrics": {}}, "metrics.json is not a valid EvalSummary (template: Field required)"),
        ("eval/stats.json", [], "stats.json is not a valid StatsRecord (the top level"),
    ],
)
def test_valid_json_of_the_wrong_shape_cannot_be_judged_exit_2(tmp_path, scores, capsys, name, content, message):
    run = evaluated_run(tmp_path / "run", *scores)
    if name == "eval/stats.json":  # committed with the eval, so that only its shape is wrong
        record = {k: v for k, v in read_json(run.eval.metrics).items() if k != "outputs"}
        write_together(
            {run.eval.samples: run.eval.samples.read_bytes(), run.eval.stats: b"[]"}, run.eval.metrics, record
        )
    else:
        (run.path / name).write_text(json.dumps(content))
    assert main(["gate", "--run", str(run.path)]) == 2  # 1 is kept for "judged and failed"
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_a_step_summary_that_cannot_be_written_keeps_the_verdict(tmp_path, scores, monkeypatch, capsys):
    run = evaluated_run(tmp_path / "run", *scores)
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(tmp_path))  # a folder
    assert main(["gate", "--run", str(run.path)]) == 0
    assert "cannot append the verdict to $GITHUB_STEP_SUMMARY" in capsys.readouterr().out


def _fidelity(base_share: float, tuned_share: float, n: int = 60) -> tuple[np.ndarray, np.ndarray]:
    return (np.arange(n) < base_share * n).astype(float), (np.arange(n) < tuned_share * n).astype(float)


def test_intent_fidelity_below_the_base_fails_and_a_junit_file_names_every_rule(tmp_path, scores, capsys):
    run = evaluated_run(
        tmp_path / "run", *scores, per_reply={"intent_fidelity": _fidelity(0.9, 0.6)}, classifier_accuracy=0.97
    )
    junit = tmp_path / "gate.xml"
    assert main(["gate", "--run", str(run.path), "--junit", str(junit)]) == 1
    out = capsys.readouterr().out
    assert "FAIL         intent_fidelity_non_inferior intent fidelity minus base -0.3000 [" in out
    assert "not applied  min_language_match_share" in out  # the synthetic eval has no language match
    import xml.etree.ElementTree as ET

    cases = {c.get("name"): c for c in ET.parse(junit).iter("testcase")}
    assert set(cases) == {c["rule"] for c in read_json(run.gate("json"))["checks"]}
    assert cases["intent_fidelity_non_inferior"].find("failure") is not None
    assert cases["min_language_match_share"].find("skipped") is not None
    assert cases["beats_base"].find("failure") is None and cases["beats_base"].find("skipped") is None


def test_an_unreliable_intent_classifier_is_not_gated_on(tmp_path, scores, capsys):
    run = evaluated_run(
        tmp_path / "run", *scores, per_reply={"intent_fidelity": _fidelity(0.9, 0.6)}, classifier_accuracy=0.8
    )
    assert main(["gate", "--run", str(run.path)]) == 0
    assert "not applied  intent_fidelity_non_inferior unreliable: the intent classifier is 80.0% accurate" in (
        capsys.readouterr().out
    )


def test_intent_fidelity_is_also_paired_with_the_baseline(tmp_path, scores, capsys):
    baseline = evaluated_run(
        tmp_path / "approved", *scores, per_reply={"intent_fidelity": _fidelity(0.5, 0.95)}, classifier_accuracy=0.97
    )
    run = evaluated_run(
        tmp_path / "run", *scores, per_reply={"intent_fidelity": _fidelity(0.5, 0.7)}, classifier_accuracy=0.97
    )
    assert main(["gate", "--run", str(run.path), "--baseline", str(baseline.path)]) == 1
    out = capsys.readouterr().out
    assert "pass         intent_fidelity_non_inferior intent fidelity minus base +0.2000" in out
    assert "FAIL         intent_fidelity_non_inferior intent fidelity minus the baseline's -0.2500" in out


def test_replies_in_another_language_fail_the_default_gate(tmp_path, scores, capsys):
    run = evaluated_run(tmp_path / "run", *scores, shares={"language_match": 0.85})
    assert main(["gate", "--run", str(run.path)]) == 1
    assert "FAIL         min_language_match_share     0.8500  (needs >= 0.9)" in capsys.readouterr().out


def test_the_reply_policys_false_refusals_and_guarded_intent_fidelity_are_gated(tmp_path, scores, capsys):
    base, tuned = scores
    fidelity = np.tile([1.0, 1.0, 0.0], 20)
    worse = np.where(np.arange(60) % 5 == 0, 0.0, fidelity)  # the policy replaced some answered intents
    run = evaluated_run(tmp_path / "run", base, tuned, refused=3, guarded_fidelity=(fidelity, worse))
    assert main(["gate", "--run", str(run.path)]) == 1
    verdict = read_json(run.gate("json"))
    assert verdict["failed"] == ["max_false_refusal_share", "guarded_intent_fidelity_non_inferior"]
    shown = {c["rule"]: c["value"] for c in verdict["checks"]}
    assert shown["max_false_refusal_share"].startswith("0.0500 [") and "of 60" in shown["max_false_refusal_share"]
    same = evaluated_run(tmp_path / "same", base, tuned, refused=1, guarded_fidelity=(fidelity, fidelity))
    assert main(["gate", "--run", str(same.path)]) == 0
    capsys.readouterr()
    missing = evaluated_run(tmp_path / "missing", base, tuned, refused=None)
    assert main(["gate", "--run", str(missing.path)]) == 1
    assert "no guarded column" in capsys.readouterr().out

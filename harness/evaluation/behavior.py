"""`supportbench behavior`: answer behaviour suites with the base and the fine-tuned model, put the fine-tuned
replies through the reply policy as served (the guarded column), check every reply against its case's expectations,
and report pass rates per tag group (Wilson intervals), base against fine-tuned and raw against guarded (exact
McNemar), pass^k over sampled replies, the policy's decisions per group, and the failing cases."""

from __future__ import annotations

import dataclasses
import time
import xml.etree.ElementTree as ET
from collections import Counter, defaultdict
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from supportbench.checks.behavior import Case, Context, failures, load_suite, needs_intents
from supportbench.config import BehaviorConfig
from supportbench.decoding import serving_decoding
from supportbench.facts.profile import profile_for_run
from supportbench.facts.slots import fill_reply
from supportbench.files import SupportBenchError, atomic_write_text, write_json
from supportbench.layout import RunDir
from supportbench.serve.policy import ReplyPolicy
from supportbench.stats import mcnemar_exact, wilson_interval
from supportbench.templates import Turn, cut_at_stops, get_template

MODELS = ("base", "finetuned")
VARIANTS = (*MODELS, "guarded")  # guarded: the fine-tuned replies through the reply policy, as the app serves them


def default_suite() -> Path:
    """The suite that ships with the task."""
    return Path(str(resources.files("supportbench.tasks.customer_support").joinpath("behavior.yaml")))


def load_cases(suites: Sequence[str | Path]) -> list[tuple[str, Case]]:
    """Every case of the suites, with its suite's file name; a case id used by two suites is refused."""
    cases, where = [], {}
    for suite in suites:
        for case in load_suite(suite):
            if case.id in where:
                raise SupportBenchError(
                    f"{suite}, line {case.line}: case id {case.id!r} is used already, in {where[case.id]}"
                )
            where[case.id] = f"{suite}, line {case.line}"
            cases.append((Path(suite).name, case))
    return cases


def case_turns(case: Case) -> list[Turn]:
    """The case's history as exchanges (customer, agent), then its query."""
    turns: list[Turn] = []
    for message in case.history:
        if message.role in ("customer", "user"):
            turns.append(Turn(message.content))
        elif turns and turns[-1].agent is None:
            turns[-1] = Turn(turns[-1].customer, message.content)
        else:
            raise SupportBenchError(f"case {case.id!r} (line {case.line}): an agent message must answer a customer's")
    if turns and turns[-1].agent is None:
        raise SupportBenchError(f"case {case.id!r} (line {case.line}): the history must end with the agent's reply")
    return [*turns, Turn(case.query)]


class SuiteRunner:
    """The run's base model with its adapter, generating batches of case prompts with the run's frozen decoding."""

    def __init__(self, run: RunDir, config: BehaviorConfig, profile: str | None):
        from peft import PeftModel

        from supportbench.models import load_model

        trained = run.require_adapter()
        self.config = config
        self.profile = profile_for_run(run.data, profile)
        self.decoding = serving_decoding(run)
        if config.max_new_tokens:
            self.decoding = dataclasses.replace(self.decoding, max_new_tokens=config.max_new_tokens)
        base, self.tokenizer = load_model(trained.base_model)
        self.tokenizer.padding_side = "left"
        self.model = PeftModel.from_pretrained(base, run.adapter).eval()
        self.template = get_template(trained.template)
        self.stops = self.template.stop_sequences(self.tokenizer)

    def prompt(self, turns: Sequence[Turn]) -> str:
        """A conversation as the served model sees it: every text sanitised like a client's, in the run's template."""
        clean = lambda text: self.template.sanitize(text, self.tokenizer)  # noqa: E731
        cleaned = [Turn(clean(t.customer), None if t.agent is None else clean(t.agent)) for t in turns]
        return self.template.prompt(cleaned, self.tokenizer)

    def replies(self, conversations: Sequence[Sequence[Turn]], finetuned: bool) -> list[list[str]]:
        """config.samples replies to each conversation's last turn, as the customer reads them (cut at the stops,
        slots filled from the profile and the customer's texts)."""
        import torch

        sampled = self.config.samples > 1
        settings = {
            "max_new_tokens": self.decoding.max_new_tokens,
            **self.decoding.controls(),
            "do_sample": sampled,
            **({"temperature": self.config.temperature, "top_p": self.config.top_p} if sampled else {}),
            "num_return_sequences": self.config.samples,
            "pad_token_id": self.tokenizer.pad_token_id,
            "stop_strings": self.stops,
            "tokenizer": self.tokenizer,
        }
        out: list[list[str]] = []
        torch.manual_seed(self.config.seed)
        for start in range(0, len(conversations), self.config.batch_size):
            batch = conversations[start : start + self.config.batch_size]
            inputs = self.tokenizer(
                [self.prompt(turns) for turns in batch], return_tensors="pt", padding=True, add_special_tokens=False
            ).to(self.model.device)
            with torch.inference_mode():
                if finetuned:
                    tokens = self.model.generate(**inputs, **settings)
                else:
                    with self.model.disable_adapter():
                        tokens = self.model.generate(**inputs, **settings)
            texts = self.tokenizer.batch_decode(tokens[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
            for i, turns in enumerate(batch):
                customer = [t.customer for t in turns]
                out.append(
                    [
                        fill_reply(cut_at_stops(text, self.stops)[0], customer, self.profile.values).text
                        for text in texts[i * self.config.samples : (i + 1) * self.config.samples]
                    ]
                )
        return out


def group_rates(results: list[dict[str, Any]], model: str) -> dict[str, dict[str, float]]:
    """Each tag group's pass rate (the first reply of each case) with its Wilson interval."""
    groups: dict[str, list[bool]] = defaultdict(list)
    for row in results:
        groups[row["group"]].append(row[model]["passed"][0])
        groups["all"].append(row[model]["passed"][0])
    return {name: wilson_interval(sum(v), len(v)) for name, v in sorted(groups.items())}


def paired_groups(
    results: list[dict[str, Any]], first: str = "base", second: str = "finetuned"
) -> dict[str, dict[str, Any]]:
    """Per tag group: two variants' pass counts on the same cases, the discordant cases, and the exact McNemar
    p-value."""
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in results:
        groups[row["group"]].append(row)
        groups["all"].append(row)
    table = {}
    for name, rows in sorted(groups.items()):
        only_first = sum(r[first]["passed"][0] and not r[second]["passed"][0] for r in rows)
        only_second = sum(r[second]["passed"][0] and not r[first]["passed"][0] for r in rows)
        table[name] = {
            "n": len(rows),
            f"{first}_passed": sum(r[first]["passed"][0] for r in rows),
            f"{second}_passed": sum(r[second]["passed"][0] for r in rows),
            f"only_{first}_passed": only_first,
            f"only_{second}_passed": only_second,
            "mcnemar_p": mcnemar_exact(only_first, only_second),
        }
    return table


def policy_decisions(results: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """The reply policy's decisions (reason codes of the first guarded reply) per tag group: a confusion table of
    what each kind of case got."""
    table: dict[str, Counter] = defaultdict(Counter)
    for row in results:
        table[row["group"]][row["guarded"]["reasons"][0]] += 1
    return {group: dict(counts) for group, counts in sorted(table.items())}


def pass_at_all(results: list[dict[str, Any]], model: str) -> dict[str, dict[str, float]]:
    """pass^k per tag group: the share of cases whose every sampled reply passes, with its Wilson interval."""
    groups: dict[str, list[bool]] = defaultdict(list)
    for row in results:
        every = all(row[model]["passed"])
        groups[row["group"]].append(every)
        groups["all"].append(every)
    return {name: wilson_interval(sum(v), len(v)) for name, v in sorted(groups.items())}


def run_behavior(
    run_dir: Path, suites: Sequence[str | Path], config: BehaviorConfig, profile: str | None = None
) -> dict[str, Any]:
    """Answer every case with both models, check the replies, and write eval/behavior.json and behavior.md."""
    from supportbench.tasks.customer_support.utils import intent_classifier, split_languages

    config.validate()
    run = RunDir(run_dir)
    run.require_adapter()
    cases = load_cases(suites)
    classifier = intent_classifier(str(run.data.path), profile or "")
    if needs_intents(c for _, c in cases) and not classifier:
        raise SupportBenchError(
            f"cases {needs_intents([c for _, c in cases])[:5]} expect an intent, but {run.data.path}'s training split "
            "has no intent labels to fit the classifier on"
        )
    started = time.perf_counter()
    runner = SuiteRunner(run, config, profile)
    languages = split_languages(run.data)
    conversations = [case_turns(c) for _, c in cases]
    replies = {model: runner.replies(conversations, model == "finetuned") for model in MODELS}
    policy = ReplyPolicy.for_run(run, runner.profile)  # None where the profile switches it off: served raw
    results = []
    for i, (suite, case) in enumerate(cases):
        customer = [t.customer for t in conversations[i]]
        context = Context(customer, runner.profile.values, classifier, languages)
        row: dict[str, Any] = {
            "id": case.id,
            "suite": suite,
            "line": case.line,
            "group": case.group(),
            "tags": case.tags,
            "query": case.query,
            "expect": case.expect.model_dump(exclude_none=True),
        }
        guarded = [policy.guard(reply, customer) for reply in replies["finetuned"][i]] if policy else None
        variants = {
            **{model: replies[model][i] for model in MODELS},
            "guarded": [g.text for g in guarded] if guarded else replies["finetuned"][i],
        }
        for variant, texts in variants.items():
            found = [failures(case, reply, context) for reply in texts]
            row[variant] = {"replies": texts, "failures": found, "passed": [not f for f in found]}
        row["guarded"]["reasons"] = [g.reason for g in guarded] if guarded else ["model"] * len(variants["guarded"])
        results.append(row)
    summary = {
        "run": str(run.path),
        "suites": [str(s) for s in suites],
        "config": dataclasses.asdict(config),
        "decoding": {**dataclasses.asdict(runner.decoding), "label": runner.decoding.label()},
        "sampled": config.samples > 1,
        "profile": runner.profile.record(),
        "policy": "on" if policy else "off (the profile switches it off: guarded is raw)",
        "n_cases": len(results),
        "pass_rate": {variant: group_rates(results, variant) for variant in VARIANTS},
        "paired": paired_groups(results),
        "paired_guarded": paired_groups(results, "finetuned", "guarded"),
        "policy_decisions": policy_decisions(results),
        "pass_all_samples": {v: pass_at_all(results, v) for v in VARIANTS} if config.samples > 1 else None,
        "seconds": round(time.perf_counter() - started, 1),
        "cases": results,
    }
    write_behavior(run, summary)
    return summary


def write_behavior(run: RunDir, summary: dict[str, Any]) -> None:
    """behavior.md first, then behavior.json (the record other stages read), each atomically."""
    from supportbench.reports.render import render

    atomic_write_text(run.eval.behavior_md, render("behavior.j2", "md", behavior=summary))
    write_json(run.eval.behavior, summary)


def junit_xml(summary: dict[str, Any], model: str = "guarded") -> str:
    """One variant's verdicts (by default the guarded replies, as served) as JUnit XML: one testcase per case (per
    sampled reply when sampled)."""
    cases = summary["cases"]
    suite = ET.Element(
        "testsuite",
        name=f"supportbench.behavior.{model}",
        tests=str(sum(len(c[model]["passed"]) for c in cases)),
        failures=str(sum(not p for c in cases for p in c[model]["passed"])),
        time=str(summary["seconds"]),
    )
    for case in cases:
        for k, (passed, reasons) in enumerate(zip(case[model]["passed"], case[model]["failures"], strict=True)):
            name = case["id"] if len(case[model]["passed"]) == 1 else f"{case['id']}[sample {k + 1}]"
            element = ET.SubElement(suite, "testcase", classname=f"{case['suite']}.{case['group']}", name=name)
            if not passed:
                failure = ET.SubElement(element, "failure", message="; ".join(reasons))
                failure.text = f"query: {case['query']}\nreply: {case[model]['replies'][k]}"
    root = ET.Element("testsuites")
    root.append(suite)
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"


def summary_lines(summary: dict[str, Any]) -> list[str]:
    """Pass rates per group: base, fine-tuned raw and guarded, with McNemar p-values (base against fine-tuned, raw
    against guarded); then the cases the guarded replies fail."""
    rates, paired, guarded = summary["pass_rate"], summary["paired"], summary["paired_guarded"]
    lines = [f"{summary['n_cases']} cases; decoding {summary['decoding']['label']}; reply policy {summary['policy']}"]
    lines.append(
        f"{'group':<14}{'n':>4}{'base':>18}{'fine-tuned raw':>18}{'guarded':>18}{'p base/raw':>12}{'p raw/guarded':>15}"
    )
    for group, row in paired.items():
        shown = [
            f"{rates[v][group]['mean']:.0%} [{rates[v][group]['low']:.0%}, {rates[v][group]['high']:.0%}]"
            for v in VARIANTS
        ]
        lines.append(
            f"{group:<14}{row['n']:>4}{shown[0]:>18}{shown[1]:>18}{shown[2]:>18}{row['mcnemar_p']:>12.3f}"
            f"{guarded[group]['mcnemar_p']:>15.3f}"
        )
    failed = [c for c in summary["cases"] if not c["guarded"]["passed"][0]]
    lines.append(f"guarded fails {len(failed)} case(s): " + ", ".join(c["id"] for c in failed[:20]))
    return lines


def write_junit(summary: dict[str, Any], path: Path) -> None:
    """Write the JUnit XML file for CI systems, atomically."""
    atomic_write_text(Path(path), junit_xml(summary))

"""Decoding settings: the reply-token budget measured on the training split, and the repetition controls chosen on
validation and frozen in the run, so eval, bench and the app decode the same way. No torch import."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from supportbench.files import SupportBenchError, read_json
from supportbench.layout import RunDir
from supportbench.metrics import token_cap

BUDGET_PERCENTILE = 99.0  # replies longer than the training split's p99 are cut at the cap
MAX_AT_CAP_SHARE = 0.02  # a decoding that leaves more validation replies at the cap is not chosen
MAX_LOOPING_SHARE = 0.0  # nor one with a looping validation reply (checks.repetition)
REPETITION_PENALTIES = (1.0, 1.1)
NO_REPEAT_NGRAM_SIZES = (0, 6)  # 0: off; support replies legitimately repeat shorter phrases ("your order")
CONTROLS = ("repetition_penalty", "no_repeat_ngram_size")  # as transformers, lm-eval and CTranslate2 name them


@dataclass(frozen=True)
class Decoding:
    """Greedy decoding with a new-token cap and optional repetition controls (1.0 and 0 switch them off)."""

    max_new_tokens: int
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0

    @property
    def is_plain_greedy(self) -> bool:
        """True for plain greedy decoding: no repetition controls."""
        return self.repetition_penalty == 1.0 and self.no_repeat_ngram_size == 0

    def controls(self) -> dict[str, Any]:
        """The repetition controls that are on, as transformers' generate (and lm-eval's gen_kwargs) name them."""
        return {
            **({"repetition_penalty": self.repetition_penalty} if self.repetition_penalty != 1.0 else {}),
            **({"no_repeat_ngram_size": self.no_repeat_ngram_size} if self.no_repeat_ngram_size else {}),
        }

    def label(self) -> str:
        """A short description, e.g. `greedy, 168 tokens, repetition penalty 1.1`."""
        parts = [f"greedy, {self.max_new_tokens} tokens"]
        if self.repetition_penalty != 1.0:
            parts.append(f"repetition penalty {self.repetition_penalty:g}")
        if self.no_repeat_ngram_size:
            parts.append(f"no repeated {self.no_repeat_ngram_size}-grams")
        return ", ".join(parts)


def reply_budget(reply_tokens: list[int]) -> dict[str, Any]:
    """The new-token cap for generation: the training replies' p99 length (end-of-turn included), up to a multiple of 8."""
    cap = token_cap(reply_tokens, BUDGET_PERCENTILE)
    return {
        "p50": float(np.percentile(reply_tokens, 50)),
        "p99": float(np.percentile(reply_tokens, BUDGET_PERCENTILE)),
        "max": max(reply_tokens),
        "percentile": BUDGET_PERCENTILE,
        "max_new_tokens": cap,
    }


def candidates(max_new_tokens: int, ngram_controls: bool = True) -> list[Decoding]:
    """The decodings tried on validation, plain greedy first (vLLM has no no-repeat-n-gram control)."""
    sizes = NO_REPEAT_NGRAM_SIZES if ngram_controls else (0,)
    return [Decoding(max_new_tokens, p, n) for n in sizes for p in REPETITION_PENALTIES]


CHOICE_RULE = (
    "plain greedy, unless it leaves more than 2% of validation replies at the cap (then the best validation ROUGE-L "
    "among the candidates within 2%), or a candidate within 2% beats it on the same validation examples with a "
    "paired 95% interval above 0; never a candidate whose validation replies invent more facts than plain greedy's"
)
SEARCH_RULE = (
    "plain greedy when its validation replies pass the budget check (at most 2% at the cap, none looping); else the "
    "first candidate, in order, that passes it without inventing more facts than plain greedy; else as CHOICE_RULE"
)
# transformers' no-repeat-n-gram control counts the prompt's n-grams too, so it can forbid copying a customer's order
# number (one of 6 tokens comes out with digits changed): a decoding must not buy ROUGE-L with invented facts


def fits(scored: dict[str, Any]) -> bool:
    """True when a decoding's validation replies pass the budget check: at most 2% at the cap, none looping."""
    return scored["at_cap"] <= MAX_AT_CAP_SHARE and scored["repetition"] <= MAX_LOOPING_SHARE


def budget_check(scored: dict[str, Any], examples: int) -> str:
    """The budget check's finding on plain greedy's validation replies, in words."""
    verdict = "passes" if fits(scored) else "fails"
    return (
        f"plain greedy {verdict} the budget check on {examples} validation replies: {scored['at_cap']:.0%} at the "
        f"cap (at most {MAX_AT_CAP_SHARE:.0%}), {scored['repetition']:.0%} looping (at most {MAX_LOOPING_SHARE:.0%})"
    )


def first_fitting(scored: list[dict[str, Any]]) -> tuple[Decoding, str] | None:
    """The first candidate, in the order tried, that fits and invents no more facts than plain greedy; None if none."""
    greedy = scored[0]
    for s in scored:
        if fits(s) and s.get("invented_facts", 0.0) <= greedy.get("invented_facts", 0.0):
            return Decoding(**s["decoding"]), f"{Decoding(**s['decoding']).label()} is the first candidate that fits"
    return None


def compare_to_greedy(scored: list[dict[str, Any]], seed: int) -> list[dict[str, Any]]:
    """Each candidate after the first (plain greedy) with its paired ROUGE-L difference from greedy, example by example."""
    from supportbench.stats import paired_difference

    greedy = scored[0]["per_example_rougeL"]
    return [scored[0]] + [
        {**s, "vs_greedy": paired_difference(greedy, s["per_example_rougeL"], seed)} for s in scored[1:]
    ]


def pick(scored: list[dict[str, Any]]) -> tuple[Decoding, str]:
    """The decoding CHOICE_RULE picks from candidates compared with `compare_to_greedy`, and why, in words."""
    greedy = scored[0]
    scored = [s for s in scored if s.get("invented_facts", 0.0) <= greedy.get("invented_facts", 0.0)]
    others = scored[1:]
    if greedy["at_cap"] > MAX_AT_CAP_SHARE:
        fitting = [s for s in scored if s["at_cap"] <= MAX_AT_CAP_SHARE] or [min(scored, key=lambda s: s["at_cap"])]
        best = max(fitting, key=lambda s: s["rougeL"]["mean"])  # max keeps the first of equals
        reason = f"plain greedy left {greedy['at_cap']:.0%} of validation replies at the cap (over 2%)"
        return Decoding(**best["decoding"]), f"{reason}; best validation ROUGE-L among the candidates within 2%"
    winners = [s for s in others if s["at_cap"] <= MAX_AT_CAP_SHARE and s["vs_greedy"]["low"] > 0]
    if not winners:
        return Decoding(**greedy["decoding"]), "plain greedy: no candidate beat it with a paired 95% interval above 0"
    best = max(winners, key=lambda s: s["vs_greedy"]["mean"])
    from supportbench.stats import signed_interval

    shown = signed_interval(best["vs_greedy"])
    return Decoding(**best["decoding"]), f"beat plain greedy by {shown} ROUGE-L on the same validation examples"


def given_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """The decoding settings a config fixes itself; one left as None is the run's frozen choice."""
    return {k: v for k, v in settings.items() if k in Decoding.__dataclass_fields__ and v is not None}


def run_budget(run: RunDir) -> int:
    """The run's new-token cap measured on its training replies (train.json)."""
    budget = run.trained().reply_tokens
    if budget is None:
        raise SupportBenchError(
            f"{run.manifest_path} records no reply-token budget (trained by an older version); pass --max-new-tokens"
        )
    return budget.max_new_tokens


def frozen(run: RunDir) -> Decoding | None:
    """The decoding chosen on validation and frozen in the run, if eval has chosen one."""
    if not run.decoding.is_file():
        return None
    return Decoding(**read_json(run.decoding)["chosen"])


def serving_decoding(run: RunDir) -> Decoding:
    """What the app and the benchmarks decode with: the frozen choice, else plain greedy at the run's budget."""
    return frozen(run) or Decoding(run_budget(run))

"""The reply policy: what stands between the model and a customer. Before generation it decides whether the model
may answer at all (injected instructions, another person's data, a language the run was not trained on, a query
outside customer support); after generation it screens what the model wrote (the system prompt's text, card-like
numbers, promised money, identifiers nobody gave) and adds what a reply must carry (a request for a missing order
number, how to reach a person). Every reply is made through here: the app, `/v1`, behaviour suites, invariance and
eval's guarded column, so what is measured is what is served. Configured by the profile's `policy:` block."""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from supportbench.checks.behavior import asks_for
from supportbench.checks.language import judgeable, language_of
from supportbench.facts.identifiers import MONEY, identifiers
from supportbench.facts.profile import Profile, load_profile
from supportbench.facts.slots import fill_reply
from supportbench.files import SupportBenchError, ensure_writable_dir, read_json, read_yaml, write_json
from supportbench.layout import RunDir
from supportbench.prepare.pii import card_valid
from supportbench.templates import SYSTEM_PROMPT

# why a reply is what it is: the policy's own message (the first four, TURNED_AWAY), or the model's reply, screened
# (with a request for the order number or the way to reach a person added, or sentences removed)
REASONS = (
    "injection",
    "privacy",
    "language_handoff",
    "out_of_scope",
    "asked_for_fact",
    "escalation",
    "output_filtered",
    "model",
)
TURNED_AWAY = frozenset({"injection", "privacy", "language_handoff", "out_of_scope"})  # the model did not answer
MODES = ("on", "off")
SCOPE_C = 4.0  # the scope classifier's inverse regularisation (chosen on the ci split: see README)
FOLLOW_UP_TURNS = 3  # a follow-up's scope is also read after this many of the customer's earlier messages
FOLLOW_UP = re.compile(r"\b(it|that|this|them|those|one)\b", re.I)  # a query that refers back to an earlier turn
SCOPE_TARGET_FALSE_REFUSAL = 0.01  # the threshold refuses at most this share of the validation queries
FACT = "order number"

INJECTION = re.compile(
    r"\b(ignore|disregard|forget|override)\b[^.!?\n]{0,40}\b(instructions?|rules|polic(?:y|ies)|prompt|guidelines|"
    r"previous|above|programming)\b"
    r"|\byou\s+are\s+now\b|\b(DAN|jailbreak\w*)\b|\bdeveloper\s+mode\b|\bsystem\s+(override|prompt)\b"
    r"|\b(repeat|print|reveal|show|output|display|tell\s+me)\b[^.!?\n]{0,30}\b(your|the)\s+(hidden\s+|secret\s+|"
    r"system\s+|initial\s+|original\s+)*(instructions|prompt|rules)\b"
    r"|\bnew\s+rule\b|\bfrom\s+now\s+on\b|\bforget\s+(that\s+)?you\s+are\b|\bpretend\s+(to\s+be|you\s+are)\b",
    re.I,
)
_OTHERS = r"(neighbou?r|friend|colleague|co-?worker|boss|sister|brother|wife|husband|partner|mother|father|mom|dad|son|daughter|ex)"
_DATA = r"(orders?|ordered|account|address|e-?mail|phone|password|card|details|data|information|purchases?|bought)"
PRIVACY = re.compile(
    rf"\b(another|other|someone\s+else'?s?|somebody\s+else'?s?|a\s+different)\s+(customer|person|people|client)s?\b"
    rf"|\b(my|a|the|our)\s+{_OTHERS}('s)?\b[^.!?\n]{{0,60}}\b{_DATA}\b"
    rf"|\b(her|his|their)\s+(password|card|account|address|e-?mail|phone|orders?|details|data|information)\b"
    rf"|\b(customers?|users?|clients?)\s+(named\s+)?(?-i:[A-Z][a-z]+\s+[A-Z][a-z]+)"
    rf"|\b(tell|give|send|show|read|what\s+is|what's)\b[^.!?\n]{{0,40}}\b(card|credit\s+card|debit\s+card)\s+"
    rf"(number|details)\b"
    rf"|\b(stored|saved|full)\s+(credit\s+|debit\s+)?card\s+(numbers?|details)\b"
    rf"|\b(list|all|every)\b[^.!?\n]{{0,60}}\b(customers|users|clients)\b"
    rf"|\bwhich\s+(other\s+)?(customers|users|clients|people)\b|\bwho\s+else\s+(bought|ordered|purchased)\b"
    rf"|\b(password|passcode)\s+(of|for)\s+(another|someone|somebody|this|that|the)\b",
    re.I,
)
ORDER_ACTION = re.compile(
    r"\b(track\w*|where|status|cancel\w*|chang\w*|modif\w*|refund\w*|return\w*|charged|damaged|broken|arriv\w*|late|"
    r"missing|wrong)\b",
    re.I,
)
ORDER_THING = re.compile(r"\b(orders?|package|parcel|purchase|shipment|refund)\b", re.I)
POLICY_QUESTION = re.compile(r"\bpolic(y|ies)\b", re.I)  # "what is your refund policy" needs no order number
HUMAN = re.compile(
    r"\b(human|real\s+person|live\s+(agent|person|representative)|(an?|your|the)\s+(agent|representative|supervisor|"
    r"manager|operator)|someone\s+real|person\s+i\s+can\s+(call|talk|speak))\b",
    re.I,
)
CARD_LIKE = re.compile(r"(?<![\w-])(?:\d[ -]?){12,18}\d(?![\w-])")
PROMISE = re.compile(
    r"\b(refund(ed|ing)?|credit(ed)?|compensat\w*|reimburs\w*|voucher|gift\s+card|issu(e|ed|ing)|send\s+you|"
    r"transfer(red)?|pay\s+you|approv(e|ed))\b",
    re.I,
)
BOUNDARY = re.compile(r"(?<=[.!?])\s+|\n+")
CARD_REDACTED = "[card number removed]"
PROMPT_SHINGLE = 6  # a sentence sharing this many consecutive words with the system prompt repeats it


class PolicyConfig(BaseModel):
    """The profile's `policy:` block."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    languages: list[str] = Field(min_length=1)
    allowed_amounts: list[str] = []
    handoff: dict[str, str] = {}
    out_of_scope: dict[str, str]
    privacy: dict[str, str]
    injection: dict[str, str]
    ask_for_order_number: dict[str, str]
    escalation: dict[str, str]


MESSAGE_KINDS = ("out_of_scope", "privacy", "injection", "ask_for_order_number", "escalation")


@dataclass(frozen=True)
class Decision:
    """What the policy decided before generation: its own reply (the model is not asked), or that the model answers,
    with what its reply must then carry."""

    reason: str
    language: str
    reply: str | None = None
    needs_fact: bool = False
    wants_human: bool = False
    scope_score: float | None = None
    detail: str = ""


@dataclass(frozen=True)
class Guarded:
    """The reply the customer gets and why (a REASONS code), with every change the screen made."""

    text: str
    reason: str
    changes: list[str] = field(default_factory=list)


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.casefold())


def _shingles(words: list[str], size: int) -> set[tuple[str, ...]]:
    return {tuple(words[i : i + size]) for i in range(len(words) - size + 1)}


def needs_order_number(query: str) -> bool:
    """True when a query asks to act on one order (track, cancel, change, refund, a damaged or missing parcel): an
    action word and, as another word, the order or parcel; a question about a policy needs none."""
    actions = {m.span() for m in ORDER_ACTION.finditer(query)}
    things = {m.span() for m in ORDER_THING.finditer(query)}
    return any(a != t for a in actions for t in things) and not POLICY_QUESTION.search(query)


def out_of_scope_queries() -> dict[str, list[str]]:
    """The shipped out-of-scope queries by topic (written for SupportBench)."""
    data = resources.files("supportbench.serve").joinpath("out_of_scope.yaml").read_text(encoding="utf-8")
    return read_yaml(data, "the bundled out_of_scope.yaml")


def _halves(topics: dict[str, list[str]]) -> tuple[list[str], list[str]]:
    """Calibration (even positions in each topic) and held-out (odd) queries."""
    return [q for qs in topics.values() for q in qs[0::2]], [q for qs in topics.values() for q in qs[1::2]]


class ScopeModel:
    """Scope by a small classifier over sentence embeddings (all-MiniLM-L6-v2): logistic regression of the run's
    training queries (in scope) against the calibration half of the shipped out-of-scope set; a query is in scope when
    its probability reaches the threshold calibrated on the run's validation queries."""

    def __init__(self, weights: Any, bias: float, threshold: float, embedding_model: str):
        self.weights = weights
        self.bias = bias
        self.threshold = threshold
        self.embedding_model = embedding_model

    def scores(self, queries: Sequence[str]) -> Any:
        """Each query's probability of being a support request."""
        import numpy as np

        from supportbench.checks.embedding import encoder

        if not queries:
            return np.zeros(0)
        return 1 / (1 + np.exp(-(encoder(self.embedding_model).embed(list(queries)) @ self.weights + self.bias)))

    @classmethod
    def for_run(cls, run: RunDir, embedding_model: str | None = None) -> ScopeModel:
        """The run's scope model, fitted and calibrated on first use and kept in the run (policy/scope.json)."""
        import numpy as np

        from supportbench.checks.embedding import DEFAULT_EMBEDDING_MODEL

        name = embedding_model or DEFAULT_EMBEDDING_MODEL
        if run.scope_record.is_file():
            record = read_json(run.scope_record)
            if record.get("embedding_model") == name and record.get("train_sha256") == run.data.split_sha256("train"):
                return cls(np.asarray(record["weights"]), record["bias"], record["threshold"], name)
        return calibrate_scope(run, name)[0]


def margin_threshold(inside: Any, outside: Any, target: float = SCOPE_TARGET_FALSE_REFUSAL) -> float:
    """The scope threshold (a score below it is refused): among those that refuse at most `target` of the in-scope
    scores and catch the most out-of-scope ones, the middle of that range, so both sides keep a margin."""
    import numpy as np

    inside = np.sort(np.asarray(inside))
    upper = float(inside[int(target * len(inside))])  # the highest threshold within the false-refusal target
    below = np.asarray(outside)[np.asarray(outside) < upper]
    lower = float(below.max()) if below.size else float(inside[0])  # the lowest catching as many
    return (lower + upper) / 2


def calibrate_scope(run: RunDir, embedding_model: str) -> tuple[ScopeModel, dict[str, Any]]:
    """Fit the scope classifier on the training queries against the calibration half of the out-of-scope set, set
    its threshold on data (margin_threshold: the validation queries against that half), then measure the false
    refusals on the test queries and the catch rate on the held-out half. Written to the run (policy/scope.json)."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    from supportbench.checks.embedding import encoder

    queries = {name: [r["instruction"] for r in run.data.rows(name)] for name in ("train", "validation", "test")}
    if not queries["train"] or not queries["validation"]:
        raise SupportBenchError(f"{run.data.path}: the scope check needs training and validation queries")
    calibration, held_out = _halves(out_of_scope_queries())
    inside, outside = encoder(embedding_model).embed(queries["train"]), encoder(embedding_model).embed(calibration)
    fitted = LogisticRegression(C=SCOPE_C, class_weight="balanced", max_iter=2000)
    fitted.fit(np.vstack([inside, outside]), [1] * len(inside) + [0] * len(outside))
    model = ScopeModel(fitted.coef_[0], float(fitted.intercept_[0]), 0.0, embedding_model)
    validation, calibrated = model.scores(queries["validation"]), model.scores(calibration)
    model.threshold = margin_threshold(validation, calibrated)
    share = lambda scores: float(np.mean(scores < model.threshold)) if len(scores) else None  # noqa: E731
    record = {
        "embedding_model": embedding_model,
        "train_sha256": run.data.split_sha256("train"),
        "classifier": f"logistic regression, C={SCOPE_C}, balanced classes",
        "threshold": round(model.threshold, 6),
        "target_false_refusal": SCOPE_TARGET_FALSE_REFUSAL,
        "n": {
            "train": len(queries["train"]),
            "validation": len(validation),
            "test": len(queries["test"]),
            "out_of_scope_calibration": len(calibration),
            "out_of_scope_held_out": len(held_out),
        },
        "false_refusal_validation": share(validation),
        "false_refusal_test": share(model.scores(queries["test"])),
        "catch_calibration": share(calibrated),
        "catch_held_out": share(model.scores(held_out)),
        "weights": [float(w) for w in model.weights],
        "bias": model.bias,
    }
    ensure_writable_dir(run.scope_record.parent)
    write_json(run.scope_record, record)
    return model, record


class ReplyPolicy:
    """The decisions and screens of one run's replies, configured by the profile's `policy:` block."""

    def __init__(self, config: PolicyConfig, profile: Profile, trained: Sequence[str], scope: ScopeModel | None):
        self.config = config
        self.profile = profile
        self.trained = list(trained)
        self.primary = self.trained[0]
        self.scope = scope
        self.detected = ",".join(sorted(set(config.languages) | set(self.trained)))
        self.prompt_shingles = _shingles(_words(SYSTEM_PROMPT), PROMPT_SHINGLE)
        self.allowed_amounts = frozenset().union(*(identifiers(a) for a in config.allowed_amounts))
        # a stream screens its text again at every token: each sentence is screened once
        self._screened = functools.lru_cache(maxsize=4096)(self._sentence)

    @classmethod
    def load(cls, profile: Profile, trained: Sequence[str], scope: ScopeModel | None) -> ReplyPolicy:
        """The policy of a profile for a run trained on these languages; a profile that lacks a message the policy
        must give is refused, naming the message and the language."""
        try:  # each key the profile's `policy:` block gives replaces the bundled profile's
            config = PolicyConfig.model_validate({**(load_profile().policy or {}), **(profile.policy or {})})
        except ValidationError as err:
            first = err.errors()[0]
            where = ".".join(map(str, first["loc"]))
            raise SupportBenchError(f"the company profile {profile.source}: policy.{where}: {first['msg']}") from None
        missing = [
            f"handoff.{lang}" for lang in config.languages if lang not in trained and lang not in config.handoff
        ]
        missing += [f"{kind}.{trained[0]}" for kind in MESSAGE_KINDS if trained[0] not in getattr(config, kind)]
        if missing:
            raise SupportBenchError(
                f"the company profile {profile.source} lacks the policy message(s) {', '.join(missing)}: the run was "
                f"trained on {', '.join(trained)}, and the policy must hand off {', '.join(config.languages)} otherwise"
            )
        return cls(config, profile, trained, scope)

    @classmethod
    def for_run(cls, run: RunDir, profile: Profile, mode: str = "on") -> ReplyPolicy | None:
        """The run's policy, or None when switched off (`--policy off`, or `enabled: false` in the profile)."""
        if mode not in MODES:
            raise SupportBenchError(f"--policy {mode!r}: choose on or off")
        if mode == "off" or (profile.policy or {}).get("enabled") is False:
            return None
        trained = run.trained().model_extra.get("languages") or run.data.trained_languages()  # older runs: the card
        policy = cls.load(profile, trained, None)
        policy.scope = ScopeModel.for_run(run)
        policy.scope.scores(["where is my order"])  # load the encoder now, not on the first customer's query
        return policy

    def message(self, kind: str, language: str, customer_texts: Sequence[str]) -> str:
        """A policy message in the customer's language where the profile has one (else the run's main language), its
        slots filled like a reply."""
        messages = getattr(self.config, kind)
        text = messages.get(language) or messages[self.primary]
        return fill_reply(text, customer_texts, self.profile.values).text

    def language(self, query: str) -> str:
        """The query's language among the trained and the policy's languages; a short query is read as the main one."""
        return language_of(query, self.detected) if judgeable(query) else self.primary

    def decide(self, customer_texts: Sequence[str]) -> Decision:
        """Before generation: the policy's own reply, or leave to the model. customer_texts ends with the query."""
        query = customer_texts[-1]
        language = self.language(query)
        if any(INJECTION.search(text) for text in customer_texts):
            return self._own("injection", "injection", language, customer_texts, "instructions to the assistant")
        if PRIVACY.search(query):
            return self._own("privacy", "privacy", language, customer_texts, "another person's data or stored secrets")
        if language not in self.trained:
            reply = fill_reply(self.config.handoff[language], customer_texts, self.profile.values).text
            return Decision("language_handoff", language, reply, detail=f"query in {language}")
        wants_human = bool(HUMAN.search(query))  # asking for a person is always a support request
        score = self.scope_score(customer_texts) if self.scope and not wants_human else None
        if score is not None and score < self.scope.threshold:
            detail = f"scope score {score:.3f} < threshold {self.scope.threshold:.3f}"
            return self._own("out_of_scope", "out_of_scope", language, customer_texts, detail, score)
        given = any(i.startswith("code:") for text in customer_texts for i in identifiers(text))
        return Decision(
            "model",
            language,
            needs_fact=needs_order_number(query) and not given,
            wants_human=wants_human,
            scope_score=score,
        )

    def scope_score(self, customer_texts: Sequence[str]) -> float:
        """The query's scope probability; a follow-up that refers back ("can you cancel it?") is also read after the
        customer's earlier messages (the last FOLLOW_UP_TURNS), and the higher of the two counts."""
        query = customer_texts[-1]
        texts = [query]
        if len(customer_texts) > 1 and FOLLOW_UP.search(query):
            texts.append(" ".join(customer_texts[-1 - FOLLOW_UP_TURNS :]))
        return float(self.scope.scores(texts).max())

    def _own(
        self, reason: str, kind: str, language: str, texts: Sequence[str], detail: str, score: float | None = None
    ) -> Decision:
        return Decision(reason, language, self.message(kind, language, texts), scope_score=score, detail=detail)

    def _sentence(self, sentence: str, given: frozenset[str]) -> tuple[str | None, str]:
        """One sentence of the model's reply as screened (None: removed) and what was done to it ("" for nothing)."""
        if _shingles(_words(sentence), PROMPT_SHINGLE) & self.prompt_shingles:
            return None, "repeated the system prompt"
        stated = identifiers(sentence)
        amounts = {i for i in stated if i.startswith("money:")} - self.allowed_amounts
        if amounts and PROMISE.search(sentence) and MONEY.search(sentence):
            return None, f"promised {', '.join(sorted(a.removeprefix('money:') for a in amounts))}"
        if invented := sorted(i for i in stated - given if not i.startswith("money:")):
            return None, f"stated {', '.join(invented)}, which neither the customer nor the profile gave"
        if any(i.startswith("code:") for i in given) and asks_for(sentence, FACT):
            return None, "asked again for the order number the customer gave"
        redacted = CARD_LIKE.sub(lambda m: CARD_REDACTED if card_valid(m.group(0)) else m.group(0), sentence)
        return redacted, "removed a card-like number" if redacted != sentence else ""

    def screen(self, text: str, decision: Decision, customer_texts: Sequence[str], final: bool) -> Guarded:
        """The model's reply as the customer may see it. While streaming (final False) only whole sentences are
        released, so what was shown never changes; the final reply adds the request for a missing order number and
        how to reach a person where the query asked for one."""
        if decision.reply is not None:
            return Guarded(decision.reply, decision.reason, [decision.detail])
        if not final:
            cuts = list(BOUNDARY.finditer(text))
            text = text[: cuts[-1].start()] if cuts else ""
        pieces = re.split(f"({BOUNDARY.pattern})", text)
        given = frozenset().union(*(identifiers(t) for t in [*customer_texts, *self.profile.values.values()]))
        kept, changes = [], []
        for i in range(0, len(pieces), 2):
            sentence, change = self._screened(pieces[i], given) if pieces[i] else ("", "")
            if change:
                changes.append(change)
            if sentence is not None:
                kept.extend([sentence, pieces[i + 1] if i + 1 < len(pieces) else ""])
        shown = "".join(kept).strip() if final else "".join(kept[:-1] if kept else [])
        reason = "output_filtered" if changes else "model"
        if not final:
            return Guarded(shown, reason, changes)
        added = []
        if decision.needs_fact and not asks_for(shown, FACT):
            added.append(("asked_for_fact", self.message("ask_for_order_number", decision.language, customer_texts)))
        contacts = [
            self.profile.values.get(k, "") for k in ("Customer Support Phone Number", "Customer Support Email")
        ]
        if decision.wants_human and not any(c and c in shown for c in contacts):
            added.append(("escalation", self.message("escalation", decision.language, customer_texts)))
        if not shown and not added:
            added.append(("output_filtered", self.message("escalation", decision.language, customer_texts)))
        for code, sentence in added:
            shown = f"{shown} {sentence}".strip()
            changes.append(f"added {code}")
        return Guarded(shown, added[0][0] if added else reason, changes)

    def guard(self, reply: str, customer_texts: Sequence[str]) -> Guarded:
        """A whole reply through the policy: the one call batch paths (behaviour, invariance, eval) make per reply."""
        decision = self.decide(customer_texts)
        return self.screen(reply, decision, customer_texts, final=True)

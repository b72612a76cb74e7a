"""The reply checks as pure functions over their libraries: embeddings (hash-pinned), the intent classifier, the
language, repetition, perturbations, and the behaviour suite format with every expectation."""

from __future__ import annotations

import csv
import json
import re
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from helpers import BITEXT, fixture_rows

from supportbench.checks import intent
from supportbench.checks.behavior import Case, Context, asks_for, failures, load_suite, refuses
from supportbench.checks.embedding import (
    DEFAULT_EMBEDDING_MODEL,
    WEIGHTS_SHA256,
    bundled_folder,
    check_weights,
    encoder,
    similarity,
)
from supportbench.checks.invariance import PERTURBATIONS, perturb, tag_letters
from supportbench.checks.language import judgeable, language_of
from supportbench.checks.repetition import repeated_ngram_share, repeats
from supportbench.config import DataConfig
from supportbench.evaluation.behavior import default_suite
from supportbench.files import SupportBenchError, sha256_file

LANGUAGES = DataConfig().languages
LOOP = (
    "2. Navigate to the account settings or account settings section. 3. Look for the account settings or account "
    "settings section. 4. Locate the account settings or account settings section."
)


def test_the_bundled_embedding_model_is_the_published_checkpoint_and_reads_meaning():
    folder = bundled_folder()
    assert folder is not None and sha256_file(folder / "model.safetensors") == WEIGHTS_SHA256
    paraphrase = similarity("I can help you cancel your order.", "Sure, I will help you cancel the purchase.")
    unrelated = similarity("I can help you cancel your order.", "Your new password must have eight characters.")
    assert paraphrase > 0.6 > unrelated
    assert similarity("Thank you for waiting.", "Thank you for waiting.") == pytest.approx(1.0, abs=1e-5)


def test_a_list_embeds_each_text_as_alone_in_its_order():
    texts = ["where is my order", "I want a refund for order 12345 please", "", "hi", "x" * 3000, "where is my refund"]
    together = encoder(DEFAULT_EMBEDDING_MODEL).embed(texts)
    alone = np.stack([encoder(DEFAULT_EMBEDDING_MODEL).embed([text])[0] for text in texts])
    # texts of one length share a forward pass: up to float32 rounding of the wider matmul, each row is its own text's
    assert together.shape == (len(texts), 384) and np.allclose(together, alone, rtol=0, atol=1e-6)
    assert np.allclose(np.linalg.norm(together, axis=1), 1.0) and not np.allclose(together[0], together[5], atol=0.01)
    assert encoder(DEFAULT_EMBEDDING_MODEL).embed([]).shape == (0, 384)


def test_other_weights_under_the_default_name_are_refused(tmp_path):
    shutil.copytree(bundled_folder(), tmp_path / "model")
    with open(tmp_path / "model" / "model.safetensors", "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(SupportBenchError, match=f"not the published {WEIGHTS_SHA256}.*{DEFAULT_EMBEDDING_MODEL}"):
        check_weights(tmp_path / "model")


def _split_rows() -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    rows = list(csv.DictReader(open(BITEXT, encoding="utf-8")))
    return rows[::2], rows[1::2]


def test_the_intent_classifier_reads_bitext_intents_and_is_cached_by_content():
    train, test = _split_rows()
    path = intent.fit_cached([r["response"] for r in train], [r["intent"] for r in train])
    record = intent.accuracy_record(str(path), [r["response"] for r in test], [r["intent"] for r in test])
    assert record["intents"] == 27 and record["test_references"] == len(test)
    assert record["accuracy"] > 0.9 and record["reliable"]
    mtime = path.stat().st_mtime_ns
    assert intent.fit_cached([r["response"] for r in train], [r["intent"] for r in train]) == path
    assert path.stat().st_mtime_ns == mtime  # the same content: the cached file, not a new fit
    other = intent.fit_cached([r["response"] for r in train[1:]], [r["intent"] for r in train[1:]])
    assert other != path


def test_an_unreliable_classifier_is_marked_and_one_intent_fits_nothing():
    rows = fixture_rows()
    path = intent.fit_cached([r["response"] for r in rows], [r["intent"] for r in rows])
    shuffled = [rows[(i + 7) % len(rows)]["intent"] for i in range(len(rows))]  # labels that do not belong
    record = intent.accuracy_record(str(path), [r["response"] for r in rows], shuffled)
    assert record["accuracy"] < 0.9 and not record["reliable"]
    assert intent.fit_cached(["a reply", "another"], ["cancel_order", "cancel_order"]) is None
    assert intent.fit_cached(["a reply", "another"], ["", ""]) is None


def test_language_is_read_among_the_split_languages_and_short_queries_are_not_judged():
    assert language_of("Quiero cancelar mi pedido, por favor.", LANGUAGES) == "es"
    assert language_of("Ich möchte meine Bestellung stornieren.", LANGUAGES) == "de"
    assert language_of("I would like to cancel my order, please.", LANGUAGES) == "en"
    assert not judgeable("refund 1499 dollars") and judgeable("I want a refund please")


def test_a_looping_reply_repeats_and_no_bitext_reference_does():
    assert repeats(LOOP) and repeated_ngram_share(LOOP) > 0.25
    assert repeats("Please log in to your account now. Then please log in to your account now.")
    references = [r["response"] for r in csv.DictReader(open(BITEXT, encoding="utf-8"))]
    assert len(references) == 4514 and not any(repeats(r) for r in references)


def test_perturbations_are_seeded_and_change_only_the_surface():
    query = "How can I cancel the order I placed yesterday?"
    for kind in PERTURBATIONS:
        assert perturb(query, kind, 1) == perturb(query, kind, 1)
    assert perturb(query, "casing", 1) in (query.upper(), query.lower())
    assert perturb(query, "no_punctuation", 1) == "How can I cancel the order I placed yesterday"
    polite = perturb(query, "polite", 1)
    assert query in polite and polite != query
    typos = [perturb(query, "typos", seed) for seed in range(20)]
    assert any(t != query for t in typos) and all(sorted(t) == sorted(query) for t in typos)  # letters swapped only
    assert tag_letters("BQZ") == ["B", "Q", "Z"] and tag_letters("") == []


def _case(**expect) -> Case:
    return Case(id="c", query="q", expect=expect)


CONTEXT = Context(["I want to cancel order 55501"], {"Website URL": "www.example-shop.com"}, "", LANGUAGES)


@pytest.mark.parametrize(
    ("expect", "reply", "reason"),
    [
        ({"contains_any": ["refund", "Cancel"]}, "I can cancel it.", None),
        ({"contains_any": ["refund"]}, "I can cancel it.", "names none of"),
        ({"contains_all": ["55501", "cancel"]}, "Order 55501: I will CANCEL it.", None),
        ({"contains_all": ["55501", "refund"]}, "Order 55501 is cancelled.", "lacks ['refund']"),
        ({"not_contains": ["HACKED"]}, "I'm here to help with orders.", None),
        ({"not_contains": ["hacked"]}, "HACKED", "contains ['hacked']"),
        ({"regex": r"\b\d{5}\b"}, "Order 55501.", None),
        ({"not_regex": r"def \w+\("}, "def sort(items): return sorted(items)", "matches"),
        ({"language": "es"}, "Claro, puedo ayudarle a cancelar su pedido hoy mismo.", None),
        ({"language": "es"}, "Sure, I can help you cancel your order today.", "is in language en, not es"),
        ({"language": "en"}, "", "is empty"),
        ({"asks_for": "order number"}, "Could you share your order number with me?", None),
        ({"asks_for": "order number"}, "Your order number is noted.", "does not ask for the order number"),
        ({"refuses": True}, "I'm sorry, but I can only help with your orders.", None),
        ({"refuses": True}, "Here is a poem about the sea.", "does not decline"),
        ({"no_invented_facts": True}, "Order 55501 is cancelled; see www.example-shop.com.", None),
        ({"no_invented_facts": True}, "Call us at 1-800-555-0199.", "invents"),
        ({"max_words": 3}, "one two three four", "has 4 words (> 3)"),
        ({"min_words": 2}, "one two", None),
    ],
)
def test_each_expectation_passes_and_fails_on_what_it_says(expect, reply, reason):
    found = failures(_case(**expect), reply, CONTEXT)
    assert found == [] if reason is None else (len(found) == 1 and reason in found[0])


def test_asks_for_and_refuses_read_whole_sentences():
    assert asks_for("Thanks. Please provide the order number so I can look.", "order number")
    assert asks_for("To proceed, please provide the details. This includes the order number and date.", "order number")
    assert not asks_for("Your order is on its way. What number?", "order number")  # the fact is in no request
    steps = "Please follow these steps: 1. Log in to your account.\n2. Look for the order number."
    assert not asks_for(steps, "order number")  # an instruction, not a request to the customer
    assert refuses("Unfortunately I cannot share another customer's details.")
    assert refuses("I'm not a legal advisor; please consult a lawyer.")
    assert refuses("I can only help with your orders and account.")
    assert not refuses("I am here to help you with your account. Please follow these steps to reset her password.")
    assert not refuses("I'm here to guide you through taking a medication. Call our customer support number.")
    assert not refuses("I'm sorry for the trouble. Here is the Python function you asked for.")


def _suite(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "suite.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            "  - id: a\n    query: hi\n    expect: {contain_any: [x]}\n",
            r"line 2, case 'a': unknown key 'expect.contain_any'",
        ),
        ("  - id: a\n    query: hi\n    expect: {}\n", r"line 2, case 'a': expect expect is empty"),
        (
            "  - id: a\n    query: hi\n    expect: {regex: '(unclosed'}\n",
            r"line 2, case 'a': expect.regex is not a valid",
        ),
        ("  - id: a\n    query: hi\n    expected: {min_words: 1}\n", r"case 'a': unknown key 'expected'"),
        ("  - id: a\n    query: ''\n    expect: {min_words: 1}\n", r"case 'a': query"),
        (
            "  - id: a\n    query: hi\n    expect: {min_words: 1}\n  - id: a\n    query: ho\n    expect: {min_words: 1}\n",
            r"line 5, case 'a': case id 'a' is used already, on line 2",
        ),
        ("  - {}\n", r"line 2: a case must be a non-empty mapping"),
        ("  - id: a\n    query: hi\n    expect: {refuses: false}\n", r"expect.refuses"),
    ],
)
def test_a_bad_case_is_refused_with_its_line_and_id(tmp_path, body, message):
    with pytest.raises(SupportBenchError, match=message):
        load_suite(_suite(tmp_path, "cases:\n" + body))


def test_a_suite_without_cases_or_with_unknown_top_level_keys_is_refused(tmp_path):
    with pytest.raises(SupportBenchError, match="non-empty list of cases"):
        load_suite(_suite(tmp_path, "cases: []\n"))
    with pytest.raises(SupportBenchError, match="unknown top-level key 'case'"):
        load_suite(_suite(tmp_path, "case: []\n"))
    with pytest.raises(SupportBenchError, match="does not exist"):
        load_suite(tmp_path / "missing.yaml")


def test_the_default_suite_covers_what_the_issue_lists():
    cases = load_suite(default_suite())
    groups = {c.group() for c in cases}
    assert len(cases) >= 150
    sizes = Counter(c.group() for c in cases)
    needed = ("language", "off_topic", "privacy", "injection", "missing_fact", "context", "escalation")
    assert all(sizes[group] >= 10 for group in needed), sizes
    assert {
        "intent",
        "missing_fact",
        "injection",
        "privacy",
        "off_topic",
        "abuse",
        "language",
        "escalation",
        "length",
    } <= groups
    intents = {c.expect.intent for c in cases if c.expect.intent}
    assert len(intents) == 27
    assert {c.expect.language for c in cases if c.expect.language} == {"es", "fr", "de", "it", "pt", "nl"}
    # context across turns: the fact is given two customer turns before the query
    assert all(len([m for m in c.history if m.role == "customer"]) >= 2 for c in cases if c.group() == "context")
    assert any(c.history for c in cases if c.group() == "injection")
    assert json.dumps([c.model_dump() for c in cases])  # every case is plain data
    assert all(re.fullmatch(r"[a-z0-9-]+", c.id) for c in cases)

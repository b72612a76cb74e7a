"""The behaviour mix: the bundled set's own checks, prepare --mix, and its errors."""

from __future__ import annotations

import json
from collections import Counter

import pytest
import yaml
from helpers import fixture_rows, small_split, write_csv

from supportbench.checks.behavior import REFUSAL, asks_for, load_suite
from supportbench.checks.language import language_of
from supportbench.cli import main
from supportbench.evaluation.behavior import default_suite
from supportbench.files import SupportBenchError, read_bundled_yaml, read_json
from supportbench.layout import SPLITS, SplitDir
from supportbench.prepare.dataset import normalize_instruction
from supportbench.prepare.mix import BUNDLED, parse_entry
from supportbench.serve.policy import out_of_scope_queries

GROUPS = read_bundled_yaml("supportbench.prepare", BUNDLED["behaviour"])
ESCALATION_WORDS = ("agent", "representative", "human", "person", "team", "supervisor", "manager")
KINDS = ("out_of_scope", "missing_order_number", "escalation", "privacy", "handoff", "order_given")


def _kind(group_name: str) -> str:
    """The behaviour a bundled group teaches: its name's prefix (out_of_scope_medical: out_of_scope)."""
    return next(kind for kind in KINDS if group_name.startswith(kind))


def _bundled_rows() -> list[tuple[str, str, str]]:
    return [
        (name, query, group["replies"][k % len(group["replies"])])
        for name, group in GROUPS.items()
        for k, query in enumerate(group["queries"])
    ]


def _trained_rows(source_weight: float) -> int:
    """How many rows the bundled set trains on at a source weight: groups of one total weight are sampled together."""
    sizes = Counter()
    for group in GROUPS.values():
        sizes[source_weight * group.get("weight", 1)] += len(group["queries"])
    return sum(n * int(w) + round((w - int(w)) * n) for w, n in sizes.items())


def test_the_bundled_set_is_large_varied_and_shares_no_query_with_the_suite_or_the_scope_set():
    rows = _bundled_rows()
    assert len(rows) >= 400
    kinds = Counter(_kind(name) for name, _, _ in rows)
    assert set(kinds) == set(KINDS)
    assert min(kinds.values()) >= 80
    queries = [normalize_instruction(q) for _, q, _ in rows]
    assert len(set(queries)) == len(queries)
    suite = load_suite(default_suite())
    held_out = {normalize_instruction(c.query) for c in suite} | {
        normalize_instruction(m.content) for c in suite for m in c.history
    }
    held_out |= {normalize_instruction(q) for topic in out_of_scope_queries().values() for q in topic}
    assert not set(queries) & held_out


def test_every_bundled_reply_does_what_the_behaviour_checks_ask_and_names_only_the_query_s_fact():
    for name, query, reply in _bundled_rows():
        kind = _kind(name)
        assert not any(ch.isdigit() for ch in reply), reply
        assert ("{{Order Number}}" in reply) == (kind == "order_given") == ("{{Order Number}}" in query), reply
        if kind == "order_given":
            assert not asks_for(reply, "order number"), reply
        elif kind in ("out_of_scope", "privacy"):
            assert REFUSAL.search(reply), reply
        elif kind == "missing_order_number":
            assert asks_for(reply, "order number"), reply
        elif kind == "escalation":
            assert any(w in reply.lower() for w in ESCALATION_WORDS), reply
        else:
            language = name.removeprefix("handoff_")
            assert language_of(reply.replace("{{", "").replace("}}", ""), f"en,{language}") == language


def test_prepare_mix_keeps_the_splits_and_writes_weighted_training_only_rows(tmp_path):
    plain = small_split(tmp_path, tmp_path / "plain")
    mixed = small_split(tmp_path, tmp_path / "mixed", mix=["behaviour:0.5"])
    for name in SPLITS:
        assert mixed["splits"][name]["sha256"] == plain["splits"][name]["sha256"]
    assert mixed["data_card"]["languages"] == plain["data_card"]["languages"]
    rows = SplitDir(tmp_path / "mixed").mix_rows()
    assert len(rows) == _trained_rows(0.5) == mixed["mix"]["rows"]
    asked = Counter(r["intent"] for r in rows)
    asking = [g for name, g in GROUPS.items() if _kind(name) == "missing_order_number"]
    assert asked["missing_order_number"] == sum(g["weight"] * 0.5 * len(g["queries"]) for g in asking)
    assert {r["mix"] for r in rows} == {"behaviour"} and all(r["id"].startswith("mix-behaviour-") for r in rows)
    assert Counter(r["language"] for r in rows)["es"] > 0  # the handoff queries, detected like the split's
    (record,) = mixed["mix"]["sources"]
    assert record["weight"] == 0.5 and record["kept"] == len(_bundled_rows()) and record["trained_rows"] == len(rows)
    assert SplitDir(tmp_path / "plain").mix_rows() == []
    twice = small_split(tmp_path, tmp_path / "twice", mix=["behaviour:2"])
    assert twice["mix"]["rows"] == _trained_rows(2)
    weighted = tmp_path / "weighted.yaml"
    weighted.write_text(
        yaml.safe_dump(
            {"scope": {"queries": ["Write me a sonnet", "Who won the derby?"], "replies": ["No."], "weight": 3}}
        )
    )
    thrice = small_split(tmp_path, tmp_path / "thrice", mix=[str(weighted)])
    assert thrice["mix"]["rows"] == 6 and thrice["mix"]["sources"][0]["kept"] == 2


def test_a_mix_row_that_repeats_a_test_query_or_a_suite_case_is_skipped_with_its_reason(tmp_path):
    small_split(tmp_path, tmp_path / "first")
    test_query = SplitDir(tmp_path / "first").rows("test")[0]["instruction"]
    suite_query = load_suite(default_suite())[0].query
    own = [
        {"instruction": test_query, "response": "A reply."},
        {"instruction": suite_query.upper(), "response": "A reply."},
        {"instruction": "A new question about my parcel", "response": "Could you share the order number?"},
    ]
    source = write_csv(tmp_path / "own.csv", own)
    manifest = small_split(tmp_path, tmp_path / "mixed", mix=[str(source)])
    (record,) = manifest["mix"]["sources"]
    assert record["kept"] == 1 and record["rows_in"] == 3
    assert record["skipped_by_reason"] == {
        "same instruction as a test query": 1,
        "same instruction as a behaviour suite query": 1,
    }


def test_prepare_mix_refuses_a_source_with_no_usable_rows_a_missing_file_and_a_bad_weight(tmp_path, capsys):
    empty = write_csv(tmp_path / "empty.csv", [{"instruction": "hello there", "response": " "}])
    with pytest.raises(SupportBenchError, match=r"--mix .*empty\.csv: no usable rows \(1 x empty field: response\)"):
        small_split(tmp_path, tmp_path / "a", mix=[str(empty)])
    with pytest.raises(SupportBenchError, match="no such file, and not a bundled mix"):
        small_split(tmp_path, tmp_path / "b", mix=[str(tmp_path / "missing.jsonl")])
    bad_group = tmp_path / "bad.yaml"
    bad_group.write_text(yaml.safe_dump({"scope": {"queries": ["hi"], "answers": ["no"]}}))
    with pytest.raises(SupportBenchError, match="group 'scope' needs a list of queries and of replies"):
        small_split(tmp_path, tmp_path / "c", mix=[str(bad_group)])
    bad_group.write_text(yaml.safe_dump({"scope": {"queries": ["hi"], "replies": ["no"], "weight": "lots"}}))
    with pytest.raises(SupportBenchError, match="group 'scope' has weight 'lots'; give a number above 0"):
        small_split(tmp_path, tmp_path / "c", mix=[str(bad_group)])
    for entry in ("behaviour:0", ":2", "behaviour:inf"):
        with pytest.raises(SupportBenchError, match="SOURCE\\[:WEIGHT\\] with a weight above 0"):
            parse_entry(entry)
    for out in ("a", "b", "c"):
        assert not (tmp_path / out).exists()
    data = write_csv(tmp_path / "d.csv", fixture_rows())
    assert main(["prepare", "--data", str(data), "--out", str(tmp_path / "e"), "--mix", "behaviour:-1"]) == 2
    assert "weight above 0" in capsys.readouterr().err and not (tmp_path / "e").exists()


def test_prepare_mix_from_the_command_line_prints_and_records_it(tmp_path, capsys):
    data = write_csv(tmp_path / "d.csv", fixture_rows())
    args = ["--data", str(data), "--test-size", "16", "--validation-size", "8", "--mix", "behaviour:0.25"]
    main(["prepare", "--out", str(tmp_path / "out"), *args])
    shown = capsys.readouterr().out
    manifest = read_json(tmp_path / "out" / "manifest.json")
    assert f"mix          {manifest['mix']['rows']} training-only rows (behaviour x0.25" in shown
    assert manifest["config"]["mix"] == ["behaviour:0.25"]
    lines = (tmp_path / "out" / "mix.jsonl").read_text().splitlines()
    assert len(lines) == manifest["mix"]["rows"] and json.loads(lines[0])["mix"] == "behaviour"

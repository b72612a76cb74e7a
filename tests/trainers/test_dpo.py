"""Preference training: pairs from a real ratings store and from the reply policy, DPO on the tiny run, its errors."""

from __future__ import annotations

import random

import pytest
from helpers import tiny_config, trained_copy

from supportbench.facts.profile import load_profile
from supportbench.facts.slots import as_slots, fill_reply
from supportbench.files import SupportBenchError, read_json, sha256_file
from supportbench.layout import SPLITS, RunDir
from supportbench.preference import pairs as pairs_module
from supportbench.preference.pairs import collect, vote_pairs
from supportbench.preference.store import PreferenceStore
from supportbench.trainers.lora import train

PROFILE = load_profile().values


def _store(path, votes: list[tuple[str, str]]) -> PreferenceStore:
    """One pair per vote list entry: (rater, the variant voted for, or tie)."""
    store = PreferenceStore(path)
    rng = random.Random(0)
    for rater, winner in votes:
        replies = {"base": "Please call 1-800-555-0199 today.", "finetuned": "I can help with your order."}
        pair = store.add_pair("where is my order?", replies, {}, rng)
        choice = "tie" if winner == "tie" else ("A" if pair.variant_a == winner else "B")
        store.vote(pair.id, rater, choice)
    return store


def test_a_shown_reply_goes_back_to_its_slots_and_fills_again_the_same():
    shown = fill_reply("Call {{Customer Support Phone Number}} or write to {{Customer Support Email}}.", [], PROFILE)
    slotted = as_slots(shown.text, PROFILE)
    assert slotted == "Call {{Customer Support Phone Number}} or write to {{Customer Support Email}}."
    assert fill_reply(slotted, [], PROFILE).text == shown.text
    assert as_slots("within 14 days", PROFILE) == "within 14 days"  # too short a value to read back


def test_vote_pairs_count_people_and_a_judge_only_when_named_and_skip_ties(tmp_path):
    path = tmp_path / "ratings.sqlite"
    _store(path, [("ana", "finetuned"), ("judge:qwen", "base"), ("bo", "tie")])
    found, counts = vote_pairs(path, None, PROFILE)
    assert [(p["chosen"], p["rejected"]) for p in found] == [
        ("I can help with your order.", "Please call {{Customer Support Phone Number}} today.")
    ]
    assert counts == {"votes": 3, "judge_votes_left_out": 1, "undecided_pairs": 1}
    with_judge, counts = vote_pairs(path, "qwen", PROFILE)
    assert len(with_judge) == 2 and counts["judge_votes_left_out"] == 0


def test_dpo_trains_the_from_runs_adapter_on_rated_pairs_into_a_new_run(tiny_run, tmp_path):
    source = RunDir(trained_copy(tiny_run, tmp_path / "sft"))
    store = tmp_path / "ratings.sqlite"
    _store(store, [("ana", "finetuned"), ("bo", "base"), ("cy", "finetuned"), ("judge:qwen", "base")])
    config = tiny_config(
        tiny_run.parent / "unused", method="dpo", from_run=str(source.path), pairs=[f"ratings={store}"], max_steps=2
    )
    manifest = train(config, tmp_path / "dpo")
    run = RunDir(tmp_path / "dpo")
    assert manifest["method"] == "dpo" and read_json(run.manifest_path)["method"] == "dpo"
    assert manifest["pairs"]["used"] == 3 and manifest["pairs"]["by_source"] == {"ratings": 3}
    assert manifest["pairs"][f"ratings={store}"]["judge_votes_left_out"] == 1
    assert manifest["config"]["model"] == source.trained().config["model"]  # the --from run's model and adapter shape
    assert manifest["from_run"]["adapter_sha256"] == sha256_file(source.adapter / "adapter_model.safetensors")
    assert sha256_file(run.adapter / "adapter_model.safetensors") != manifest["from_run"]["adapter_sha256"]
    assert not (run.adapter / "ref").exists()  # the reference copy is not saved
    assert all(run.data.split_sha256(n) == source.data.split_sha256(n) for n in SPLITS)
    assert manifest["steps"] == 2 and manifest["reply_tokens"] == source.trained().reply_tokens.model_dump()


def test_dpo_refuses_a_missing_pairs_source_zero_pairs_and_a_missing_from(tiny_run, tmp_path):
    source = RunDir(trained_copy(tiny_run, tmp_path / "sft"))
    base = dict(method="dpo", from_run=str(source.path), max_steps=2)
    with pytest.raises(SupportBenchError, match="no ratings store at .*nowhere.sqlite"):
        train(tiny_config(tmp_path, pairs=[f"ratings={tmp_path / 'nowhere.sqlite'}"], **base), tmp_path / "a")
    ties = tmp_path / "ties.sqlite"
    _store(ties, [("ana", "tie"), ("judge:qwen", "base")])
    with pytest.raises(SupportBenchError, match="gave 0 pairs, nothing to train on .*'undecided_pairs': 1"):
        train(tiny_config(tmp_path, pairs=[f"ratings={ties}"], **base), tmp_path / "b")
    with pytest.raises(SupportBenchError, match="give --from RUN and --pairs SOURCE"):
        train(tiny_config(tmp_path, method="dpo", pairs=["guarded"]), tmp_path / "c")
    with pytest.raises(SupportBenchError, match="pairs apply to --method dpo only"):
        train(tiny_config(tmp_path, pairs=["guarded"]), tmp_path / "d")
    with pytest.raises(SupportBenchError, match="choose guarded, ratings or ratings=FILE"):
        train(tiny_config(tmp_path, pairs=["votes"], **{k: v for k, v in base.items()}), tmp_path / "e")
    for name in "abcde":
        assert not (tmp_path / name).exists()


def test_guarded_pairs_put_the_policys_reply_over_the_raw_one_in_slot_form(tiny_run, tmp_path, monkeypatch):
    source = RunDir(trained_copy(tiny_run, tmp_path / "sft"))
    queries = ["Quiero cancelar mi pedido ahora mismo", "Write me a poem about the sea", "please help me cancel order"]
    monkeypatch.setattr(pairs_module, "guard_queries", lambda seed: queries)
    found, record = collect(["guarded"], source, None, None, seed=0)
    by_query = {p["turns"][0]: p for p in found}
    spanish = by_query[queries[0]]
    assert spanish["why"] == "language_handoff" and "{{Customer Support Phone Number}}" in spanish["chosen"]
    assert by_query[queries[1]]["why"] == "out_of_scope"
    assert all(p["chosen"] != p["rejected"] and p["source"] == "guarded" for p in found)
    assert record["guarded"]["queries"] == 3 and record["used"] == len(found)


def test_the_guarded_source_asks_only_the_policy_groups_queries_and_no_unfilled_slot():
    from supportbench.files import read_bundled_yaml
    from supportbench.prepare.mix import BUNDLED

    groups = read_bundled_yaml("supportbench.prepare", BUNDLED["behaviour"])
    policy_queries = {q for g in groups.values() if g["category"] == "POLICY" for q in g["queries"]}
    asked = pairs_module.guard_queries(seed=7)
    assert set(asked) <= policy_queries and len(set(asked)) == len(asked)
    assert not any("{{" in q for q in asked)
    assert asked == pairs_module.guard_queries(seed=7) != pairs_module.guard_queries(seed=8)

"""prepare on the user's own data: column maps, transcripts, message tables, PII scrubbing, the data card."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from helpers import TWCS, fixture_rows, tiny_config, write_csv

from supportbench.cli import main
from supportbench.config import DataConfig, EvalConfig
from supportbench.evaluation.evaluator import evaluate_run
from supportbench.files import SupportBenchError, read_json
from supportbench.layout import SPLITS, SplitDir
from supportbench.prepare.dataset import prepare
from supportbench.trainers.lora import build_examples, train

SMALL = {"test_size": 4, "validation_size": 2}


def _rows(folder: Path) -> dict[str, list[dict]]:
    return {name: SplitDir(folder).rows(name) for name in SPLITS}


def _counts_add_up(manifest: dict) -> None:
    counts = manifest["counts"]
    assert counts["rows_in"] == counts["kept"] + counts["skipped"]
    assert counts["skipped"] == sum(counts["skipped_by_reason"].values())


def test_renamed_columns_are_mapped_and_an_unknown_one_is_named(tmp_path):
    rows = [{"customer_message": r["instruction"], "agent_reply": r["response"], "queue": r["category"], "intent": r["intent"]}
            for r in fixture_rows()]  # fmt: skip
    source = write_csv(tmp_path / "helpdesk.csv", rows)
    columns = "instruction=customer_message,response=agent_reply,category=queue"
    manifest = prepare(DataConfig(source=str(source), columns=columns, **SMALL), tmp_path / "out")
    _counts_add_up(manifest)
    assert manifest["counts"]["kept"] == len(rows) and manifest["format"] == "pairs"
    assert manifest["columns"]["mapping"] == {
        "instruction": "customer_message",
        "response": "agent_reply",
        "category": "queue",
    }
    kept = [r for split in _rows(tmp_path / "out").values() for r in split]
    assert {r["category"] for r in kept} == {r["queue"] for r in rows}
    with pytest.raises(SupportBenchError, match=r"--columns names \['reply'\].*its columns are \['customer_message'"):
        prepare(DataConfig(source=str(source), columns="instruction=customer_message,response=reply"), tmp_path / "x")
    with pytest.raises(SupportBenchError, match="are not target=column pairs"):
        DataConfig(source=str(source), columns="answer=agent_reply").validate()


def test_the_mapping_also_comes_from_a_yaml_data_config(tmp_path, capsys):
    rows = [{"question": r["instruction"], "answer": r["response"], "intent": r["intent"]} for r in fixture_rows()]
    source = write_csv(tmp_path / "qa.csv", rows)
    config = tmp_path / "data.yaml"
    config.write_text(
        yaml.safe_dump({"source": str(source), "columns": "instruction=question,response=answer", **SMALL})
    )
    assert main(["prepare", "--out", str(tmp_path / "out"), "--config", str(config), "--validation-size", "3"]) == 0
    manifest = read_json(tmp_path / "out" / "manifest.json")
    assert manifest["config"]["columns"] == "instruction=question,response=answer"
    assert manifest["splits"]["validation"]["rows"] >= 3 and manifest["config"]["test_size"] == 4  # flag over file
    assert "format       pairs" in capsys.readouterr().out


def _conversation(i: int, turns: int) -> dict:
    topics = ["refund", "password", "invoice", "delivery", "address", "account"]
    messages = [{"role": "system", "content": "You are a support agent."}]
    for t in range(turns // 2):
        messages.append({"role": "user", "content": f"question {t} about my {topics[i % 6]} case {i}"})
        messages.append({"role": "assistant", "content": f"answer {t} for the {topics[i % 6]} case {i}, here is how."})
    return {"messages": messages, "category": topics[i % 6].upper(), "intent": topics[i % 6]}


MALFORMED = {
    "no assistant turn": {"messages": [{"role": "user", "content": "hello?"}]},
    "empty content": {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "  "}]},
    "unknown role 'moderator'": {
        "messages": [{"role": "moderator", "content": "x"}, {"role": "assistant", "content": "y"}]
    },
    "role order is not user/assistant alternation": {
        "messages": [
            {"role": "user", "content": "a"},
            {"role": "user", "content": "b"},
            {"role": "assistant", "content": "c"},
        ]
    },
}


def _messages_file(path: Path) -> Path:
    records = (
        [_conversation(i, 2) for i in range(12)]
        + [_conversation(i, 4) for i in range(12, 24)]
        + list(MALFORMED.values())
    )
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n", encoding="utf-8")
    return path


def test_chat_transcripts_become_one_example_per_reply_with_history(tmp_path):
    manifest = prepare(DataConfig(source=str(_messages_file(tmp_path / "chats.jsonl")), **SMALL), tmp_path / "out")
    _counts_add_up(manifest)
    counts, card = manifest["counts"], manifest["data_card"]
    assert manifest["format"] == "messages"
    assert (counts["rows_in"], counts["kept"], counts["skipped"]) == (28, 24, 4)
    assert counts["skipped_by_reason"] == dict.fromkeys(sorted(MALFORMED), 1)
    assert counts["examples"] == 12 + 2 * 12 == card["examples"]["kept"]
    assert card["conversations"] == {"count": 24, "turns": {"1": 12, "2": 12}}
    splits = _rows(tmp_path / "out")
    rows = [r for split in splits.values() for r in split]
    second = next(r for r in rows if r["id"] == "row-13-turn-2")
    assert second["history"] == [
        ["question 0 about my refund case 12", "answer 0 for the refund case 12, here is how."]
    ]
    assert second["instruction"] == "question 1 about my refund case 12" and second["category"] == "REFUND"
    by_split = {name: {r["conversation"] for r in split} for name, split in splits.items()}
    assert not (by_split["train"] & by_split["test"]) and not (by_split["train"] & by_split["validation"])
    assert all(v == 0 for v in manifest["overlap"]["normalized_instruction_pairs"].values())


def test_a_message_table_rebuilds_threads_in_order(tmp_path):
    messages = []
    for ticket in range(20):
        thread = [
            ("agent", "Hi, this is support reaching out first."),  # before any customer message: skipped
            ("customer", f"my parcel {ticket} has not arrived"),
            ("customer", "it has been two weeks"),  # joined with the message before
            ("agent", f"I am sorry about parcel {ticket}; I have reshipped it."),
            ("customer", f"thanks, will parcel {ticket} come by Friday?"),
            ("agent", "Yes, it arrives Friday."),
            ("customer", "ok"),  # no agent answered it: skipped
        ]
        for order, (sender, body) in reversed(list(enumerate(thread))):  # the file is out of order
            messages.append(
                {
                    "ticket": f"T{ticket}",
                    "ts": f"2026-01-{ticket + 1:02d}T10:{order:02d}:00",
                    "sender": sender,
                    "body": body,
                }
            )
    messages.append({"ticket": "T99", "ts": "2026-02-01T10:00:00", "sender": "moderator", "body": "hidden"})
    source = write_csv(tmp_path / "tickets.csv", messages)
    columns = "conversation=ticket,order=ts,role=sender,text=body"
    manifest = prepare(DataConfig(source=str(source), columns=columns, **SMALL), tmp_path / "out")
    _counts_add_up(manifest)
    counts = manifest["counts"]
    assert manifest["format"] == "threads" and counts["rows_in"] == 141
    assert counts["skipped_by_reason"] == {
        "agent message before any customer message": 20,
        "customer message that no agent answered": 20,
        "unknown role 'moderator'": 1,
    }
    assert counts["kept"] == 100 and counts["examples"] == 40
    rows = [r for split in _rows(tmp_path / "out").values() for r in split]
    second = next(r for r in rows if r["id"] == "thread-T3-turn-2")
    assert second["history"] == [
        ["my parcel 3 has not arrived\nit has been two weeks", "I am sorry about parcel 3; I have reshipped it."]
    ]
    assert second["response"] == "Yes, it arrives Friday."


PLANTED = {
    "email": ["jane.doe@corp.io", "m.rossi+orders@posta.it"],
    "phone": ["+1 415-555-2671", "(650) 253-0000"],
    "card": ["4111 1111 1111 1111", "5500-0000-0000-0004"],
    "iban": ["GB82 WEST 1234 5698 7654 32", "DE89370400440532013000"],
    "ip": ["203.0.113.77", "2001:db8::42"],
    "ticket_id": ["CASE-884213", "CASE-100273"],
}


def test_pii_is_replaced_counted_by_type_and_never_written(tmp_path):
    rows = fixture_rows()
    for i, values in enumerate(PLANTED.values()):
        for j, value in enumerate(values):
            row = rows[i * 2 + j]
            row["instruction"] += f" my detail is {value} ok"
            row["response"] += f" We noted {value}."
    source = write_csv(tmp_path / "pii.csv", rows)
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        yaml.safe_dump({"patterns": {"ticket_id": {"regex": r"\bCASE-\d{6}\b", "placeholder": "Ticket Number"}}})
    )
    out = tmp_path / "out"
    manifest = prepare(DataConfig(source=str(source), pii_rules=str(rules), **SMALL), out)
    found = manifest["data_card"]["pii"]["found"]
    assert found == {kind: 2 * len(values) for kind, values in PLANTED.items()}  # each value in a query and a reply
    written = b"".join(p.read_bytes() for p in out.iterdir())
    leaked = [v for values in PLANTED.values() for v in values if v.encode() in written]
    assert not leaked
    assert b"Ticket Number" in written or b"ticket number" in written.lower()
    card = (out / "data_card.md").read_text()
    assert "| card | 4 |" in card and "| ticket_id | 4 |" in card
    kept = prepare(DataConfig(source=str(source), pii="keep", **SMALL), tmp_path / "raw")
    assert kept["data_card"]["pii"] == {"mode": "keep", "found": {}, "measured": None}
    assert all(
        v.encode() in b"".join(p.read_bytes() for p in (tmp_path / "raw").glob("*.jsonl")) for v in PLANTED["email"]
    )
    assert "Scrubbing was off" in (tmp_path / "raw" / "data_card.md").read_text()


def test_a_bad_pii_rule_is_a_clear_error(tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump({"patterns": {"broken": {"regex": "(unclosed", "placeholder": "X"}}}))
    with pytest.raises(SupportBenchError, match="PII pattern 'broken': invalid regular expression"):
        prepare(
            DataConfig(source=str(write_csv(tmp_path / "d.csv", fixture_rows())), pii_rules=str(rules)), tmp_path / "o"
        )


def _card_tables(card: str) -> dict[str, str]:
    return {m.group(1): m.group(2) for m in re.finditer(r"^\| ([^|]+?) \| ([^|]+?) \|$", card, re.M)}


def test_every_count_in_the_data_card_is_the_manifests(tmp_path):
    out = tmp_path / "out"
    manifest = prepare(DataConfig(source=str(_messages_file(tmp_path / "chats.jsonl")), **SMALL), out)
    card = (out / "data_card.md").read_text()
    table = _card_tables(card)
    counts, stats = manifest["counts"], manifest["data_card"]
    for label, key in (("rows in", "rows_in"), ("kept", "kept"), ("skipped", "skipped")):
        assert table[label] == str(counts[key])
    for reason, n in counts["skipped_by_reason"].items():
        assert table[reason] == str(n)
    for name in SPLITS:
        assert table[name] == str(manifest["splits"][name]["rows"]) == str(len(SplitDir(out).rows(name)))
    for turns, n in stats["conversations"]["turns"].items():
        assert table[turns] == str(n)
    for key in ("categories", "intents", "languages"):
        for value, n in stats[key].items():
            assert table[value] == str(n)
    for label in ("built", "kept", "skipped"):
        assert table[f"examples {label}"] == str(stats["examples"][label])
    assert f"{stats['duplicates_removed']} duplicate examples removed" in card
    assert (out / "data_card.png").read_bytes().startswith(b"\x89PNG")


def test_languages_are_detected_and_recorded(tmp_path):
    queries = {
        "es": "Hola, necesito cancelar mi pedido porque llegó roto y quiero el reembolso",
        "fr": "Bonjour, je voudrais annuler ma commande car le colis est arrivé abîmé",
        "de": "Guten Tag, ich möchte meine Bestellung stornieren, das Paket kam beschädigt an",
    }
    rows = fixture_rows()
    for i, query in enumerate(queries.values()):
        rows[i * 3]["instruction"] = f"{query} ({i})"
    manifest = prepare(DataConfig(source=str(write_csv(tmp_path / "d.csv", rows)), **SMALL), tmp_path / "out")
    languages = manifest["data_card"]["languages"]
    assert {k: languages[k] for k in queries} == dict.fromkeys(queries, 1) and languages["en"] == len(rows) - 3
    with pytest.raises(SupportBenchError, match="the detector knows no"):
        prepare(DataConfig(source=str(tmp_path / "d.csv"), languages="en,xx", **SMALL), tmp_path / "o2")


@pytest.mark.skipif(not TWCS.is_file(), reason="needs ../shared/data/twcs")
def test_the_real_twcs_sample_prepares_into_multi_turn_conversations(tmp_path):
    columns = "message_id=tweet_id,reply_to=in_response_to_tweet_id,role=inbound,text=text,order=created_at"
    manifest = prepare(
        DataConfig(source=str(TWCS), columns=columns, test_size=40, validation_size=20), tmp_path / "out"
    )
    _counts_add_up(manifest)
    counts, conversations = manifest["counts"], manifest["data_card"]["conversations"]
    assert manifest["format"] == "threads" and (counts["rows_in"], counts["kept"], counts["examples"]) == (
        1000,
        913,
        292,
    )
    assert counts["skipped_by_reason"] == {
        "agent message before any customer message": 6,
        "customer message that no agent answered": 81,
    }
    assert conversations["count"] == 160 and sum(n for t, n in conversations["turns"].items() if int(t) >= 2) == 72
    rows = [r for split in _rows(tmp_path / "out").values() for r in split]
    assert any(r["history"] for r in rows)
    text = " ".join(r["instruction"] + " " + r["response"] for r in rows)
    assert manifest["data_card"]["pii"]["found"].get("handle", 0) > 0 or "{{Customer Handle}}" in text
    handles = set(re.findall(r"(?<![\w.{])@\w+", text))  # every real handle was scrubbed: a slot, or a drawn value
    assert all(re.fullmatch(r"@(shopper\d{3}|user_\d{4})", h) for h in handles), handles


def test_a_chat_format_file_trains_and_scores_end_to_end(tmp_path, tiny_model_dir):
    run = tmp_path / "run"
    prepare(
        DataConfig(source=str(_messages_file(tmp_path / "chats.jsonl")), test_size=6, validation_size=3), run / "data"
    )
    manifest = train(tiny_config(tiny_model_dir, max_steps=3), run)
    assert manifest["steps"] == 3
    rows = SplitDir(run / "data").rows("train")
    multi = next(r for r in rows if r["history"])
    from transformers import AutoTokenizer

    prompt = build_examples([multi], "seed", AutoTokenizer.from_pretrained(tiny_model_dir))[0]["prompt"]
    assert multi["history"][0][0] in prompt and multi["history"][0][1] in prompt and prompt.rstrip().endswith(":")
    summary = evaluate_run(run, EvalConfig(limit=6, gen_batch_size=6, max_new_tokens=6, ppl_limit=6))
    assert summary["n"]["finetuned"]["generation"] == 6 and summary["leakage_check"]["shared_instructions"] == 0
    samples = [json.loads(line) for line in (run / "eval" / "samples.jsonl").read_text().splitlines()]
    assert {s["id"] for s in samples} <= {r["id"] for r in SplitDir(run / "data").rows("test")}


def test_the_report_embeds_the_data_card_and_says_when_scrubbing_was_off(tiny_run, tmp_path):
    from helpers import trained_copy

    from supportbench.reports.render import write_run_report

    run = trained_copy(tiny_run, tmp_path / "run")
    pages = {p.suffix: p.read_text() for p in write_run_report(run)}
    assert "#### Rows" in pages[".md"] and "| rows in | 120 |" in pages[".md"] and "PII scrubbing: on" in pages[".md"]
    assert 'id="data-card"' in pages[".html"] and 'id="data-card-lengths"' in pages[".html"]
    source = str(write_csv(tmp_path / "d.csv", fixture_rows()))
    prepare(DataConfig(source=source, test_size=16, validation_size=8, pii="keep"), run / "data", force=True)
    pages = {p.suffix: p.read_text() for p in write_run_report(run)}
    assert "PII scrubbing: OFF (--pii keep)" in pages[".md"] and "Scrubbing was off" in pages[".html"]


def test_phone_numbers_reserved_for_fiction_are_scrubbed_in_every_named_region(tmp_path):
    rows = fixture_rows()
    planted = ["+44 7700 900123", "020 7946 0958"]  # UK ranges reserved for fiction; VALID leniency rejects the first
    for row, value in zip(rows, planted, strict=False):
        row["instruction"] += f" call me on {value} please"
    source = write_csv(tmp_path / "uk.csv", rows)
    manifest = prepare(DataConfig(source=str(source), phone_region="US,GB", **SMALL), tmp_path / "out")
    written = b"".join(p.read_bytes() for p in (tmp_path / "out").glob("*.jsonl"))
    assert not [v for v in planted if v.encode() in written]
    assert manifest["data_card"]["pii"]["found"]["phone"] >= 2
    with pytest.raises(SupportBenchError, match="phone_region='ZZ'"):
        DataConfig(source=str(source), phone_region="ZZ").validate()


def test_a_long_reply_chain_keeps_the_apps_history_cap_and_is_walked_once(tmp_path):
    from supportbench.prepare.conversations import thread_roots
    from supportbench.templates import MAX_HISTORY_TURNS

    n = 1000  # one reply chain: customer, agent, customer, ... each message replying to the one before
    rows = [
        {
            "message_id": str(i),
            "reply_to": str(i - 1) if i else "",
            "role": "user" if i % 2 == 0 else "assistant",
            "text": f"message number {i} about my order",
            "intent": "track_order",
            "category": "ORDER",
        }
        for i in range(n)
    ]
    path = tmp_path / "chain.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    prepare(DataConfig(source=str(path), test_size=50, validation_size=50, pii="keep"), tmp_path / "out")
    examples = [r for name in ("train", "validation", "test") for r in SplitDir(tmp_path / "out").rows(name)]
    assert len(examples) == n // 2 and max(len(e["history"]) for e in examples) == MAX_HISTORY_TURNS
    last = max(examples, key=lambda e: e["source_row"])
    assert last["history"][-1][0] == f"message number {n - 4} about my order"  # the most recent turns are kept
    links = {str(i): {"reply_to": str(i - 1)} for i in range(1, 6)} | {"0": {"reply_to": "4"}}  # a cycle
    roots = thread_roots(links)
    assert set(roots) == set(links) and len(set(roots.values())) == 1

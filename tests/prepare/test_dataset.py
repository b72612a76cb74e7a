"""prepare: loading, cleaning, placeholders and the leak-free split."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from helpers import BITEXT, TWCS, fixture_rows, small_split, tiny_config, trained_copy, write_csv

from supportbench.cli import main
from supportbench.config import DataConfig
from supportbench.files import SupportBenchError, read_json
from supportbench.layout import SPLITS, RunDir, SplitDir
from supportbench.prepare.dataset import (
    PlaceholderFiller,
    load_placeholder_map,
    load_twcs_pairs,
    normalize_instruction,
    prepare,
)
from supportbench.trainers.lora import train


def _prepare(path: Path, out: Path, **kwargs) -> dict:
    return prepare(
        DataConfig(
            source=str(path),
            test_size=kwargs.pop("test_size", 20),
            validation_size=kwargs.pop("validation_size", 8),
            **kwargs,
        ),
        out,
    )


def _read(out: Path, split: str) -> list[dict]:
    return [json.loads(line) for line in (out / f"{split}.jsonl").read_text().splitlines()]


def test_counts_add_up_and_bad_rows_are_reported(tmp_path):
    rows = fixture_rows()
    rows[3]["response"] = "   "
    rows[5]["instruction"] = ""
    rows[7] = dict(rows[6])  # exact duplicate of the row before it
    path = write_csv(tmp_path / "d.csv", rows)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write("only,three,fields\n")
    with open(path, "ab") as handle:
        handle.write(b"bad \xff\xfe bytes,some response,cancel_order,ORDER,B,BL\n")
    manifest = _prepare(path, tmp_path / "out")
    counts = manifest["counts"]
    assert counts["rows_in"] == len(rows) + 2
    assert counts["rows_in"] == counts["kept"] + counts["skipped"]
    reasons = {s["row"]: s["reason"] for s in manifest["skipped_rows"]}
    assert reasons[4] == "empty field: response"
    assert reasons[6] == "empty field: instruction"
    assert reasons[8] == "duplicate of row 7"
    assert reasons[len(rows) + 1].startswith("malformed row: expected 6 fields, got 3")
    assert reasons[len(rows) + 2] == "bad encoding: not valid UTF-8"
    written = sum(len(_read(tmp_path / "out", s)) for s in ("train", "validation", "test"))
    assert written == counts["kept"]


def test_missing_required_column_names_it_and_writes_nothing(tmp_path):
    path = write_csv(tmp_path / "d.csv", fixture_rows(), columns=["instruction", "intent", "category"])
    with pytest.raises(SupportBenchError, match="missing required column.*'response'"):
        _prepare(path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_placeholders_are_mapped_or_made_readable():
    filler = PlaceholderFiller(load_placeholder_map())
    text = filler("Order {{Order Number}} for {{Name}}; see {{Order History}} or {{ Account Settings Anonymized }}.")
    assert text == "Order ORD-98765 for Alex; see Order History or Account Settings."
    coverage = filler.coverage()
    assert (coverage["mapped"], coverage["fallback"], coverage["fallback_keys"]) == (2, 2, 2)
    assert "{{" not in text and "[info]" not in text


def test_user_placeholder_map_overrides_defaults(tmp_path):
    extra = tmp_path / "map.yaml"
    extra.write_text('"Order Number": "#1234"\n')
    assert PlaceholderFiller(load_placeholder_map(str(extra)))("{{Order Number}}") == "#1234"
    extra.write_text("- not a mapping\n")
    with pytest.raises(SupportBenchError, match="flat YAML mapping"):
        load_placeholder_map(str(extra))


def test_split_is_stratified_and_leak_free(tmp_path):
    rows = fixture_rows(per_intent=40)
    # the same question asked twice with different answers must land in one split
    rows.append(dict(rows[0], response="A different answer."))
    rows.append(dict(rows[1], instruction=rows[1]["instruction"].upper() + "!!"))
    manifest = _prepare(write_csv(tmp_path / "d.csv", rows), tmp_path / "out", test_size=40, validation_size=16)
    splits = {s: _read(tmp_path / "out", s) for s in ("train", "validation", "test")}
    keys = {s: {normalize_instruction(r["instruction"]) for r in v} for s, v in splits.items()}
    assert (
        not keys["train"] & keys["test"]
        and not keys["train"] & keys["validation"]
        and not keys["test"] & keys["validation"]
    )
    assert all(v == 0 for v in manifest["overlap"]["normalized_instruction_pairs"].values())
    test_intents = Counter(r["intent"] for r in splits["test"])
    assert set(test_intents) == {"cancel_order", "track_refund", "recover_password", "change_shipping_address"}
    assert max(test_intents.values()) - min(test_intents.values()) <= 2
    assert 40 <= len(splits["test"]) <= 42


def test_same_input_and_seed_give_identical_bytes(tmp_path):
    path = write_csv(tmp_path / "d.csv", fixture_rows())
    _prepare(path, tmp_path / "a")
    _prepare(path, tmp_path / "b")
    for name in ("train.jsonl", "validation.jsonl", "test.jsonl", "manifest.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    _prepare(path, tmp_path / "c", seed=7)
    assert (tmp_path / "a" / "test.jsonl").read_bytes() != (tmp_path / "c" / "test.jsonl").read_bytes()


def test_existing_different_split_is_not_overwritten(tmp_path):
    path = write_csv(tmp_path / "d.csv", fixture_rows())
    _prepare(path, tmp_path / "out")
    before = (tmp_path / "out" / "test.jsonl").read_bytes()
    with pytest.raises(SupportBenchError, match="already holds different data"):
        _prepare(path, tmp_path / "out", seed=99)
    assert (tmp_path / "out" / "test.jsonl").read_bytes() == before


def test_jsonl_and_parquet_sources(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = fixture_rows()
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in rows) + "\n{not json\n")
    manifest = _prepare(jsonl, tmp_path / "j")
    assert manifest["counts"]["skipped_by_reason"] == {
        "malformed JSON: Expecting property name enclosed in double quotes": 1
    }
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    assert _prepare(tmp_path / "d.parquet", tmp_path / "p")["counts"]["kept"] == len(rows)


def test_sample_mode_samples_then_splits_90_10_and_its_old_name_splits_the_same(tmp_path):
    data = write_csv(tmp_path / "d.csv", fixture_rows())
    manifest = _prepare(data, tmp_path / "out", mode="sample", sample_size=100)
    splits = manifest["splits"]
    assert splits["test"]["rows"] == 10
    assert sum(s["rows"] for s in splits.values()) == 100
    old = _prepare(data, tmp_path / "old", mode="notebook", sample_size=100)["splits"]
    assert {name: split["sha256"] for name, split in old.items()} == {n: s["sha256"] for n, s in splits.items()}


def test_missing_file_and_bad_config(tmp_path):
    with pytest.raises(SupportBenchError, match="data file not found"):
        _prepare(tmp_path / "nope.csv", tmp_path / "out")
    with pytest.raises(SupportBenchError, match="invalid data config: mode='random'"):
        _prepare(write_csv(tmp_path / "d.csv", fixture_rows()), tmp_path / "out", mode="random")


def test_offline_hub_source_says_what_to_set(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SupportBenchError, match="SUPPORTBENCH_DATA"):
        prepare(DataConfig(source="bitext/some-dataset"), tmp_path / "out")


@pytest.mark.skipif(not BITEXT.is_file(), reason="needs ../shared/data/bitext")
def test_real_bitext_file(tmp_path):
    manifest = prepare(DataConfig(source=str(BITEXT)), tmp_path / "out")
    counts, splits = manifest["counts"], manifest["splits"]
    assert counts["rows_in"] == 4514 == counts["kept"] + counts["skipped"]
    assert splits["test"]["rows"] == 500
    assert sum(s["rows"] for s in splits.values()) == counts["kept"]
    assert all(s["intents"] == 27 for s in splits.values())
    assert len(splits["train"]["by_category"]) == 11
    assert all(v == 0 for v in manifest["overlap"]["normalized_instruction_pairs"].values())
    placeholders = manifest["placeholders"]
    assert manifest["data_card"]["pii"]["found"] == {"email": 2}  # support addresses in two replies
    # the file's placeholders and the two the scrubber wrote, less the four in the three rows skipped for an invented id
    assert placeholders["occurrences"] == 9264 + 2 - 4
    assert placeholders["mode"] == "slots"  # the default: company facts stay slots, no constant is learnt
    test = [r["response"] for r in _read(tmp_path / "out", "test")]
    assert any("{{Customer Support Phone Number}}" in r for r in test) and not any("1-800-555-0199" in r for r in test)
    filled = prepare(DataConfig(source=str(BITEXT), facts="fill"), tmp_path / "fill")["placeholders"]
    assert filled["occurrences"] == 9264 + 2 - 4 and filled["mapped_share"] > 0.75
    assert all("{{" not in r["response"] for r in _read(tmp_path / "fill", "test"))


@pytest.mark.skipif(not TWCS.is_file(), reason="needs ../shared/data/twcs")
def test_twcs_pairs_join_customer_tweets_to_company_replies():
    pairs = load_twcs_pairs(TWCS)
    assert len(pairs) == 332
    assert all(p["instruction"] and p["response"] and not p["instruction"].startswith("@") for p in pairs)
    assert len({p["id"] for p in pairs}) == 332


def test_twcs_file_without_its_columns_is_named(tmp_path):
    path = write_csv(tmp_path / "t.csv", [{"tweet_id": "1", "text": "hi"}])
    with pytest.raises(SupportBenchError, match="missing TWCS column"):
        load_twcs_pairs(path)


# 2. prepare replaces only its own outputs and refuses a folder that holds a run.
def test_prepare_never_deletes_other_files_or_a_run(tiny_run, tmp_path):
    config = DataConfig(source=str(write_csv(tmp_path / "d.csv", fixture_rows())), test_size=16, validation_size=8)
    out = tmp_path / "split"
    prepare(config, out)
    (out / "notes.txt").write_text("my notes")
    prepare(config, out)  # the same split again
    prepare(DataConfig(**{**config.__dict__, "seed": 7}), out, force=True)  # a different one, forced
    assert (out / "notes.txt").read_text() == "my notes"
    run = RunDir(trained_copy(tiny_run, tmp_path / "run"))
    with pytest.raises(SupportBenchError, match="holds a training run"):
        prepare(config, run.path, force=True)
    assert run.is_finished and (run.adapter / "adapter_config.json").is_file() and run.data.is_prepared


# 6. Clear errors (exit 2, naming the file and the problem) instead of tracebacks.
def test_a_csv_field_over_the_csv_module_limit_is_read(tmp_path):
    rows = fixture_rows()
    rows[0]["response"] = "word " * 40_000  # 200,000 characters, over csv's default 131,072
    manifest = small_split(tmp_path, tmp_path / "o", rows)
    assert manifest["counts"]["kept"] == len(rows)


# 8. Control characters never reach the splits; the manifest counts what was removed.
def test_nul_and_escape_characters_are_stripped_and_counted(tmp_path):
    rows = fixture_rows()
    rows[0]["instruction"] = "please help\x00 me cancel order number 0 today"
    rows[1]["response"] = "Sure \x1b[31mred\x1b[0m text."
    out = tmp_path / "split"
    manifest = small_split(tmp_path, out, rows)
    written = "".join((out / f"{name}.jsonl").read_text() for name in ("train", "validation", "test"))
    assert "\\u0000" not in written and "\\u001b" not in written and "[31mred" in written
    assert manifest["control_characters_removed"] == {"U+0000": 1, "U+001B": 2, "characters": 3, "rows": 2}
    assert read_json(out / "manifest.json")["counts"]["kept"] == len(rows)


@pytest.mark.parametrize("force", [[], ["--force"]])
def test_prepare_never_replaces_its_own_input(tmp_path, force, capsys):
    folder = tmp_path / "userdata"
    folder.mkdir()
    source = folder / "train.jsonl"
    source.write_text("".join(json.dumps({**r, "extra": "kept"}) + "\n" for r in fixture_rows()))
    before = source.read_bytes()
    argv = ["prepare", "--data", str(source), "--out", str(folder), "--test-size", "12", "--validation-size", "4"]
    assert main([*argv, *force]) == 2
    err = capsys.readouterr().err
    assert "would replace its own input" in err and str(source.resolve()) in err
    assert source.read_bytes() == before and sorted(p.name for p in folder.iterdir()) == ["train.jsonl"]


def _failing_on(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every temporary write of `name` fail as a full disk does, after the earlier files were written."""
    import supportbench.files

    real = supportbench.files._write_temporary

    def write(path, data):
        if Path(path).name == name:
            raise supportbench.files.SupportBenchError(f"cannot write {path}: No space left on device")
        return real(path, data)

    monkeypatch.setattr(supportbench.files, "_write_temporary", write)


def test_a_prepare_that_fails_part_way_leaves_the_old_split_whole(tmp_path, monkeypatch):
    config = DataConfig(source=str(write_csv(tmp_path / "d.csv", fixture_rows())), test_size=16, validation_size=8)
    out = SplitDir(tmp_path / "split")
    old = prepare(config, out.path)
    _failing_on("test.jsonl", monkeypatch)  # train and validation were written first
    with pytest.raises(SupportBenchError, match="No space left"):
        prepare(DataConfig(**{**config.__dict__, "seed": 7}), out.path, force=True)
    assert out.manifest()["splits"] == old["splits"]
    assert all(out.rows(name) for name in SPLITS)  # each file is the one the manifest records
    assert not [p.name for p in out.path.iterdir() if p.name.startswith(".")]  # no temporaries left


def test_a_split_file_other_than_its_manifest_is_refused_by_train(tiny_model_dir, tmp_path):
    data = tmp_path / "run" / "data"
    small_split(tmp_path, data)
    rows = SplitDir(data).rows("train")
    (data / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:-3]))  # a half-new split
    with pytest.raises(SupportBenchError, match="train.jsonl is not the train split its manifest describes"):
        train(tiny_config(tiny_model_dir), tmp_path / "run")
    assert not (tmp_path / "run" / "train.json").exists()


def test_a_duplicate_csv_header_is_refused_naming_it(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("instruction,response,response,intent\nwhere is my order,first,second,track_order\n")
    with pytest.raises(SupportBenchError, match=r"names a column more than once: \['response'\]"):
        prepare(DataConfig(source=str(path), test_size=1, validation_size=1), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_values_that_are_not_text_are_skipped_as_malformed_with_the_reason(tmp_path):
    rows = fixture_rows()
    odd = [{"nested": [1, 2]}, True, 42, ["a", "b"]]
    for row, value in zip(rows, odd, strict=False):
        row["response"] = value
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    manifest = prepare(DataConfig(source=str(path), test_size=16, validation_size=8), tmp_path / "out")
    reasons = manifest["counts"]["skipped_by_reason"]
    for kind in ("dict", "bool", "int", "list"):
        assert any(f"response is a {kind}, not text" in reason for reason in reasons), reasons
    kept = [r["response"] for name in SPLITS for r in SplitDir(tmp_path / "out").rows(name)]
    assert not any(text.startswith(("{'", "[", "True")) or text == "42" for text in kept)


def test_small_data_against_the_default_split_sizes_names_the_flags(tmp_path, capsys):
    path = write_csv(tmp_path / "d.csv", fixture_rows()[:29])
    assert main(["prepare", "--data", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "29 usable rows cannot hold a test split of 500" in err and "--test-size and --validation-size" in err


def test_unreadable_inputs_get_errors_that_name_the_problem(tmp_path):
    small = {"test_size": 4, "validation_size": 4}
    parquet = tmp_path / "broken.parquet"
    parquet.write_bytes(b"PAR1 not really parquet")
    with pytest.raises(SupportBenchError, match="is not a readable Parquet file"):
        prepare(DataConfig(source=str(parquet), **small), tmp_path / "a")
    utf16 = write_csv(tmp_path / "utf16.csv", fixture_rows())
    utf16.write_bytes(utf16.read_text().encode("utf-16"))
    with pytest.raises(SupportBenchError, match="is UTF-16 text; save it as UTF-8"):
        prepare(DataConfig(source=str(utf16), **small), tmp_path / "b")
    source = write_csv(tmp_path / "d.csv", fixture_rows())
    for rules, message in [
        ("placeholders: [1, 2]\n", "mappings only"),
        ("patterns: {x: {regex: 42, placeholder: X}}\n", "both text"),
    ]:
        (tmp_path / "rules.yaml").write_text(rules)
        with pytest.raises(SupportBenchError, match=message):
            prepare(DataConfig(source=str(source), pii_rules=str(tmp_path / "rules.yaml"), **small), tmp_path / "c")


def test_a_json_array_file_is_read_as_rows(tmp_path):
    path = tmp_path / "rows.json"
    path.write_text(json.dumps(fixture_rows()))
    manifest = prepare(DataConfig(source=str(path), test_size=16, validation_size=8), tmp_path / "out")
    assert manifest["counts"]["kept"] == len(fixture_rows())


def test_a_column_map_onto_unknown_roles_says_why_no_row_is_usable(tmp_path):
    rows = [{"thread": "t1", "who": "robot", "body": f"hello {i}"} for i in range(6)]
    path = tmp_path / "m.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = DataConfig(
        source=str(path), columns="conversation=thread,role=who,text=body", test_size=1, validation_size=1
    )
    with pytest.raises(SupportBenchError, match=r"no usable examples in .*6 x unknown role 'robot'"):
        prepare(config, tmp_path / "out")


def test_a_twcs_file_that_is_not_utf8_is_named(tmp_path):
    path = tmp_path / "twcs.csv"
    path.write_bytes("tweet_id,author_id,inbound,text,response_tweet_id\n1,a,True,café,\n".encode("latin-1"))
    with pytest.raises(SupportBenchError, match="is not UTF-8 text"):
        load_twcs_pairs(path)


def _codes(text: str) -> set[str]:
    from supportbench.facts.identifiers import CODE, MIN_CODE_DIGITS

    return {d for m in CODE.findall(text) if len(d := "".join(filter(str.isdigit, m))) >= MIN_CODE_DIGITS}


def test_replies_naming_another_order_id_are_repaired_or_skipped(tmp_path):
    rows = fixture_rows()[:60] + [
        {**fixture_rows()[0], "instruction": "cancel purchase 3707955617", "response": "Cancelling 370795561790 now."},
        {**fixture_rows()[1], "instruction": "where is order 55501?", "response": "Order 55591 ships today."},
        {**fixture_rows()[2], "instruction": "cancel order 48213", "response": "I cancelled order 90000123."},
        {**fixture_rows()[3], "instruction": "I need help", "response": "Your case number is 88812345."},
        {**fixture_rows()[4], "instruction": "order 61234 is late", "response": "See www.example.com/t/A7B9C1D3E5F."},
    ]
    manifest = _prepare(write_csv(tmp_path / "in.csv", rows), tmp_path / "out", test_size=10, validation_size=5)
    assert manifest["order_ids"] == {"replies_repaired": 2, "codes_repaired": 2, "skipped": 1}
    assert manifest["counts"]["skipped_by_reason"] == {"reply names an order id the customer did not give": 1}
    replies = {r["instruction"]: r["response"] for name in SPLITS for r in _read(tmp_path / "out", name)}
    assert replies["cancel purchase 3707955617"] == "Cancelling 3707955617 now."  # digits added: the customer's
    assert replies["where is order 55501?"] == "Order 55501 ships today."  # one digit changed
    assert "cancel order 48213" not in replies
    assert replies["I need help"] == "Your case number is 88812345."  # issued by the agent: the customer gave none
    assert replies["order 61234 is late"] == "See www.example.com/t/A7B9C1D3E5F."  # a link is not an order id
    card = (tmp_path / "out" / "data_card.md").read_text()
    assert "repaired to the customer's exact id (2 replies, 2 ids)" in card and "(1 rows)" in card


def test_the_bitext_training_replies_name_no_order_id_the_query_did_not_give(tmp_path):
    manifest = prepare(DataConfig(source=str(BITEXT)), tmp_path / "out")
    train = _read(tmp_path / "out", "train")
    invented = [r for r in train if _codes(r["response"]) - _codes(r["instruction"])]
    assert len(invented) <= 0.01 * len(train)  # the bar; 62 of 3,913 (1.6%) before the repair
    assert manifest["order_ids"]["replies_repaired"] > 0

"""The PII scrub measured per kind on planted values (the bundled pii_benchmark.yaml, shown in the data card), national
phone formats of every named region, every IP range, drawn values that never put a removed value back, and no false
positives on the Bitext rows' order numbers and amounts."""

from __future__ import annotations

import csv

import pytest
from helpers import BITEXT, fixture_rows, write_csv

from supportbench.config import DataConfig
from supportbench.facts.identifiers import identifiers
from supportbench.prepare.dataset import prepare
from supportbench.prepare.pii import Scrubber, load_rules, measure

SMALL = {"test_size": 20, "validation_size": 8}


def test_every_planted_kind_is_found_and_the_values_that_are_not_personal_are_kept():
    measured = measure(load_rules(), ["US", "GB"])
    kinds = measured["kinds"]
    shown = {kind: (k["planted"], k["removed"], k["missed"]) for kind, k in kinds.items()}
    print("\n".join(f"{kind:15} planted {p:2} removed {r:2} kept {m}" for kind, (p, r, m) in shown.items()))
    assert len(kinds) >= 10 and sum(k["planted"] for k in kinds.values()) >= 40
    assert {kind: k["missed"] for kind, k in kinds.items()} == {kind: [] for kind in kinds}
    assert all(k["precision"] == 1.0 for k in kinds.values())
    assert measured["kept_values"]["survived"] == measured["kept_values"]["must_survive"] > 0


def test_national_phone_numbers_are_found_in_every_named_region_only():
    gb = Scrubber(load_rules(), ["US", "GB"])
    for number in ("020 7946 0958", "02079460958", "(020) 7946 0958", "07700 900123", "0161 496 0000"):
        assert gb(f"call me on {number} tonight") == "call me on {{Customer Phone Number}} tonight", number
    assert gb("order 0123456 please") == "order 0123456 please"  # digits an id word names stay
    us = Scrubber(load_rules(), ["US"])
    assert us("call me on 020 7946 0958 tonight") == "call me on 020 7946 0958 tonight"  # GB not named
    assert us("cancel purchase 3707955617") == "cancel purchase 3707955617"  # no US trunk prefix: valid numbers only


@pytest.mark.parametrize(
    "address", ["198.51.100.7", "203.0.113.9", "192.0.2.44", "10.0.0.12", "192.168.1.20", "2001:db8::1", "fe80::1"]
)
def test_ip_addresses_of_every_range_are_personal_data(address):
    assert Scrubber(load_rules(), ["US"])(f"my IP is {address}.") == "my IP is {{IP Address}}."


def test_a_drawn_value_never_puts_back_the_value_the_scrub_removed(tmp_path):
    rows = fixture_rows()
    planted = {"198.51.100.7": "my ip address is", "020 7946 0958": "please call me on", "Priya Raman": "my name is"}
    for row, (value, words) in zip(rows, planted.items(), strict=False):
        row["instruction"] = f"{words} {value} and I need help"
        row["response"] = f"Thanks, I noted {value}."
    source = write_csv(tmp_path / "pii.csv", rows)
    for facts in ("slots", "fill"):
        out = tmp_path / facts
        prepare(DataConfig(source=str(source), phone_region="US,GB", facts=facts, **SMALL), out)
        written = b"".join(p.read_bytes() for p in out.glob("*.jsonl"))
        assert [v for v in planted if v.encode() in written] == [], facts


def test_no_false_positives_on_the_bitext_order_numbers_and_amounts():
    scrub = Scrubber(load_rules(), ["US"])
    with open(BITEXT, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    lost = []
    for row in rows:
        for text in (row["instruction"], row["response"]):
            kept = {i for i in identifiers(text) if i.startswith(("code:", "money:"))}
            lost += sorted(kept - identifiers(scrub(text)))
    assert len(rows) == 4514 and lost == []
    assert dict(scrub.found) == {"email": 2}  # the two support addresses in replies, nothing else

"""Fact slots: company facts from the profile, customer facts from the conversation, never from the weights."""

from __future__ import annotations

import itertools
import json

import pytest
from helpers import BITEXT, small_split, trained_copy

from supportbench.config import DataConfig
from supportbench.facts.identifiers import copied, identifiers, invented
from supportbench.facts.profile import load_profile, profile_for_run
from supportbench.facts.slots import SlotWriter, StreamingFiller, fill_reply, stated_slots
from supportbench.files import SupportBenchError
from supportbench.layout import SplitDir
from supportbench.prepare.dataset import prepare

PROFILE = load_profile().values


def test_slots_mode_draws_customer_facts_per_example_and_copies_them_into_the_reply():
    writer = SlotWriter(seed=7)
    example = {
        "id": "row-1",
        "instruction": "cancel order {{Order Number}} please",
        "response": "Order {{Order ID Anonymized}} is cancelled; the refund of {{Refund Amount}} follows. "
        "Call {{Customer Service Phone Number}} or open {{Order History}}.",
    }
    written = [writer.fill_example({**example, "id": f"row-{i}"}) for i in range(20)]
    numbers = [w["instruction"].split()[2] for w in written]
    assert len(set(numbers)) >= 15  # varied, never one constant
    for number, w in zip(numbers, written, strict=True):
        assert w["response"].startswith(f"Order {number} is cancelled")  # the reply copies the customer's value
        assert "{{Money Amount}}" in w["response"]  # named only in the reply: stays a slot
        assert "{{Customer Support Phone Number}}" in w["response"]  # company fact: canonical slot
        assert "Order History" in w["response"] and "{{Order History}}" not in w["response"]  # a label: readable
    assert SlotWriter(seed=7).fill_example(example) == writer.fill_example(example)
    assert SlotWriter(seed=8).fill_example(example) != writer.fill_example(example)


def test_a_value_the_customer_wrote_fills_the_replys_slot():
    example = {
        "id": "r",
        "instruction": "i bought something cancel purchase 3707955617",
        "response": "your purchase with the order number {{Order Number Anonymized}}",
    }
    assert SlotWriter(seed=1).fill_example(example)["response"].endswith("order number 3707955617")


def test_prepare_slots_counts_by_kind_repeats_bytes_and_refuses_a_placeholder_map(tmp_path):
    config = DataConfig(source=str(BITEXT), facts="slots")
    first = prepare(config, tmp_path / "a")
    prepare(config, tmp_path / "b")
    for name in ("train", "validation", "test"):
        assert (tmp_path / "a" / f"{name}.jsonl").read_bytes() == (tmp_path / "b" / f"{name}.jsonl").read_bytes()
    facts = first["placeholders"]
    assert facts["mode"] == "slots" and "Customer Support Phone Number" in facts["company_slots"]
    assert facts["by_kind"]["customer_copied"]["Order Number"] > 0
    train = (tmp_path / "a" / "train.jsonl").read_text()
    assert "{{Customer Support Phone Number}}" in train and "1-800-555-0199" not in train
    assert "## Facts" in (tmp_path / "a" / "data_card.md").read_text()
    with pytest.raises(SupportBenchError, match="placeholders"):
        prepare(DataConfig(source=str(BITEXT), facts="slots", placeholders="x.yaml"), tmp_path / "c")


def test_serve_time_filling_uses_the_profile_and_the_conversation_never_an_invented_value():
    said = ["I want a refund for order 55501"]
    filled = fill_reply(
        "Order {{Order Number}}: call {{Customer Support Phone Numbr}}, {{Tracking Number}}, {{Foo}} and {{Live",
        said,
        PROFILE,
    )
    assert filled.text == "Order 55501: call 1-800-555-0199, your tracking number, Foo and"
    assert filled.counts == {
        "customer_from_conversation": 1,
        "mapped_to_nearest": 1,
        "company": 1,
        "customer_phrase": 1,
        "unknown": 1,
        "dropped_open": 1,
    }
    assert "ORD-98765" not in fill_reply("about order {{Order Number}}", said, PROFILE).text


def test_a_stream_never_shows_half_a_slot():
    reply = "Call {{Customer Support Phone Number}} about {{Order Number}}, or {{Website URL}}."
    filler = StreamingFiller(["order 55501 is late"], PROFILE)
    shown = [filler.visible(reply[:i]).text for i in range(len(reply) + 1)]
    assert not any("{" in text for text in shown)
    assert all(b.startswith(a) for a, b in itertools.pairwise(shown))  # a client appends deltas: text only grows
    assert filler.visible(reply, final=True).text == "Call 1-800-555-0199 about 55501, or www.example-shop.com."


def test_invented_facts_are_identifiers_neither_the_conversation_nor_the_profile_gave():
    said = ["I want a refund for order 55501"]
    assert invented("Your order ORD-98765 is refunded.", said, PROFILE.values()) == ["code:98765"]
    assert invented("Order 55501: call 1-800-555-0199 or www.example-shop.com.", said, PROFILE.values()) == []
    assert invented("Refund of $45.00 to alex@example.com", said, PROFILE.values()) == [
        "email:alex@example.com",
        "money:$45",
    ]
    # an amount the customer wrote in words is the same fact as the reply's symbol (the ci run's row-2864)
    assert invented("You seek a refund of $1499 dollars.", ["refund 1499 dollars"], PROFILE.values()) == []
    assert identifiers("$1,499.00") == identifiers("1499 USD") == identifiers("1,499 dollars") == {"money:$1499"}
    assert identifiers("30 euros or £12.50") == {"money:€30", "money:£12.50"}
    assert identifiers("ORD-55501") == identifiers("order 55501") == {"code:55501"}
    assert identifiers("open from 9 AM to 6 PM since 2024") == set()


def test_copied_facts_and_stated_slots_compare_a_reply_with_its_reference():
    said = ["I want a refund for order 55501"]
    reference = fill_reply("Order {{Order Number}}: call {{Customer Support Phone Number}}.", said, PROFILE).text
    assert reference == "Order 55501: call 1-800-555-0199."
    assert copied("Your order ORD-55501 is refunded.", said, reference) is True  # the same code, another spelling
    assert copied("Your order ORD-98765 is refunded.", said, reference) is False
    assert copied("Order 55501 is refunded.", [], reference) is None  # the customer gave nothing: does not apply
    assert stated_slots(reference, said, PROFILE) == {"Order Number", "Customer Support Phone Number"}
    assert stated_slots("Call 1-800-555-0199 about your order number.", [], PROFILE) == {
        "Customer Support Phone Number",
        "Order Number",  # the neutral phrase names the fact
    }
    assert stated_slots("Order ORD-98765, see the date.", said, PROFILE) == set()  # a constant, a vague phrase


def test_a_profile_missing_a_slot_the_model_can_emit_is_refused_naming_it(tmp_path):
    small_split(tmp_path, tmp_path / "split", facts="slots")
    split = SplitDir(tmp_path / "split")
    assert profile_for_run(split, None).values == PROFILE
    lacking = tmp_path / "lacking.yaml"
    lacking.write_text("Customer Support Phone Number: 555-0000\n")
    with pytest.raises(SupportBenchError, match="lacks Website Name"):
        profile_for_run(split, lacking)
    typo = tmp_path / "typo.yaml"
    typo.write_text("Custmer Support Phone Number: 555-0000\n")
    with pytest.raises(SupportBenchError, match="Custmer Support Phone Number are not company slots"):
        load_profile(typo)


def test_a_changed_profile_changes_the_served_reply_without_retraining(tiny_run, tmp_path):
    from supportbench.serve.assistant import Assistant

    run = trained_copy(tiny_run, tmp_path / "run")
    new = tmp_path / "profile.yaml"
    new.write_text(json.dumps({**PROFILE, "Customer Support Phone Number": "+1 212-555-0147"}))
    assistant = Assistant(run, profile=new)
    raw = "Call {{Customer Support Phone Number}} about order {{Order Number}}."

    def texts(prompt, finetuned, max_new_tokens, cancel):  # the weights' output, a token at a time
        yield from (raw[:i] for i in range(1, len(raw) + 1))

    assistant.backend.texts = texts
    chunks = list(assistant.generate([], "I want a refund for order 55501", True, 64))
    assert not any("{" in chunk.text for chunk in chunks)
    assert chunks[-1].text == "Call +1 212-555-0147 about order 55501."

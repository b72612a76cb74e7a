"""The Rate tab in a real browser: blind pairs (no variant name on the page before the vote), votes in the store,
and `supportbench ratings` counting them."""

from __future__ import annotations

import shutil

import pytest
from helpers import serve_app, trained_copy

from supportbench.cli import main
from supportbench.files import SupportBenchError, read_json
from supportbench.layout import RunDir
from supportbench.preference.store import PreferenceStore
from supportbench.serve.assistant import Assistant
from supportbench.serve.rate import RateSession

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
VOTES = 20
NAMES = ("finetuned", "fine-tuned", "Fine-tuned", "variant")  # what must not reach the Rate tab before a vote


@pytest.fixture(scope="module")
def rating_run(tiny_run, tmp_path_factory):
    return RunDir(trained_copy(tiny_run, tmp_path_factory.mktemp("rate") / "run"))


def test_a_session_stores_the_pair_before_it_is_shown_and_refuses_votes_without_one(rating_run, tmp_path):
    session = RateSession(rating_run.path, Assistant(rating_run.path), tmp_path / "votes.sqlite")
    first, second = session.new_pair("", 8), session.new_pair("", 8)
    assert first.query == session.queries[0] and second.query == session.queries[1]  # the seeded test order
    stored = PreferenceStore(tmp_path / "votes.sqlite").pair(first.id)
    assert stored.reply_a == first.reply_a and {stored.variant_a, stored.variant_b} == {"base", "finetuned"}
    assert stored.settings["adapter_sha256"] and stored.settings["decoding"]["max_new_tokens"]
    revealed = session.vote(first.id, "ana", "B", ["incomplete"])
    assert f"A was **{first.variant_a}**, B was **{first.variant_b}**" in revealed
    with pytest.raises(SupportBenchError, match="Next pair"):
        session.vote(None, "ana", "A", [])
    with pytest.raises(SupportBenchError, match="unknown pair"):
        session.vote("forged", "ana", "A", [])


@pytest.mark.e2e
@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")
def test_twenty_blind_votes_in_the_browser_reach_the_store_and_the_ratings(rating_run, capsys):
    from playwright.sync_api import expect, sync_playwright

    for url in serve_app(rating_run.path):
        with sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu"]
            )
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.goto(url)
            page.get_by_role("tab", name="Rate").click()
            page.locator("#rate-rater textarea, #rate-rater input").first.fill("browser-rater")
            choices = ["A", "B", "tie", "both_bad"]
            for i in range(VOTES):
                page.locator("#rate-next").click()
                expect(page.locator("#rate-shown-query")).to_contain_text("Customer:", timeout=60_000)
                expect(page.locator("#rate-verdict")).to_have_text("", timeout=60_000)
                before = page.locator("#rate").inner_html()
                assert not any(name in before for name in NAMES), "a variant name reached the page before the vote"
                if i % 5 == 0:
                    page.get_by_label("incomplete").check()
                page.locator(f"#rate-{choices[i % 4]}").click()
                expect(page.locator("#rate-verdict")).to_contain_text("Vote stored", timeout=60_000)
                assert "finetuned" in page.locator("#rate-verdict").inner_text()  # revealed after the vote
            browser.close()
    votes = PreferenceStore(rating_run.ratings_store).votes()
    assert len(votes) == VOTES and {v["rater"] for v in votes} == {"browser-rater"}
    assert [v["choice"] for v in votes] == [["A", "B", "tie", "both_bad"][i % 4] for i in range(VOTES)]
    assert sum(v["reasons"] == ["incomplete"] for v in votes) == VOTES // 5
    assert main(["ratings", "--run", str(rating_run.path)]) == 0
    out = capsys.readouterr().out
    assert f"{VOTES} votes by 1 rater(s)" in out and "base vs finetuned: 20 votes" in out and "win rate" in out
    row = read_json(rating_run.eval.ratings)["pairs"][0]
    assert row["votes"] == VOTES and row["ties"] == 5 and row["both_bad"] == 5
    assert 0 <= row["win_rate"]["low"] <= row["win_rate"]["mean"] <= row["win_rate"]["high"] <= 1


def test_rate_against_another_run_names_each_variant_by_its_folder(rating_run, tiny_run, tmp_path):
    other = RunDir(trained_copy(tiny_run, tmp_path / "other"))
    session = RateSession(
        rating_run.path, Assistant(rating_run.path), tmp_path / "v.sqlite", against=(other.path, Assistant(other.path))
    )
    pair = session.new_pair("where is my refund", 8)
    assert {pair.variant_a, pair.variant_b} == {rating_run.path.name, "other"}
    assert pair.settings["against_run"] == "other" and pair.settings["against_adapter_sha256"]
    with pytest.raises(SupportBenchError, match="its folder name is this run's"):
        RateSession(
            rating_run.path, Assistant(rating_run.path), tmp_path / "v.sqlite", against=(rating_run.path, None)
        )

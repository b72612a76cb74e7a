"""Identifiers in text (phone numbers, e-mails, URLs, order-, invoice- and tracking-like codes, money amounts), and the
ones a reply states that neither the conversation nor the company profile gave: invented facts. No torch import."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from functools import lru_cache

import phonenumbers

PHONE_REGION = "US"  # numbers written without a country code, as prepare's --phone-region defaults
EMAIL = re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+\b")
URL = re.compile(
    r"(?i)\b(?:https?://|www\.)[^\s<>\"')]+|\b[\w-]+\.(?:com|net|org|io|co|shop|store)\b(?:/[^\s<>\"')]*)?"
)
AMOUNT = r"(\d[\d,]*(?:\.\d{1,2})?)"
MONEY = re.compile(rf"([$€£])\s?{AMOUNT}|{AMOUNT}\s?(dollars?|usd|euros?|eur|pounds?|gbp)\b", re.IGNORECASE)
CURRENCY = {"dollar": "$", "usd": "$", "euro": "€", "eur": "€", "pound": "£", "gbp": "£"}  # a word, as its symbol
CODE = re.compile(r"(?i)\b[A-Z0-9][A-Z0-9-]{4,}\b")
MIN_CODE_DIGITS = 5  # an order, invoice or tracking code has at least this many digits; years and times have fewer


def _amount(text: str) -> str:
    """An amount as one spelling: no thousands separators, no zero cents (`1,499.00` is `1499`)."""
    value = text.replace(",", "")
    return value.split(".")[0] if re.fullmatch(r"\d+\.0+", value) else value


def _digits(text: str) -> str:
    return re.sub(r"\D", "", text)


@lru_cache(maxsize=4096)  # eval reads the same profile values and customer texts for every reply
def identifiers(text: str) -> frozenset[str]:
    """The identifiers a text states, normalised: `phone:+18005550199`, `email:…`, `url:…`, `money:$45.50` (`$1,499.00`,
    `1499 dollars` and `1499 USD` are all `money:$1499`) and `code:98765` (a code by its digits, so `ORD-55501` and
    `55501` are the same fact)."""
    found: set[str] = set()
    covered: list[tuple[int, int]] = []  # a span already read as one identifier is not read again (an e-mail's domain)

    def free(start: int, end: int) -> bool:
        return not any(start < stop and begin < end for begin, stop in covered)

    for match in phonenumbers.PhoneNumberMatcher(text, PHONE_REGION, leniency=phonenumbers.Leniency.POSSIBLE):
        found.add("phone:" + phonenumbers.format_number(match.number, phonenumbers.PhoneNumberFormat.E164))
        covered.append((match.start, match.end))
    for pattern, kind in ((EMAIL, "email"), (URL, "url")):
        for match in pattern.finditer(text):
            if not free(*match.span()):
                continue
            value = match.group(0).rstrip(".,;:!?").casefold()
            if kind == "url":
                value = re.sub(r"^(?:https?://)?(?:www\.)?", "", value).rstrip("/")
            found.add(f"{kind}:{value.replace(' ', '').replace(',', '')}")
            covered.append(match.span())
    for match in MONEY.finditer(text):
        if free(*match.span()):
            symbol, amount = (
                match.group(1) or CURRENCY[match.group(4).casefold().rstrip("s")],
                match.group(2) or match.group(3),
            )
            found.add(f"money:{symbol}{_amount(amount)}")
            covered.append(match.span())
    for match in CODE.finditer(text):
        if free(*match.span()) and len(_digits(match.group(0))) >= MIN_CODE_DIGITS:
            found.add("code:" + _digits(match.group(0)))
    return frozenset(found)


def invented(reply: str, customer_texts: Sequence[str], profile_values: Iterable[str]) -> list[str]:
    """The identifiers a reply states that appear neither in what the customer wrote nor in the profile's values."""
    given = frozenset().union(*(identifiers(t) for t in [*customer_texts, *profile_values]))
    return sorted(identifiers(reply) - given)


def copied(reply: str, customer_texts: Sequence[str], reference: str) -> bool | None:
    """Whether a reply states every identifier the customer gave that the reference states (the exact value); None
    where the reference states none of them, so the check does not apply."""
    needed = frozenset().union(*(identifiers(t) for t in customer_texts)) & identifiers(reference)
    return needed <= identifiers(reply) if needed else None


MAX_CHANGED_DIGITS = 2  # a reply's code this close to the customer's is the customer's, mistyped by the data


def _near(reply_digits: str, customer_digits: str) -> bool:
    """True when a reply's code is the customer's with digits added (one contains the other) or at most
    MAX_CHANGED_DIGITS changed (same length)."""
    if customer_digits in reply_digits or reply_digits in customer_digits:
        return True
    same_length = len(reply_digits) == len(customer_digits)
    return (
        same_length and sum(a != b for a, b in zip(reply_digits, customer_digits, strict=True)) <= MAX_CHANGED_DIGITS
    )


def repair_codes(reply: str, customer_texts: Sequence[str]) -> tuple[str, int, list[str]]:
    """A training reply's order-, invoice- and tracking-like codes checked against the ones the customer wrote: a code
    that is the customer's with digits added or changed becomes the customer's exact code. Returns the reply, how
    many codes were replaced, and the other codes of a reply to a customer who gave one (the row swaps the customer's
    id for an invented one). Codes inside URLs and e-mail addresses are not read; where the customer gave no code, a
    code the agent issues (a case number) is left as it is."""
    given = {_digits(m.group(0)): m.group(0) for t in customer_texts for m in CODE.finditer(t)}
    given = {d: code for d, code in given.items() if len(d) >= MIN_CODE_DIGITS}
    if not given:
        return reply, 0, []
    links = [m.span() for pattern in (URL, EMAIL) for m in pattern.finditer(reply)]
    fixed, unexplained = 0, []

    def replace(match: re.Match[str]) -> str:
        nonlocal fixed
        digits = _digits(match.group(0))
        inside_link = any(start <= match.start() < end for start, end in links)
        if len(digits) < MIN_CODE_DIGITS or digits in given or inside_link:
            return match.group(0)
        near = [code for d, code in given.items() if _near(digits, d)]
        if len(near) == 1:
            fixed += 1
            return near[0]
        unexplained.append(match.group(0))
        return match.group(0)

    return CODE.sub(replace, reply), fixed, unexplained

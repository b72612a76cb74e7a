"""PII scrubbing for prepare: e-mail addresses, phone numbers, payment cards, IBANs, IP addresses and the user's own
identifier patterns become typed {{placeholders}}; only counts by type are kept, never the values."""

from __future__ import annotations

import ipaddress
import re
from collections import Counter
from collections.abc import Callable
from typing import Any

import phonenumbers
from phonenumbers import Leniency

from supportbench.files import SupportBenchError, read_bundled_yaml, read_user_yaml

EMAIL = re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)*\.[A-Za-z]{2,}\b")
CARD = re.compile(r"\b\d(?:[ -]?\d){12,18}\b")
IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}\b")
# v4 | v6
IP = re.compile(r"\b\d{1,3}(?:\.\d{1,3}){3}\b|(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])")


def luhn_valid(digits: str) -> bool:
    """The Luhn checksum that every payment-card number carries."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch) * (2 if i % 2 else 1)
        total += d - 9 if d > 9 else d
    return total % 10 == 0


def card_valid(text: str) -> bool:
    """A payment-card number: 13 to 19 digits, a card network's first digit (2-6), and a valid Luhn checksum."""
    digits = re.sub(r"\D", "", text)
    return 13 <= len(digits) <= 19 and digits[0] in "23456" and luhn_valid(digits)


def iban_valid(text: str) -> bool:
    """The ISO 13616 mod-97 check of an IBAN."""
    compact = text.replace(" ", "")
    rotated = compact[4:] + compact[:4]
    return int("".join(str(int(ch, 36)) for ch in rotated)) % 97 == 1


def _ip_valid(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


REGEX_DETECTORS: dict[str, tuple[re.Pattern[str], Callable[[str], bool]]] = {
    "email": (EMAIL, lambda _: True),
    "card": (CARD, card_valid),
    "iban": (IBAN, iban_valid),
    "ip": (IP, _ip_valid),
}


def load_rules(extra: str | None = None) -> dict[str, Any]:
    """The bundled pii_rules.yaml with a user's rules file merged over it, checked."""
    rules = read_bundled_yaml("supportbench.prepare", "pii_rules.yaml")
    if extra:
        user = read_user_yaml(extra, "PII rules file") or {}
        if (
            not isinstance(user, dict)
            or set(user) - {"placeholders", "patterns"}
            or not all(isinstance(user.get(key) or {}, dict) for key in ("placeholders", "patterns"))
        ):
            raise SupportBenchError(f"{extra}: a PII rules file holds `placeholders` and `patterns` mappings only")
        for key in ("placeholders", "patterns"):
            rules[key].update(user.get(key) or {})
    for name, rule in rules["patterns"].items():
        if not isinstance(rule, dict) or not all(isinstance(rule.get(k), str) for k in ("regex", "placeholder")):
            raise SupportBenchError(f"PII pattern {name!r} needs a `regex` and a `placeholder`, both text")
        try:
            rule["compiled"] = re.compile(rule["regex"], re.IGNORECASE)
        except re.error as err:
            raise SupportBenchError(f"PII pattern {name!r}: invalid regular expression ({err})") from None
    return rules


class Scrubber:
    """Replaces personal data in text with typed placeholders and counts what it found, by type."""

    def __init__(self, rules: dict[str, Any], phone_regions: list[str]):
        self.rules, self.phone_regions, self.found = rules, [r.upper() for r in phone_regions], Counter()

    def _placeholder(self, kind: str) -> str:
        return "{{" + self.rules["placeholders"][kind] + "}}"

    def _sub(
        self, text: str, kind: str, pattern: re.Pattern[str], valid: Callable[[str], bool], placeholder: str
    ) -> str:
        def replace(match: re.Match[str]) -> str:
            if not valid(match.group(0)):
                return match.group(0)
            self.found[kind] += 1
            if "value" not in match.re.groupindex:
                return placeholder
            start, end = match.span("value")  # a rule's context words ("order #") stay; only the value goes
            whole = match.group(0)
            return whole[: start - match.start()] + placeholder + whole[end - match.start() :]

        return pattern.sub(replace, text)

    def _phones(self, text: str) -> str:
        """Phone numbers, for recall: valid national numbers of every named region, and any possible number written
        with an explicit country code (libphonenumber's VALID leniency rejects ranges reserved for fiction)."""
        spans = {
            (m.start, m.end) for region in self.phone_regions for m in phonenumbers.PhoneNumberMatcher(text, region)
        }
        possible = phonenumbers.PhoneNumberMatcher(text, self.phone_regions[0], leniency=Leniency.POSSIBLE)
        spans |= {(m.start, m.end) for m in possible if m.raw_string.startswith("+")}
        kept: list[tuple[int, int]] = []
        for start, end in sorted(spans, key=lambda s: (s[0], -s[1])):  # overlapping matches: the first, longest one
            if not kept or start >= kept[-1][1]:
                kept.append((start, end))
        for start, end in reversed(kept):
            self.found["phone"] += 1
            text = text[:start] + self._placeholder("phone") + text[end:]
        return text

    def __call__(self, text: str) -> str:
        """The text with every detected value replaced by its placeholder."""
        for kind, (pattern, valid) in REGEX_DETECTORS.items():  # before phones: an e-mail's digits are no phone number
            text = self._sub(text, kind, pattern, valid, self._placeholder(kind))
        text = self._phones(text)
        for name, rule in self.rules["patterns"].items():
            text = self._sub(text, name, rule["compiled"], lambda _: True, "{{" + rule["placeholder"] + "}}")
        return text

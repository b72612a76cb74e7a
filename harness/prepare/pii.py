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
# words that name the digits after them an id, not a phone number ("order 0123456")
ID_BEFORE = re.compile(
    r"(?i)\b(order|purchase|invoice|tracking|account|acct|ref(erence)?|ticket|case|code|id|no\.?|number)\W*$|#\s*$"
)
IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}\b")
# v4 | v6
IP = re.compile(r"\b\d{1,3}(?:\.\d{1,3}){3}\b|(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])")


def national_prefix(region: str) -> str | None:
    """The trunk prefix a region's numbers are dialled with nationally (GB 0), or None where there is none or it is
    the country code itself (NANP: 1), so a bare digit string is not taken for a phone number."""
    metadata = phonenumbers.PhoneMetadata.metadata_for_region(region)
    prefix = metadata.national_prefix if metadata else None
    return prefix if prefix and prefix != str(metadata.country_code) else None


def full(match: phonenumbers.PhoneNumberMatch) -> bool:
    """A number of a full national length (not one that could only be dialled locally, like a 7-digit code)."""
    reason = phonenumbers.is_possible_number_with_reason(match.number)
    return reason == phonenumbers.ValidationResult.IS_POSSIBLE


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
        # this example's removed values and their placeholders, in memory only (never written)
        self.removed: dict[str, str] = {}

    def take_removed(self) -> dict[str, str]:
        """The values removed since the last call, each with its placeholder, and forget them."""
        removed, self.removed = self.removed, {}
        return removed

    @staticmethod
    def everywhere(text: str, removed: dict[str, str]) -> str:
        """A text with every value removed elsewhere in its example replaced too (a name the query gave after "my
        name is" and the reply repeats), longest first."""
        for value in sorted(removed, key=len, reverse=True):
            text = text.replace(value, removed[value])
        return text

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
                self.removed[match.group(0)] = placeholder
                return placeholder
            self.removed[match.group("value")] = placeholder
            start, end = match.span("value")  # a rule's context words ("order #") stay; only the value goes
            whole = match.group(0)
            return whole[: start - match.start()] + placeholder + whole[end - match.start() :]

        return pattern.sub(replace, text)

    def _phones(self, text: str) -> str:
        """Phone numbers, for recall: valid numbers of every named region; any possible number written with an
        explicit country code; and any possible number of a named region written in its national format, with the
        region's trunk prefix (GB `020 7946 0958`, `07700 900123`: libphonenumber's VALID leniency rejects ranges
        reserved for fiction). Regions whose trunk prefix is their country code (the US's 1) keep VALID only, so
        order numbers are not read as phones."""
        spans = set()
        for region in self.phone_regions:
            spans |= {(m.start, m.end) for m in phonenumbers.PhoneNumberMatcher(text, region)}
            prefix = national_prefix(region)
            possible = phonenumbers.PhoneNumberMatcher(text, region, leniency=Leniency.POSSIBLE)
            spans |= {
                (m.start, m.end)
                for m in possible
                if m.raw_string.startswith("+")
                or (
                    prefix
                    and m.raw_string.lstrip("(").startswith(prefix)
                    and full(m)
                    and not ID_BEFORE.search(text[max(0, m.start - 30) : m.start])
                )
            }
        kept: list[tuple[int, int]] = []
        for start, end in sorted(spans, key=lambda s: (s[0], -s[1])):  # overlapping matches: the first, longest one
            if not kept or start >= kept[-1][1]:
                kept.append((start, end))
        for start, end in reversed(kept):
            self.found["phone"] += 1
            self.removed[text[start:end]] = self._placeholder("phone")
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


def measure(rules: dict[str, Any], phone_regions: list[str]) -> dict[str, Any]:
    """Recall and precision of the scrub per kind on the bundled planted values (pii_benchmark.yaml), with these
    rules and phone regions: recall, the planted values it removed; precision, the share of its detections of a kind
    that were planted values of that kind; and the values that must survive (order numbers, amounts) that did."""
    scrub = Scrubber(rules, phone_regions)
    planted: Counter[str] = Counter()
    removed: Counter[str] = Counter()
    missed: dict[str, list[str]] = {}
    keep = kept = 0
    for item in read_bundled_yaml("supportbench.prepare", "pii_benchmark.yaml")["texts"]:
        out = scrub(item["text"])
        for kind, values in item["planted"].items():
            for value in values:
                planted[kind] += 1
                if value in out:
                    missed.setdefault(kind, []).append(value)
                else:
                    removed[kind] += 1
        keep += len(item.get("keep", []))
        kept += sum(value in out for value in item.get("keep", []))
    return {
        "phone_regions": phone_regions,
        "kinds": {
            kind: {
                "planted": planted[kind],
                "removed": removed[kind],
                "missed": missed.get(kind, []),
                "recall": removed[kind] / planted[kind],
                "precision": min(removed[kind], scrub.found[kind]) / scrub.found[kind] if scrub.found[kind] else None,
            }
            for kind in sorted(planted)
        },
        "detections": dict(sorted(scrub.found.items())),
        "kept_values": {"must_survive": keep, "survived": kept},
    }

"""The company profile: the values of the company slots (slots.yaml), given with --profile to eval, bench, app and
export; the bundled profile.yaml holds the values `prepare --facts fill` writes. No torch import."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from supportbench.facts.slots import vocabulary
from supportbench.files import SupportBenchError, read_user_yaml, read_yaml
from supportbench.layout import SplitDir

BUNDLED = "the bundled profile.yaml"
POLICY_KEY = "policy"  # the reply policy's block; every other key is a company slot


@dataclass(frozen=True)
class Profile:
    """Company slot values, with where they came from, the file's text and the sha256 of its bytes (recorded in the
    run)."""

    values: dict[str, str]
    source: str
    sha256: str
    text: str
    policy: dict[str, Any] | None = None  # the `policy:` block, read by supportbench.serve.policy

    def require(self, names: list[str], why: str) -> None:
        """Refuse a profile that lacks any of these company slots, listing every missing one."""
        missing = [name for name in names if name not in self.values]
        if missing:
            raise SupportBenchError(f"the company profile {self.source} lacks {', '.join(missing)}, which {why}")

    def record(self) -> dict[str, Any]:
        """Where the profile came from and its hash, for metrics.json, bench and export records."""
        return {"source": self.source, "sha256": self.sha256}


def load_profile(path: str | Path | None = None) -> Profile:
    """A profile file (or the bundled one), checked: a flat mapping of declared company slots to text."""
    if path is None:
        data = resources.files("supportbench.facts").joinpath("profile.yaml").read_bytes()
        parsed, source = read_yaml(data.decode("utf-8"), BUNDLED), BUNDLED
    else:
        parsed, source = read_user_yaml(path, "company profile"), str(path)
        data = Path(path).read_bytes()
    if not isinstance(parsed, dict):
        raise SupportBenchError(f"company profile {source} must be a YAML mapping of slot: value")
    policy = parsed.pop(POLICY_KEY, None)
    if policy is not None and not isinstance(policy, dict):
        raise SupportBenchError(
            f"company profile {source}: `{POLICY_KEY}:` must be a mapping (see the bundled profile)"
        )
    if not all(isinstance(v, (str, int, float)) for v in parsed.values()):
        raise SupportBenchError(
            f"company profile {source} must map each slot to a value (a flat mapping, beside `{POLICY_KEY}:`)"
        )
    company = vocabulary().names("company")
    unknown = [str(k) for k in parsed if str(k) not in company]
    if unknown:
        raise SupportBenchError(
            f"company profile {source}: {', '.join(unknown)} are not company slots; the slots are {', '.join(company)}"
        )
    values = {str(k): str(v) for k, v in parsed.items()}
    return Profile(values, source, hashlib.sha256(data).hexdigest(), data.decode("utf-8"), policy)


def emitted_company_slots(split: SplitDir) -> list[str]:
    """The company slots that a split's training replies kept as slots (prepare --facts slots): the ones a model
    trained on it can emit; none for a split prepared with --facts fill."""
    return split.manifest().get("placeholders", {}).get("company_slots", [])


def profile_for_run(split: SplitDir, path: str | Path | None) -> Profile:
    """The profile to fill a run's replies with, refused at startup when it lacks a slot the run's model can emit."""
    profile = load_profile(path)
    profile.require(emitted_company_slots(split), f"the training replies of {split.path} use")
    return profile

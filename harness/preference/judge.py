"""A model judge over any OpenAI-compatible chat endpoint (a hosted API, vLLM, Ollama, llama.cpp's server, or
SupportBench's own /v1), asked about every pair twice with the order swapped (MT-Bench): a disagreement is a tie.
Answers that name no verdict are counted, never guessed; transport errors are retried with backoff by the openai
client and then recorded. The API key is read from an environment variable and written nowhere."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ConfigDict, field_validator

from supportbench.files import SupportBenchError, read_bundled_yaml, read_user_yaml
from supportbench.layout import Record
from supportbench.preference.store import Pair, PreferenceStore

RETRIES = 3  # the openai client's, with its exponential backoff
TIMEOUT_S = 120.0
SWAPPED = {"A": "B", "B": "A", "tie": "tie"}


class Rubric(Record):
    """What the judge is told: a system message, a prompt with {query}, {reply_a} and {reply_b}, and the verdict
    words it may answer with (word: A, B or tie)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    system: str
    prompt: str
    verdicts: dict[str, str]

    @field_validator("prompt")
    @classmethod
    def _fields(cls, prompt: str) -> str:
        missing = [f for f in ("{query}", "{reply_a}", "{reply_b}") if f not in prompt]
        if missing:
            raise ValueError(f"needs {', '.join(missing)}")
        return prompt

    @field_validator("verdicts")
    @classmethod
    def _verdicts(cls, verdicts: dict[str, str]) -> dict[str, str]:
        if sorted(set(verdicts.values())) != ["A", "B", "tie"]:
            raise ValueError("must map verdict words to each of A, B and tie")
        return verdicts


def load_rubric(path: str | None) -> Rubric:
    """The bundled rubric, or a user's YAML file, checked."""
    data = (
        read_user_yaml(path, "judge rubric")
        if path
        else read_bundled_yaml("supportbench.preference", "judge_rubric.yaml")
    )
    return Rubric.check(Path(path or "the bundled judge_rubric.yaml"), data)


def parse_verdict(answer: str, rubric: Rubric) -> str | None:
    """The verdict an answer names (A, B or tie), or None when it names none, or more than one."""
    words = {
        rubric.verdicts[w.upper()] for w in re.findall(r"[A-Za-z]+", answer or "") if w.upper() in rubric.verdicts
    }
    return next(iter(words)) if len(words) == 1 else None


def client_for(endpoint: str, api_key_env: str | None) -> Any:
    """The openai client for an endpoint (its base URL, /v1 included); the key from the named variable only."""
    from openai import OpenAI

    key = "not-needed"  # local servers take any key
    if api_key_env:
        key = os.environ.get(api_key_env) or ""
        if not key:
            raise SupportBenchError(f"--api-key-env {api_key_env}: the environment variable is not set or empty")
    return OpenAI(base_url=endpoint, api_key=key, max_retries=RETRIES, timeout=TIMEOUT_S)


def ask(client: Any, model: str, rubric: Rubric, query: str, first: str, second: str) -> dict[str, Any]:
    """One question to the judge: its verdict on (first as A, second as B), its raw answer, or the error."""
    from openai import APIError

    messages = [
        {"role": "system", "content": rubric.system},
        {"role": "user", "content": rubric.prompt.format(query=query, reply_a=first, reply_b=second)},
    ]
    try:
        response = client.chat.completions.create(model=model, messages=messages, temperature=0, max_tokens=16)
    except APIError as err:
        return {"verdict": None, "answer": None, "error": f"{type(err).__name__}: {err}"[:300]}
    answer = response.choices[0].message.content or ""
    return {"verdict": parse_verdict(answer, rubric), "answer": answer[:300], "error": None}


def judge_pairs(
    store: PreferenceStore, pairs: Sequence[Pair], client: Any, model: str, rubric: Rubric
) -> dict[str, Any]:
    """Ask about each pair in both orders; store the judge's vote (a tie where the orders disagree) as the rater
    judge:MODEL; count position flips, unparseable answers and errors."""
    rater = f"judge:{model}"
    records, counts = [], {"pairs": len(pairs), "votes_stored": 0, "position_flips": 0, "unparseable": 0, "errors": 0}
    for pair in pairs:
        shown = ask(client, model, rubric, pair.query, pair.reply_a, pair.reply_b)
        swapped = ask(client, model, rubric, pair.query, pair.reply_b, pair.reply_a)
        counts["errors"] += (shown["error"] is not None) + (swapped["error"] is not None)
        counts["unparseable"] += sum(a["error"] is None and a["verdict"] is None for a in (shown, swapped))
        record = {"pair": pair.id, "as_shown": shown, "swapped": swapped, "choice": None}
        if shown["verdict"] is not None and swapped["verdict"] is not None:
            back = SWAPPED[swapped["verdict"]]  # the swapped answer in the pair's own A/B terms
            record["choice"] = shown["verdict"] if shown["verdict"] == back else "tie"
            counts["position_flips"] += shown["verdict"] != back
            store.vote(pair.id, rater, record["choice"])
            counts["votes_stored"] += 1
        records.append(record)
    decided = counts["votes_stored"]
    return {
        "judge": rater,
        **counts,
        "position_flip_rate": counts["position_flips"] / decided if decided else None,
        "answers": records,
    }


def pairs_to_judge(store: PreferenceStore, count: int) -> list[Pair]:
    """Up to `count` stored pairs, those people voted on first (so the judge can be set beside them)."""
    votes = store.votes()
    human = [v["pair"] for v in votes if not v["rater"].startswith("judge:")]
    ordered = list(dict.fromkeys([*human, *store.pair_ids()]))
    return [store.pair(i) for i in ordered[:count]]

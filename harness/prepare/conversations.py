"""Multi-turn input for prepare: chat transcripts (`messages` lists) and flat message tables (a thread id or
reply-to links) become one example per agent reply, with the turns before it as history."""

from __future__ import annotations

from collections import defaultdict
from itertools import dropwhile
from typing import Any

from supportbench.config import OPTIONAL_COLUMNS
from supportbench.files import SupportBenchError
from supportbench.templates import MAX_HISTORY_TURNS

USER_ROLES = {"user", "customer", "client", "human", "inbound", "true", "1"}
AGENT_ROLES = {"assistant", "agent", "support", "bot", "outbound", "false", "0"}
Numbered = list[tuple[int, dict[str, Any]]]


def input_format(columns: list[str]) -> str:
    """messages (chat transcripts), threads (one message per row) or pairs (instruction and response columns)."""
    if "messages" in columns:
        return "messages"
    if "text" in columns and ("conversation" in columns or "reply_to" in columns):
        return "threads"
    return "pairs"


def _examples(dialogue: list[tuple[str, str]], base: dict[str, Any], key: str, source_row: list[int]) -> Numbered:
    """One example per agent turn of a dialogue that alternates customer, agent, customer, ..."""
    examples = []
    for i in range(1, len(dialogue), 2):
        # the app keeps as many past exchanges, so older ones never reach a prompt: storing them is quadratic waste
        first = max(0, i - 1 - 2 * MAX_HISTORY_TURNS)
        history = [[dialogue[j][1], dialogue[j + 1][1]] for j in range(first, i - 1, 2)]
        example = {**base, "instruction": dialogue[i - 1][1], "response": dialogue[i][1], "history": history}
        examples.append((source_row[i], {**example, "_id": f"{key}-turn-{i // 2 + 1}", "conversation": key}))
    return examples


def _message_problem(message: Any) -> str | None:
    if not isinstance(message, dict) or "role" not in message or "content" not in message:
        return "malformed message: needs role and content"
    if message["role"] not in ("system", "user", "assistant"):
        return f"unknown role {str(message['role'])[:20]!r}"
    if not isinstance(message["content"], str) or not message["content"].strip():
        return "empty content"
    return None


def from_messages(records: Numbered, report: Any) -> Numbered:
    """Examples from chat transcripts; a malformed conversation is skipped whole, with its reason."""
    examples: Numbered = []
    for number, record in records:
        messages = record.get("messages")
        if not isinstance(messages, list) or not messages:
            report.skip(number, "malformed conversation: messages is not a non-empty list")
            continue
        problem = next(filter(None, map(_message_problem, messages)), None)
        if problem:
            report.skip(number, problem)
            continue
        dialogue = [(m["role"], m["content"].strip()) for m in dropwhile(lambda m: m["role"] == "system", messages)]
        if "assistant" not in (role for role, _ in dialogue):
            report.skip(number, "no assistant turn")
            continue
        if any(role != ("user" if i % 2 == 0 else "assistant") for i, (role, _) in enumerate(dialogue)):
            report.skip(number, "role order is not user/assistant alternation")
            continue
        base = {k: record.get(k) for k in OPTIONAL_COLUMNS}
        examples += _examples(dialogue, base, f"row-{number}", [number] * len(dialogue))
    return examples


def _order_key(value: Any) -> float:
    """A number, or a date or timestamp in any common spelling, as a sortable number."""
    try:
        return float(value)
    except (TypeError, ValueError):
        pass
    from dateutil import parser

    try:
        return parser.parse(str(value)).timestamp()
    except (ValueError, OverflowError):
        raise SupportBenchError(
            f"the order column holds {str(value)[:40]!r}, which is neither a number nor a date"
        ) from None


def message_key(value: Any) -> str:
    """A message id as text; "3.0" (an integer id written through a float column) reads as "3"."""
    text = str(value if value is not None else "").strip()
    return text[:-2] if text.endswith(".0") and text[:-2].isdigit() else text


def thread_roots(rows: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Each message's first message of its reply chain (a reply whose parent is not in the file starts its own
    thread; a cycle is cut where it closes), in one walk over every chain: linear in the messages."""
    roots: dict[str, str] = {}
    for start in rows:
        path, seen, message_id = [], set(), start
        while message_id not in roots:
            path.append(message_id)
            seen.add(message_id)
            parent = message_key(rows[message_id].get("reply_to"))
            if parent not in rows or parent in seen:
                roots[message_id] = message_id
                break
            message_id = parent
        root = roots[message_id]
        for member in path:
            roots[member] = root
    return roots


def from_threads(records: Numbered, report: Any) -> Numbered:
    """Examples from a table of messages grouped by a thread id or linked by reply-to ids, in the order column's
    order; consecutive messages of one side are joined, and messages that cannot be in an exchange are skipped."""
    messages: Numbered = []
    for number, row in records:
        role = str(row.get("role", "")).strip().casefold()
        if not str(row.get("text") or "").strip():
            report.skip(number, "empty field: text")
        elif role not in USER_ROLES | AGENT_ROLES:
            report.skip(number, f"unknown role {role[:20]!r}")
        else:
            messages.append((number, {**row, "role": "user" if role in USER_ROLES else "assistant"}))
    if messages and "conversation" not in messages[0][1]:
        by_id = {message_key(row["message_id"]): row for _, row in messages}
        roots = thread_roots(by_id)
        thread_of = {number: roots[message_key(row["message_id"])] for number, row in messages}
    else:
        thread_of = {number: str(row["conversation"]) for number, row in messages}
    threads: dict[str, Numbered] = defaultdict(list)
    for number, row in messages:
        threads[thread_of[number]].append((number, row))
    examples: Numbered = []
    for thread, members in threads.items():
        if "order" in members[0][1]:
            members.sort(key=lambda m: (_order_key(m[1]["order"]), m[0]))
        while members and members[0][1]["role"] == "assistant":
            report.skip(members.pop(0)[0], "agent message before any customer message")
        turns: list[tuple[str, str, list[int]]] = []  # role, text, the rows joined into it
        for number, row in members:
            text = str(row["text"]).strip()
            if turns and turns[-1][0] == row["role"]:
                turns[-1] = (row["role"], f"{turns[-1][1]}\n{text}", [*turns[-1][2], number])
            else:
                turns.append((row["role"], text, [number]))
        if turns and turns[-1][0] == "user":
            for number in turns.pop()[2]:
                report.skip(number, "customer message that no agent answered")
        dialogue = [(role, text) for role, text, _ in turns]
        base = {k: members[0][1].get(k) for k in OPTIONAL_COLUMNS} if members else {}
        examples += _examples(dialogue, base, f"thread-{thread}", [rows[0] for _, _, rows in turns])
    return examples

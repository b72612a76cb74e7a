"""An OpenAI-compatible `POST /v1/chat/completions` (streaming and not) and `GET /v1/models` on the assistant."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import closing
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, StreamingResponse

from supportbench.files import SupportBenchError
from supportbench.serve.assistant import Assistant, Chunk
from supportbench.templates import Turn

MODELS = {"supportbench": True, "supportbench-base": False}  # model name -> fine-tuned?
MAX_TOKENS_LIMIT = 512
MAX_BODY_BYTES = 1 << 20  # 1 MiB: 20 turns of history at the assistant's character caps fit well inside
ROLES = ("system", "user", "assistant")


@dataclass
class ChatRequest:
    """A validated chat-completions request."""

    model: str
    history: list[Turn]
    query: str
    max_tokens: int | None  # none: the run's reply budget, as in the app
    stream: bool


def _content(message: dict[str, Any], index: int) -> str:
    content = message.get("content")
    if isinstance(content, list):  # typed parts: [{"type": "text", "text": ...}]
        texts = [p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text"]
        content = "".join(texts) if all(isinstance(text, str) for text in texts) else None
    if not isinstance(content, str):
        raise SupportBenchError(f"messages[{index}].content must be a string or a list of text parts with string text")
    try:
        content.encode("utf-8")
    except UnicodeEncodeError:
        raise SupportBenchError(f"messages[{index}].content holds a lone surrogate, which is not text") from None
    return content


def parse_chat_request(body: Any) -> ChatRequest:
    """Check a request body; system messages are ignored (the run's template has its own system prompt)."""
    if not isinstance(body, dict):
        raise SupportBenchError("the request body must be a JSON object")
    model = body.get("model", "supportbench")
    if not isinstance(model, str) or model not in MODELS:
        raise SupportBenchError(f"unknown model {model!r}; choose one of {', '.join(MODELS)}")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise SupportBenchError("messages must be a non-empty list")
    dialogue = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise SupportBenchError(f"messages[{index}].role must be one of {', '.join(ROLES)}")
        if message["role"] != "system":
            dialogue.append((message["role"], _content(message, index)))
    if not dialogue or dialogue[-1][0] != "user":
        raise SupportBenchError("the last non-system message must come from the user")
    expected = ["user", "assistant"] * len(dialogue)
    if [role for role, _ in dialogue] != expected[: len(dialogue)]:
        raise SupportBenchError("user and assistant messages must alternate, starting with the user")
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is not None and (
        not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or not 1 <= max_tokens <= MAX_TOKENS_LIMIT
    ):
        raise SupportBenchError(f"max_tokens must be an integer from 1 to {MAX_TOKENS_LIMIT}, not {max_tokens!r}")
    if not isinstance(body.get("stream", False), bool):
        raise SupportBenchError("stream must be true or false")
    turns = [Turn(dialogue[i][1], dialogue[i + 1][1]) for i in range(0, len(dialogue) - 1, 2)]
    return ChatRequest(model, turns, dialogue[-1][1], max_tokens, body.get("stream", False))


def _envelope(
    request: ChatRequest, completion_id: str, created: int, kind: str, choice: dict[str, Any]
) -> dict[str, Any]:
    return {"id": completion_id, "object": kind, "created": created, "model": request.model, "choices": [choice]}


def _usage(chunk: Chunk) -> dict[str, int]:
    return {
        "prompt_tokens": chunk.prompt_tokens,
        "completion_tokens": chunk.completion_tokens,
        "total_tokens": chunk.prompt_tokens + chunk.completion_tokens,
    }


def _policy(chunk: Chunk) -> dict[str, Any]:
    """The extension field: why the reply is what it is (the reply policy's reason code) and what it changed."""
    return {"supportbench": {"policy": {"reason": chunk.reason, "changes": list(chunk.changes)}}}


def complete(assistant: Assistant, request: ChatRequest) -> dict[str, Any]:
    """A whole `chat.completion` object."""
    cap = request.max_tokens or assistant.decoding.max_new_tokens
    *_, last = assistant.generate(request.history, request.query, MODELS[request.model], cap)
    message = {"role": "assistant", "content": last.text}
    body = _envelope(
        request,
        f"chatcmpl-{uuid.uuid4().hex}",
        int(time.time()),
        "chat.completion",
        {"index": 0, "message": message, "finish_reason": last.finish_reason},
    )
    return {**body, "usage": _usage(last), **_policy(last)}


def stream_events(assistant: Assistant, request: ChatRequest, cancel: threading.Event | None = None) -> Iterator[str]:
    """Server-sent `chat.completion.chunk` events: the role, text deltas, the finish reason with usage, then [DONE];
    setting `cancel` stops the generation at its next token."""
    completion_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

    def event(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> str:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        return f"data: {json.dumps({**_envelope(request, completion_id, created, 'chat.completion.chunk', choice), **extra})}\n\n"

    yield event({"role": "assistant", "content": ""})
    sent = ""
    cap = request.max_tokens or assistant.decoding.max_new_tokens
    with closing(assistant.generate(request.history, request.query, MODELS[request.model], cap, cancel)) as chunks:
        for chunk in chunks:
            if chunk.text.startswith(sent) and len(chunk.text) > len(sent):
                yield event({"content": chunk.text[len(sent) :]})
                sent = chunk.text
            if chunk.finish_reason:
                yield event({}, chunk.finish_reason, usage=_usage(chunk), **_policy(chunk))
    yield "data: [DONE]\n\n"


DISCONNECT_POLL_S = 0.2


async def until_disconnect(http: Request, events: Iterator[str], cancel: threading.Event) -> AsyncIterator[str]:
    """The events of a stream, sent until the client leaves: a watcher polls for the disconnect and sets `cancel`, so
    the generation stops at its next token however the response ends (never left to the garbage collector)."""

    async def watch() -> None:
        while not cancel.is_set():
            if await http.is_disconnected():
                cancel.set()
            await asyncio.sleep(DISCONNECT_POLL_S)

    watcher = asyncio.ensure_future(watch())
    try:
        while (event := await run_in_threadpool(next, events, None)) is not None:
            yield event
    finally:
        cancel.set()
        watcher.cancel()


async def read_body(http: Request) -> Any:
    """The request's JSON body, refused with a reason when it is too large, not UTF-8, not JSON or nested too deep."""
    size = 0
    chunks = []
    async for chunk in http.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise SupportBenchError(f"the request body is over {MAX_BODY_BYTES:,} bytes")
        chunks.append(chunk)
    try:
        return json.loads(b"".join(chunks).decode("utf-8"))
    except UnicodeDecodeError:
        raise SupportBenchError("the request body is not UTF-8 text") from None
    except json.JSONDecodeError:
        raise SupportBenchError("the request body is not valid JSON") from None
    except RecursionError:
        raise SupportBenchError("the request body is nested too deeply") from None


def openai_routes(assistant: Assistant) -> APIRouter:
    """A FastAPI router with the OpenAI-compatible routes; errors use OpenAI's error object and status 400."""
    router = APIRouter(prefix="/v1")

    def error(message: str) -> JSONResponse:
        return JSONResponse(
            {"error": {"message": message, "type": "invalid_request_error", "code": None}}, status_code=400
        )

    @router.get("/models")
    def models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [{"id": name, "object": "model", "owned_by": "supportbench"} for name in MODELS],
        }

    @router.post("/chat/completions")
    async def chat_completions(http: Request) -> Any:
        try:
            request = parse_chat_request(await read_body(http))
            # the prompt must fit before a stream starts: afterwards an error could only drop the connection
            cap = request.max_tokens or assistant.decoding.max_new_tokens
            assistant.prompt(assistant.clean_history(request.history), assistant.check_query(request.query), cap)
        except SupportBenchError as err:
            return error(str(err))
        if request.stream:
            cancel = threading.Event()
            events = until_disconnect(http, stream_events(assistant, request, cancel), cancel)
            return StreamingResponse(events, media_type="text/event-stream")
        try:
            return await run_in_threadpool(complete, assistant, request)
        except SupportBenchError as err:
            return error(str(err))

    return router

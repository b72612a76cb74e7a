"""An OpenAI-compatible `POST /v1/chat/completions` (streaming and not) and `GET /v1/models` on the assistant."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
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
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    if not isinstance(content, str):
        raise SupportBenchError(f"messages[{index}].content must be a string or a list of text parts")
    return content


def parse_chat_request(body: Any) -> ChatRequest:
    """Check a request body; system messages are ignored (the run's template has its own system prompt)."""
    if not isinstance(body, dict):
        raise SupportBenchError("the request body must be a JSON object")
    model = body.get("model", "supportbench")
    if model not in MODELS:
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
    return {**body, "usage": _usage(last)}


def stream_events(assistant: Assistant, request: ChatRequest) -> Iterator[str]:
    """Server-sent `chat.completion.chunk` events: the role, text deltas, the finish reason with usage, then [DONE]."""
    completion_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

    def event(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> str:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        return f"data: {json.dumps({**_envelope(request, completion_id, created, 'chat.completion.chunk', choice), **extra})}\n\n"

    yield event({"role": "assistant", "content": ""})
    sent = ""
    cap = request.max_tokens or assistant.decoding.max_new_tokens
    for chunk in assistant.generate(request.history, request.query, MODELS[request.model], cap):
        if chunk.text.startswith(sent) and len(chunk.text) > len(sent):
            yield event({"content": chunk.text[len(sent) :]})
            sent = chunk.text
        if chunk.finish_reason:
            yield event({}, chunk.finish_reason, usage=_usage(chunk))
    yield "data: [DONE]\n\n"


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
            request = parse_chat_request(await http.json())
            assistant.check_query(request.query)
        except json.JSONDecodeError:
            return error("the request body is not valid JSON")
        except SupportBenchError as err:
            return error(str(err))
        if request.stream:
            return StreamingResponse(stream_events(assistant, request), media_type="text/event-stream")
        try:
            return await run_in_threadpool(complete, assistant, request)
        except SupportBenchError as err:
            return error(str(err))

    return router

"""A local HTTP server that speaks the Anthropic Messages API and the OpenAI Chat Completions API
with scripted replies, so tests run the real SDK clients (pointed at it with base_url) and the
real code around them.

    async with running_fake_llm() as llm:
        llm.anthropic(message(tool_use("logs_search", {"service": "api"}, id="toolu_1")),
                      message(tool_use("submit", {...})))
        client = anthropic.AsyncAnthropic(api_key="test", base_url=llm.anthropic_base_url)
        ...
        assert llm.bodies(MESSAGES_PATH)[1]["messages"][-1]["content"][0]["type"] == "tool_result"

Each POST takes the next scripted reply for its path (a reply, or a function of the request
body returning one) and every request is recorded. A request with no reply left is answered
with a 400 the SDKs do not retry, so a test that sends more than it scripted fails loudly.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, MutableMapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import uvicorn

from pm_testing.processes import wait_for

MESSAGES_PATH = "/v1/messages"
CHAT_PATH = "/v1/chat/completions"

_ids = itertools.count(1)


@dataclass(frozen=True, slots=True)
class Reply:
    """One scripted HTTP answer."""

    body: Mapping[str, Any]
    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)


Scripted = Reply | Callable[[dict[str, Any]], Reply]


@dataclass(frozen=True, slots=True)
class Recorded:
    """One request the server received."""

    path: str
    headers: Mapping[str, str]
    body: dict[str, Any]


# --- Anthropic Messages API -------------------------------------------------------------------


def text(value: str) -> dict[str, Any]:
    """A text content block."""
    return {"type": "text", "text": value}


def tool_use(name: str, arguments: Mapping[str, Any], *, id: str | None = None) -> dict[str, Any]:
    """A tool_use content block (with a fresh id unless one is given)."""
    return {"type": "tool_use", "id": id or f"toolu_{next(_ids):04d}", "name": name, "input": dict(arguments)}


def message(
    *content: Mapping[str, Any],
    stop_reason: str | None = None,
    model: str = "claude-sonnet-5-5",
    input_tokens: int = 100,
    output_tokens: int = 20,
    cache_creation_input_tokens: int = 0,
    cache_read_input_tokens: int = 0,
) -> Reply:
    """A Messages API response; stop_reason is tool_use when a block is a tool_use, else end_turn."""
    blocks = [dict(block) for block in content]
    reason = stop_reason or ("tool_use" if any(b["type"] == "tool_use" for b in blocks) else "end_turn")
    return Reply(
        {
            "id": f"msg_{next(_ids):04d}",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": blocks,
            "stop_reason": reason,
            "stop_sequence": None,
            "usage": {
                "input_tokens": input_tokens,
                "output_tokens": output_tokens,
                "cache_creation_input_tokens": cache_creation_input_tokens,
                "cache_read_input_tokens": cache_read_input_tokens,
            },
        }
    )


def anthropic_error(status: int, error_type: str, detail: str, *, retry_after_ms: int = 1) -> Reply:
    """An Anthropic error body, e.g. anthropic_error(529, "overloaded_error", "Overloaded").
    retry-after-ms keeps the SDK's retries immediate (it honours the header)."""
    return Reply(
        {"type": "error", "error": {"type": error_type, "message": detail}, "request_id": f"req_{next(_ids):04d}"},
        status=status,
        headers={"retry-after-ms": str(retry_after_ms)},
    )


def overloaded() -> Reply:
    """The Messages API's 529 overloaded_error."""
    return anthropic_error(529, "overloaded_error", "Overloaded")


# --- OpenAI Chat Completions API --------------------------------------------------------------


def chat_completion(
    content: str | None = None,
    *,
    tool_calls: Sequence[tuple[str, str, Mapping[str, Any] | str]] = (),
    finish_reason: str | None = None,
    model: str = "fallback-model",
    prompt_tokens: int = 100,
    completion_tokens: int = 20,
    cached_tokens: int = 0,
) -> Reply:
    """A Chat Completions response; tool_calls are (id, function name, arguments as a mapping or
    as the raw JSON string)."""
    calls = [
        {
            "id": call_id,
            "type": "function",
            "function": {"name": name, "arguments": args if isinstance(args, str) else json.dumps(args)},
        }
        for call_id, name, args in tool_calls
    ]
    message_body: dict[str, Any] = {"role": "assistant", "content": content}
    if calls:
        message_body["tool_calls"] = calls
    return Reply(
        {
            "id": f"chatcmpl-{next(_ids):04d}",
            "object": "chat.completion",
            "created": 1_700_000_000,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": message_body,
                    "finish_reason": finish_reason or ("tool_calls" if calls else "stop"),
                    "logprobs": None,
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
                "prompt_tokens_details": {"cached_tokens": cached_tokens},
            },
        }
    )


def openai_error(status: int, detail: str, *, error_type: str = "server_error", retry_after_ms: int = 1) -> Reply:
    """An OpenAI error body."""
    return Reply(
        {"error": {"message": detail, "type": error_type, "param": None, "code": None}},
        status=status,
        headers={"retry-after-ms": str(retry_after_ms)},
    )


# --- the server ---------------------------------------------------------------------------------

_Scope = MutableMapping[str, Any]
_Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
_Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class FakeLLM:
    """Scripted replies per path, and every request received (an ASGI app run by uvicorn)."""

    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self._scripts: dict[str, deque[Scripted]] = {MESSAGES_PATH: deque(), CHAT_PATH: deque()}
        self.port = 0

    @property
    def anthropic_base_url(self) -> str:
        """base_url for anthropic.AsyncAnthropic (the SDK adds /v1/messages)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def openai_base_url(self) -> str:
        """base_url for openai.AsyncOpenAI (the SDK adds /chat/completions)."""
        return f"http://127.0.0.1:{self.port}/v1"

    def anthropic(self, *replies: Scripted) -> None:
        """Queue replies for POST /v1/messages."""
        self._scripts[MESSAGES_PATH].extend(replies)

    def openai(self, *replies: Scripted) -> None:
        """Queue replies for POST /v1/chat/completions."""
        self._scripts[CHAT_PATH].extend(replies)

    def bodies(self, path: str = MESSAGES_PATH) -> list[dict[str, Any]]:
        """The JSON bodies received on `path`, in order."""
        return [r.body for r in self.requests if r.path == path]

    def unanswered(self, path: str = MESSAGES_PATH) -> int:
        """How many scripted replies for `path` were never asked for."""
        return len(self._scripts.get(path, ()))

    def _next(self, path: str, body: dict[str, Any]) -> Reply:
        script = self._scripts.get(path)
        if not script:
            return Reply(
                {
                    "type": "error",
                    "error": {"type": "invalid_request_error", "message": f"fake LLM: no scripted reply for {path}"},
                },
                status=400,
                headers={"x-should-retry": "false"},
            )
        scripted = script.popleft()
        return scripted(body) if callable(scripted) else scripted

    async def __call__(self, scope: _Scope, receive: _Receive, send: _Send) -> None:
        if scope["type"] != "http":
            return
        chunks: list[bytes] = []
        while True:
            event = await receive()
            chunks.append(event.get("body", b""))
            if not event.get("more_body"):
                break
        raw = b"".join(chunks)
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            body = {"_unparsed": raw.decode("utf-8", "replace")}
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", [])}
        self.requests.append(Recorded(path=scope["path"], headers=headers, body=body))
        reply = self._next(scope["path"], body)
        data = json.dumps(reply.body).encode()
        await send(
            {
                "type": "http.response.start",
                "status": reply.status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(data)).encode()),
                    *[(k.encode("latin-1"), v.encode("latin-1")) for k, v in reply.headers.items()],
                ],
            }
        )
        await send({"type": "http.response.body", "body": data})


@asynccontextmanager
async def running_fake_llm() -> AsyncIterator[FakeLLM]:
    """A FakeLLM serving on a free port of 127.0.0.1 for the duration of the block."""
    fake = FakeLLM()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    fake.port = int(sock.getsockname()[1])
    config = uvicorn.Config(fake, lifespan="off", log_config=None, log_level="warning", access_log=False, ws="none")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))

    async def started() -> bool:
        if task.done():
            task.result()
            raise RuntimeError("the fake LLM server stopped during start-up")
        return server.started

    try:
        await wait_for(started, timeout=10.0, interval=0.01, what="fake LLM server start")
        yield fake
    finally:
        server.should_exit = True
        async with asyncio.timeout(10.0):
            await task
        sock.close()

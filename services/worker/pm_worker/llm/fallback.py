"""The fallback provider: any OpenAI-compatible Chat Completions endpoint (OpenAI itself, or a
self-hosted vLLM, Ollama or llama.cpp server) through the `openai` SDK.

The conversation stays in the Messages format; each request is translated to Chat Completions
(system prompt → a system message, tool_use blocks → assistant tool_calls, tool_result blocks →
tool messages) and the answer back to content blocks, so a step can switch here mid-conversation
and keep every earlier turn. Cache breakpoints have no equivalent and are dropped; cached prompt
tokens the server reports are recorded as cache reads.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, Literal, cast

import openai

from pm_worker.llm.pricing import Usage
from pm_worker.llm.protocol import (
    Block,
    ClientOwner,
    Message,
    ModelRequest,
    ModelTurn,
    ProviderRejected,
    ProviderUnavailable,
    status_error,
)

_STOP_REASONS = {"tool_calls": "tool_use", "stop": "end_turn", "length": "max_tokens", "content_filter": "refusal"}


def _text_of(content: Any) -> str:
    """The text of a Messages-format content (a string or a list of blocks)."""
    if isinstance(content, str):
        return content
    return "\n".join(str(b.get("text", "")) for b in content if isinstance(b, Mapping) and b.get("type") == "text")


def to_chat_messages(system: Sequence[Block], messages: Sequence[Message]) -> list[dict[str, Any]]:
    """Messages-format system blocks and history as Chat Completions messages."""
    chat: list[dict[str, Any]] = []
    system_text = _text_of(list(system))
    if system_text:
        chat.append({"role": "system", "content": system_text})
    for message in messages:
        content = message["content"]
        if message["role"] == "assistant":
            chat.append(_assistant_message(content))
            continue
        if isinstance(content, str):
            chat.append({"role": "user", "content": content})
            continue
        # Tool messages must directly follow the assistant message that made the calls.
        for block in content:
            if block.get("type") == "tool_result":
                text = _text_of(block.get("content", ""))
                chat.append(
                    {
                        "role": "tool",
                        "tool_call_id": block["tool_use_id"],
                        "content": f"ERROR: {text}" if block.get("is_error") else text,
                    }
                )
        text = _text_of(content)
        if text:
            chat.append({"role": "user", "content": text})
    return chat


def _assistant_message(content: Any) -> dict[str, Any]:
    blocks = [{"type": "text", "text": content}] if isinstance(content, str) else list(content)
    calls = [
        {
            "id": block["id"],
            "type": "function",
            "function": {"name": block["name"], "arguments": json.dumps(block.get("input") or {})},
        }
        for block in blocks
        if block.get("type") == "tool_use"
    ]
    message: dict[str, Any] = {"role": "assistant", "content": _text_of(blocks) or None}
    if calls:
        message["tool_calls"] = calls
    return message


def to_chat_tools(tools: Sequence[Block]) -> list[dict[str, Any]]:
    """Messages-format tool definitions as Chat Completions function tools."""
    return [
        {
            "type": "function",
            "function": {
                "name": tool["name"],
                "description": tool.get("description", ""),
                "parameters": tool["input_schema"],
            },
        }
        for tool in tools
    ]


def to_chat_tool_choice(choice: Mapping[str, Any] | None) -> Any:
    """A Messages-format tool_choice as its Chat Completions form (None: leave it out)."""
    if choice is None:
        return None
    kind = choice.get("type")
    if kind == "tool":
        return {"type": "function", "function": {"name": choice["name"]}}
    return {"any": "required", "none": "none"}.get(str(kind), "auto")


def from_chat_message(message: Any) -> list[Block]:
    """A Chat Completions assistant message as Messages-format content blocks. Arguments that are
    not a JSON object are passed on as {"_unparsed_arguments": ...} so schema validation (or the
    tool) reports them to the model instead of this adapter guessing."""
    blocks: list[Block] = []
    if message.content:
        blocks.append({"type": "text", "text": str(message.content)})
    for call in message.tool_calls or []:
        if call.type != "function":
            continue
        raw = call.function.arguments or "{}"
        try:
            arguments = json.loads(raw)
        except ValueError:
            arguments = None
        if not isinstance(arguments, dict):
            arguments = {"_unparsed_arguments": raw}
        blocks.append({"type": "tool_use", "id": call.id, "name": call.function.name, "input": arguments})
    return blocks


class OpenAICompatibleProvider(ClientOwner):
    """Answers Messages-format requests with `AsyncOpenAI.chat.completions.create`."""

    def __init__(
        self,
        *,
        api_key: str,
        base_url: str | None = None,
        max_retries: int = 2,
        timeout_seconds: float = 300.0,
        # OpenAI's reasoning models take only max_completion_tokens; some local servers only max_tokens.
        token_limit_field: Literal["max_completion_tokens", "max_tokens"] = "max_completion_tokens",
    ) -> None:
        self._client = openai.AsyncOpenAI(
            api_key=api_key, base_url=base_url, max_retries=max_retries, timeout=timeout_seconds
        )
        self._token_limit_field = token_limit_field

    @property
    def name(self) -> str:
        return "openai-compatible"

    async def complete(self, request: ModelRequest) -> ModelTurn:
        """One Chat Completions call for a Messages-format request."""
        options: dict[str, Any] = {self._token_limit_field: request.max_tokens}
        choice = to_chat_tool_choice(request.tool_choice)
        if choice is not None:
            options["tool_choice"] = choice
        try:
            completion = await self._client.chat.completions.create(
                model=request.model,
                messages=cast(Any, to_chat_messages(request.system, request.messages)),
                tools=cast(Any, to_chat_tools(request.tools)),
                temperature=request.temperature,
                **options,
            )
        except openai.APIStatusError as exc:
            reason = f"OpenAI-compatible API answered {exc.status_code}: {exc.message}"
            raise status_error(reason, exc.status_code) from exc
        except openai.APIConnectionError as exc:
            raise ProviderUnavailable(f"OpenAI-compatible API unreachable: {exc.message}") from exc
        if not completion.choices:
            raise ProviderRejected("OpenAI-compatible API answered without a choice")
        answer = completion.choices[0]
        content = from_chat_message(answer.message)
        stop = _STOP_REASONS.get(str(answer.finish_reason), str(answer.finish_reason))
        if any(block["type"] == "tool_use" for block in content):
            stop = "tool_use"
        return ModelTurn(
            content=content,
            stop_reason=stop,
            usage=_usage(completion.usage),
            model=completion.model,
            request_id=completion.id,
        )


def _usage(usage: Any) -> Usage:
    if usage is None:
        return Usage(calls=1)
    details = getattr(usage, "prompt_tokens_details", None)
    cached = int(getattr(details, "cached_tokens", 0) or 0)
    return Usage(
        input_tokens=max(0, int(usage.prompt_tokens) - cached),
        output_tokens=int(usage.completion_tokens),
        cache_read_input_tokens=cached,
        calls=1,
    )

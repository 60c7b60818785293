"""The Anthropic Messages API as a ModelProvider, through the `anthropic` SDK.

Transient failures are retried by the SDK itself (`max_retries`, honouring retry-after); what is
still failing after that (overloaded, 5xx, 429, timeouts, lost connections) becomes
`ProviderUnavailable` so the caller can continue on another provider. Other refusals (bad
request, authentication) become `ProviderRejected`.

No `temperature` is sent: the SDK pinned in the lockfile speaks API version 2026-10-21, whose
Messages API has no sampling parameters any more (the SDK's `messages.create` does not accept
them). Steadiness comes from the prompts and the forced structured output instead; the
OpenAI-compatible fallback still sends temperature 0.
"""

from __future__ import annotations

from typing import Any, cast

import anthropic

from pm_worker.llm.pricing import Usage
from pm_worker.llm.protocol import Block, ClientOwner, ModelRequest, ModelTurn, ProviderUnavailable, status_error


def _block(block: Any) -> Block:
    """A response content block as the JSON a later request sends back."""
    if block.type == "text":
        return {"type": "text", "text": block.text}
    if block.type == "tool_use":
        return {"type": "tool_use", "id": block.id, "name": block.name, "input": dict(block.input)}
    dumped: Block = block.model_dump(mode="json", exclude_none=True)
    return dumped


class AnthropicProvider(ClientOwner):
    """Answers requests with `AsyncAnthropic.messages.create`."""

    def __init__(
        self,
        *,
        api_key: str,
        base_url: str | None = None,
        max_retries: int = 2,
        timeout_seconds: float = 300.0,
    ) -> None:
        self._client = anthropic.AsyncAnthropic(
            api_key=api_key, base_url=base_url, max_retries=max_retries, timeout=timeout_seconds
        )

    @property
    def name(self) -> str:
        return "anthropic"

    async def complete(self, request: ModelRequest) -> ModelTurn:
        """One Messages API call; the SDK's typed params are TypedDicts of the same JSON."""
        try:
            message = await self._client.messages.create(
                model=request.model,
                max_tokens=request.max_tokens,
                system=cast(Any, list(request.system)),
                tools=cast(Any, list(request.tools)),
                messages=cast(Any, list(request.messages)),
                tool_choice=cast(Any, dict(request.tool_choice)) if request.tool_choice else anthropic.omit,
            )
        except anthropic.APIStatusError as exc:
            reason = f"Anthropic API answered {exc.status_code} ({exc.type or 'error'}): {exc.api_message or ''}"
            raise status_error(reason, exc.status_code) from exc
        except anthropic.APIConnectionError as exc:
            raise ProviderUnavailable(f"Anthropic API unreachable: {exc.message}") from exc
        usage = message.usage
        return ModelTurn(
            content=[_block(block) for block in message.content],
            stop_reason=str(message.stop_reason or ""),
            usage=Usage(
                input_tokens=usage.input_tokens,
                output_tokens=usage.output_tokens,
                cache_creation_input_tokens=usage.cache_creation_input_tokens or 0,
                cache_read_input_tokens=usage.cache_read_input_tokens or 0,
                calls=1,
            ),
            model=str(message.model),
            request_id=message.id,
        )

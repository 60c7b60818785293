"""The seams of the tool loop: tools in (ToolSpec, ToolRunner), models out (ModelProvider), and
the failures a caller can tell apart.

The conversation is kept in the Anthropic Messages format (content blocks: text, tool_use,
tool_result) whatever provider answers; a provider for another API translates on the way in and
out, so a step can change provider mid-conversation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Protocol, Self

from pm_errors import Internal, Unavailable
from pm_worker.llm.pricing import Usage

# A message or a content block in the Anthropic Messages format, as plain JSON.
Block = dict[str, Any]
Message = dict[str, Any]


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """A tool the model may call: its name, what it does and its input JSON schema."""

    name: str
    description: str
    input_schema: Mapping[str, Any]

    def definition(self) -> dict[str, Any]:
        """The tool definition of the Messages API."""
        return {"name": self.name, "description": self.description, "input_schema": dict(self.input_schema)}


@dataclass(frozen=True, slots=True)
class ToolResult:
    """One tool call's outcome: the id reports cite, the text the model reads, and whether the
    tool failed (a failure is data for the model, not an exception)."""

    call_id: str
    text: str
    is_error: bool = False


class ToolRunner(Protocol):
    """Runs a tool by name for the model (in the worker: through the registry)."""

    async def call(self, name: str, arguments: dict[str, Any]) -> ToolResult: ...


class RoleTools(ToolRunner, Protocol):
    """A role's tools: their definitions for the model, and running them."""

    async def specs(self) -> list[ToolSpec]: ...


@dataclass(frozen=True, slots=True)
class ModelRequest:
    """One request to a model, in the Messages API's terms."""

    model: str
    system: Sequence[Block]
    tools: Sequence[Block]
    messages: Sequence[Message]
    max_tokens: int
    temperature: float = 0.0
    # {"type": "tool", "name": ...} forces that tool; None leaves the choice to the model.
    tool_choice: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class ModelTurn:
    """A model's answer: its content blocks, why it stopped, and the tokens it took."""

    content: list[Block]
    stop_reason: str
    usage: Usage
    model: str
    request_id: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)


class ModelProvider(Protocol):
    """Answers Messages-format requests (Anthropic natively, other APIs by translation)."""

    @property
    def name(self) -> str: ...

    async def complete(self, request: ModelRequest) -> ModelTurn: ...


class ClientOwner:
    """A provider that owns an SDK client (`self._client`): closed by `aclose` or `async with`."""

    _client: Any

    async def aclose(self) -> None:
        """Close the HTTP client."""
        await self._client.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


class ProviderUnavailable(Unavailable):
    """The provider did not answer after its client's own retries: overloaded, a 5xx, rate
    limited, or timed out. A caller may continue the step on another provider."""


class ProviderRejected(Internal):
    """The provider refused the request itself (bad request, authentication, permissions): retrying
    or switching provider would not help."""


class StructuredOutputInvalid(Internal):
    """The model's structured output failed its schema twice (once, then after a corrective turn)."""


class AnswerMissing(Internal):
    """The model used every allowed turn without submitting its structured output."""


# HTTP statuses worth another provider: timeouts, lock timeouts, rate limits (and every 5xx).
UNAVAILABLE_STATUSES = frozenset({408, 409, 429})


def status_error(reason: str, status: int) -> ProviderUnavailable | ProviderRejected:
    """A provider's HTTP refusal as the error the loop acts on: unavailable (another provider may
    answer) or rejected (the request itself is wrong)."""
    kind = ProviderUnavailable if status in UNAVAILABLE_STATUSES or status >= 500 else ProviderRejected
    return kind(reason, details={"status": status})

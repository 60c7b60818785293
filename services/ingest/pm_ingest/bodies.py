"""Strict parsing of API request bodies: malformed JSON, wrong types, unknown fields and bad URLs
are 400s that name each problem ({error: "Validation failed", details: [{path, message, code}]}).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from pm_grpc import bodies
from pm_grpc.bodies import parse_json_object, validation_failed

__all__ = [
    "BudgetBody",
    "InvestigateBatchBody",
    "InvestigateBody",
    "parse_body",
    "parse_json_object",
    "validation_failed",
]

M = TypeVar("M", bound=BaseModel)

MAX_BATCH = 20

# A ticket reference: 1..200 visible characters, no whitespace or control characters.
TicketId = Annotated[str, StringConstraints(pattern=r"^[^\s\x00-\x1f\x7f]{1,200}$")]
Mode = Literal["fast", "balanced", "deep"]


def _check_callback_url(value: str | None) -> str | None:
    if value is None:
        return None
    if len(value) > 2048:
        raise ValueError("callback_url must be at most 2048 characters")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("callback_url must be an absolute http(s) URL")
    if parts.username or parts.password:
        raise ValueError("callback_url must not contain credentials")
    return value


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class BudgetBody(_Body):
    """A request's own limits; the orchestrator's settings stay the ceiling."""

    deadline_seconds: Annotated[float, Field(gt=0, le=86_400)] | None = None
    max_tool_calls: Annotated[int, Field(ge=1, le=1_000_000)] | None = None
    max_cost_usd: Annotated[float, Field(ge=0, le=10_000)] | None = None

    def limits(self) -> dict[str, float]:
        """As stored in investigations.budget (the orchestrator's names)."""
        named = {
            "wall_seconds": self.deadline_seconds,
            "max_tool_calls": self.max_tool_calls,
            "max_cost_usd": self.max_cost_usd,
        }
        return {k: v for k, v in named.items() if v is not None}


class InvestigateBody(_Body):
    """POST /api/v1/investigate."""

    ticket_id: TicketId
    domain: Annotated[str, StringConstraints(min_length=1, max_length=200)] | None = None
    mode: Mode = "balanced"
    callback_url: str | None = None
    budget: BudgetBody | None = None

    _url = field_validator("callback_url")(_check_callback_url)


class InvestigateBatchBody(_Body):
    """POST /api/v1/investigate/batch: all tickets are queued, or none."""

    ticket_ids: list[TicketId] = Field(min_length=1, max_length=MAX_BATCH)
    domain: Annotated[str, StringConstraints(min_length=1, max_length=200)] | None = None
    mode: Mode = "balanced"
    callback_url: str | None = None
    # Applies to each investigation of the batch.
    budget: BudgetBody | None = None

    _url = field_validator("callback_url")(_check_callback_url)

    @field_validator("ticket_ids")
    @classmethod
    def _distinct(cls, value: list[str]) -> list[str]:
        seen: set[str] = set()
        for ticket in value:
            if ticket in seen:
                raise ValueError(f"ticket_id {ticket} appears more than once")
            seen.add(ticket)
        return value


_MESSAGES = {
    "too_short": "At least one ticket_id is required",
    "too_long": f"Maximum {MAX_BATCH} tickets per batch",
}


def _message(path: list[Any], code: str, message: str) -> str:
    """The predecessor's wording for the batch limits and ticket ids."""
    if code in _MESSAGES and path == ["ticket_ids"]:
        return _MESSAGES[code]
    if code == "string_pattern_mismatch" and path and path[0] in ("ticket_id", "ticket_ids"):
        return "ticket_id must be 1 to 200 characters without spaces or control characters"
    return message


def parse_body(model: type[M], data: dict[str, Any]) -> M:
    """Validate a decoded JSON object against `model`."""
    return bodies.parse_body(model, data, _message)

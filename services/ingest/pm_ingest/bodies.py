"""Strict parsing of API request bodies: malformed JSON, wrong types, unknown fields and bad URLs
are 400s that name each problem ({error: "Validation failed", details: [{path, message, code}]}).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, field_validator

from pm_errors import InvalidArgument, UnsupportedMediaType

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
    "missing": "Required",
    "extra_forbidden": "Unknown field",
    "too_short": "At least one ticket_id is required",
    "too_long": f"Maximum {MAX_BATCH} tickets per batch",
}


def validation_failed(details: Sequence[dict[str, object]]) -> InvalidArgument:
    """The 400 every validation problem becomes."""
    return InvalidArgument("Validation failed", details={"details": list(details)})


def _details(exc: ValidationError, model: type[BaseModel]) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    for err in exc.errors(include_url=False, include_input=False):
        path = [p for p in err["loc"]]
        code = err["type"]
        message = err["msg"]
        if code in ("too_short", "too_long") and path == ["ticket_ids"] or code in ("missing", "extra_forbidden"):
            message = _MESSAGES[code]
        elif code == "value_error":
            message = message.removeprefix("Value error, ")
        elif code == "string_pattern_mismatch" and path and path[0] in ("ticket_id", "ticket_ids"):
            message = "ticket_id must be 1 to 200 characters without spaces or control characters"
        out.append({"path": path, "message": message, "code": code})
    return out


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise ValueError(f"duplicate key {key!r}")
        obj[key] = value
    return obj


_JSON_TYPE = re.compile(r"^application/([a-z0-9.+-]+\+)?json\s*(;.*)?$", re.IGNORECASE)


def parse_json_object(data: bytes, content_type: str) -> dict[str, Any]:
    """The request body as a JSON object, or the 4xx that says why it is not one."""
    if content_type and not _JSON_TYPE.match(content_type.strip()):
        raise UnsupportedMediaType(
            "Unsupported content type", details={"content_type": content_type[:100], "expected": "application/json"}
        )
    if not data.strip():
        raise validation_failed([{"path": [], "message": "Request body must be a JSON object", "code": "invalid_json"}])
    try:
        value = json.loads(data, object_pairs_hook=_no_duplicate_keys)
    except (ValueError, RecursionError) as exc:
        message = str(exc) if isinstance(exc, json.JSONDecodeError) or "duplicate key" in str(exc) else "invalid"
        raise InvalidArgument(
            "Malformed JSON body", details={"details": [{"path": [], "message": message, "code": "invalid_json"}]}
        ) from None
    if not isinstance(value, dict):
        raise validation_failed([{"path": [], "message": "Request body must be a JSON object", "code": "invalid_type"}])
    return value


def parse_body(model: type[M], data: dict[str, Any]) -> M:
    """Validate a decoded JSON object against `model`."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_failed(_details(exc, model)) from None

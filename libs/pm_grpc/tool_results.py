"""What a registry CallTool reply says, as JSON: the one reading the worker's tools and the
orchestrator's scheduled jobs share; and the fields of a `tickets.get` answer they both read."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from google.protobuf import json_format


def tool_result_data(reply: Any) -> dict[str, Any]:
    """The reply's structured content (unless the registry cut it), else its text parsed as JSON:
    an object as it is, anything else under `items`, text that is not JSON under `text`."""
    if reply.HasField("structured_content") and not reply.truncated:
        return dict(_integral(json_format.MessageToDict(reply.structured_content)))
    text = "".join(item.text for item in reply.content)
    try:
        value = json.loads(text)
    except ValueError:
        return {"text": text}
    return value if isinstance(value, dict) else {"items": value}


def _integral(value: Any) -> Any:
    """Struct numbers are doubles: give whole numbers back as ints (300, not 300.0)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _integral(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_integral(v) for v in value]
    return value


def ticket_field(ticket: Mapping[str, Any], name: str) -> str | None:
    """A `tickets.get` answer's field (`status`, `summary`, ...), flat or under Jira's `fields`; an
    object such as Jira's status is read by its `name`. None when absent or blank."""
    nested = ticket.get("fields")
    for holder in (ticket, nested if isinstance(nested, Mapping) else {}):
        value = holder.get(name)
        if isinstance(value, Mapping):
            value = value.get("name")
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None

"""Reading PostgreSQL rows: jsonb columns as Python objects."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any


def json_object(value: Any) -> dict[str, Any]:
    """A jsonb object column as a dict ({} for NULL or anything that is not an object)."""
    if value is None:
        return {}
    if isinstance(value, str):
        value = json.loads(value)
    return dict(value) if isinstance(value, Mapping) else {}

"""JSON logging with trace and investigation ids, and redaction of secret-looking values."""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import IO, Any

from opentelemetry import trace

_INVESTIGATION_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("pm_investigation_id", default=None)

SECRET_KEY_PATTERN = re.compile(
    r"(token|api[_-]?key|authorization|password|passwd|secret|access[_-]?key|cookie|signature|credential)",
    re.IGNORECASE,
)
REDACTED = "[REDACTED]"
# Settings whose names look secret but hold a duration or a header's name (secrets_refresh_seconds,
# deploy_signature_header): shown as they are.
NOT_SECRET_SUFFIX = re.compile(r"_(seconds|ms|minutes|hours|days|header)$", re.IGNORECASE)

# Attributes every LogRecord has; anything else passed via `extra=` is emitted as a field.
_STANDARD_ATTRS = frozenset(
    logging.LogRecord("", 0, "", 0, "", None, None).__dict__.keys() | {"message", "asctime", "taskName"}
)


def _secret_key(key: str) -> bool:
    return bool(SECRET_KEY_PATTERN.search(key)) and not NOT_SECRET_SUFFIX.search(key)


def redact(value: Any) -> Any:
    """Copy `value` with every entry under a secret-looking key replaced by [REDACTED]."""
    if isinstance(value, Mapping):
        return {k: (REDACTED if isinstance(k, str) and _secret_key(k) else redact(v)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    return value


def current_investigation_id() -> str | None:
    """The investigation the current task works on, if any."""
    return _INVESTIGATION_ID.get()


@contextmanager
def bind_investigation(investigation_id: str) -> Iterator[None]:
    """Tag every log line written inside the block with `investigation_id`."""
    token = _INVESTIGATION_ID.set(investigation_id)
    try:
        yield
    finally:
        _INVESTIGATION_ID.reset(token)


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self._service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "service": self._service,
            "logger": record.name,
            "message": record.getMessage(),
        }
        span_context = trace.get_current_span().get_span_context()
        if span_context.is_valid:
            entry["trace_id"] = format(span_context.trace_id, "032x")
            entry["span_id"] = format(span_context.span_id, "016x")
        investigation_id = _INVESTIGATION_ID.get()
        if investigation_id:
            entry["investigation_id"] = investigation_id
        extras = {k: v for k, v in record.__dict__.items() if k not in _STANDARD_ATTRS}
        entry.update(redact(extras))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def configure_logging(service: str, level: str = "info", stream: IO[str] | None = None) -> None:
    """Send every log record of the process to `stream` (stderr) as JSON lines."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level.upper() if level.lower() != "warn" else "WARNING")
    # Libraries that log request details at INFO would drown ours.
    for noisy in ("botocore", "boto3", "urllib3", "httpx", "hvac"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))

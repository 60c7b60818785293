"""The one error hierarchy of Production Master.

Every error a service raises on purpose is a `PmError` with a stable `ErrorCode`. Adapters
translate library exceptions into these (`raise ... from exc`); the gRPC layer (pm_grpc) maps
codes to gRPC status in one place, and `http_status` maps them to the HTTP status Envoy returns.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import ClassVar

__all__ = [
    "AlreadyExists",
    "ConfigurationError",
    "Conflict",
    "DeadlineExceeded",
    "ErrorCode",
    "Internal",
    "InvalidArgument",
    "NotFound",
    "PayloadTooLarge",
    "PermissionDenied",
    "PmError",
    "RateLimited",
    "Unauthenticated",
    "Unavailable",
    "UnsupportedMediaType",
    "http_status",
]


class ErrorCode(StrEnum):
    """Stable, documented error codes; clients may branch on them."""

    INVALID_ARGUMENT = "invalid_argument"
    NOT_FOUND = "not_found"
    ALREADY_EXISTS = "already_exists"
    CONFLICT = "conflict"
    UNAUTHENTICATED = "unauthenticated"
    PERMISSION_DENIED = "permission_denied"
    RATE_LIMITED = "rate_limited"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    UNAVAILABLE = "unavailable"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    CONFIGURATION = "configuration"
    INTERNAL = "internal"


_HTTP_STATUS: Mapping[ErrorCode, int] = {
    ErrorCode.INVALID_ARGUMENT: 400,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.ALREADY_EXISTS: 409,
    ErrorCode.CONFLICT: 409,
    ErrorCode.UNAUTHENTICATED: 401,
    ErrorCode.PERMISSION_DENIED: 403,
    ErrorCode.RATE_LIMITED: 429,
    ErrorCode.PAYLOAD_TOO_LARGE: 413,
    ErrorCode.UNSUPPORTED_MEDIA_TYPE: 415,
    ErrorCode.UNAVAILABLE: 503,
    ErrorCode.DEADLINE_EXCEEDED: 504,
    ErrorCode.CONFIGURATION: 500,
    ErrorCode.INTERNAL: 500,
}


def http_status(code: ErrorCode) -> int:
    """The HTTP status a public client sees for an error code."""
    return _HTTP_STATUS[code]


class PmError(Exception):
    """An expected failure with a stable code, a safe message and optional JSON details.

    The message and details are shown to API clients, so they must never contain secrets.
    `details` become extra keys of the JSON error body next to `error`.
    """

    code: ClassVar[ErrorCode] = ErrorCode.INTERNAL

    def __init__(self, message: str, *, details: Mapping[str, object] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details: Mapping[str, object] = dict(details or {})

    def body(self) -> dict[str, object]:
        """The JSON error body: {"error": message, **details}."""
        return {"error": self.message, **self.details}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"


class InvalidArgument(PmError):
    """The request is malformed or violates a rule."""

    code = ErrorCode.INVALID_ARGUMENT


class NotFound(PmError):
    """The addressed resource does not exist."""

    code = ErrorCode.NOT_FOUND


class AlreadyExists(PmError):
    """A resource with the same identity already exists."""

    code = ErrorCode.ALREADY_EXISTS


class Conflict(PmError):
    """The resource is in a state that does not allow the operation."""

    code = ErrorCode.CONFLICT


class Unauthenticated(PmError):
    """No valid credentials."""

    code = ErrorCode.UNAUTHENTICATED


class PermissionDenied(PmError):
    """Valid credentials, but not allowed."""

    code = ErrorCode.PERMISSION_DENIED


class RateLimited(PmError):
    """Too many requests; `retry_after_seconds` says when to come back."""

    code = ErrorCode.RATE_LIMITED

    def __init__(
        self,
        message: str,
        *,
        retry_after_seconds: int,
        details: Mapping[str, object] | None = None,
    ) -> None:
        super().__init__(message, details=details)
        self.retry_after_seconds = retry_after_seconds


class PayloadTooLarge(PmError):
    """The request body is larger than allowed."""

    code = ErrorCode.PAYLOAD_TOO_LARGE


class UnsupportedMediaType(PmError):
    """The request body is not in a content type the endpoint accepts."""

    code = ErrorCode.UNSUPPORTED_MEDIA_TYPE


class Unavailable(PmError):
    """A dependency is down; retrying later may succeed."""

    code = ErrorCode.UNAVAILABLE


class DeadlineExceeded(PmError):
    """The operation did not finish in time."""

    code = ErrorCode.DEADLINE_EXCEEDED


class ConfigurationError(PmError):
    """The service is configured wrongly (a missing or invalid setting)."""

    code = ErrorCode.CONFIGURATION


class Internal(PmError):
    """A bug or an unexpected state; details are logged, not shown."""

    code = ErrorCode.INTERNAL

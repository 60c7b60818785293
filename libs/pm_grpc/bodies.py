"""Strict parsing of REST request bodies that Envoy passes through as google.api.HttpBody.

Malformed JSON, duplicate keys, wrong content types, wrong types and unknown fields are 4xx
errors that name each problem: 400 {error: "Validation failed", details: [{path, message, code}]}.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from google.api import httpbody_pb2
from google.protobuf import json_format
from google.protobuf.message import Message
from pydantic import BaseModel, ValidationError

from pm_errors import InvalidArgument, UnsupportedMediaType

M = TypeVar("M", bound=BaseModel)

# (path, pydantic error type, pydantic message) -> the message the client sees.
MessageRewrite = Callable[[list[Any], str, str], str]

_MESSAGES = {"missing": "Required", "extra_forbidden": "Unknown field"}
_JSON_TYPE = re.compile(r"^application/([a-z0-9.+-]+\+)?json\s*(;.*)?$", re.IGNORECASE)


def validation_failed(details: Sequence[dict[str, object]]) -> InvalidArgument:
    """The 400 every validation problem becomes."""
    return InvalidArgument("Validation failed", details={"details": list(details)})


def problem(path: Sequence[object], message: str, code: str) -> dict[str, object]:
    """One entry of a 400's details."""
    return {"path": list(path), "message": message, "code": code}


def _details(exc: ValidationError, rewrite: MessageRewrite | None) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    for err in exc.errors(include_url=False, include_input=False):
        path = list(err["loc"])
        code = err["type"]
        message = _MESSAGES.get(code) or err["msg"].removeprefix("Value error, ")
        if rewrite is not None:
            message = rewrite(path, code, message)
        out.append(problem(path, message, code))
    return out


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise ValueError(f"duplicate key {key!r}")
        obj[key] = value
    return obj


def parse_json_object(data: bytes, content_type: str) -> dict[str, Any]:
    """The request body as a JSON object, or the 4xx that says why it is not one."""
    if content_type and not _JSON_TYPE.match(content_type.strip()):
        raise UnsupportedMediaType(
            "Unsupported content type", details={"content_type": content_type[:100], "expected": "application/json"}
        )
    if not data.strip():
        raise validation_failed([problem([], "Request body must be a JSON object", "invalid_json")])
    try:
        value = json.loads(data, object_pairs_hook=_no_duplicate_keys)
    except (ValueError, RecursionError) as exc:
        message = str(exc) if isinstance(exc, json.JSONDecodeError) or "duplicate key" in str(exc) else "invalid"
        raise InvalidArgument(
            "Malformed JSON body", details={"details": [problem([], message, "invalid_json")]}
        ) from None
    if not isinstance(value, dict):
        raise validation_failed([problem([], "Request body must be a JSON object", "invalid_type")])
    return value


def parse_body(model: type[M], data: dict[str, Any], rewrite: MessageRewrite | None = None) -> M:
    """Validate a decoded JSON object against `model`."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_failed(_details(exc, rewrite)) from None


def parse_http_body(model: type[M], body: httpbody_pb2.HttpBody, rewrite: MessageRewrite | None = None) -> M:
    """A transcoded REST body validated against `model` (an absent body is an empty object)."""
    data = parse_json_object(body.data, body.content_type) if body.data.strip() else {}
    return parse_body(model, data, rewrite)


def request_object(message: Message, exclude: tuple[str, ...] = ("id",)) -> dict[str, Any]:
    """The JSON object of a request: its REST body as received (field `http_body`), or, for a gRPC
    caller, its typed fields as a REST client would have sent them (unset fields left out)."""
    body = getattr(message, "http_body", None)
    if body is not None and (body.data or body.content_type):
        return parse_json_object(bytes(body.data), body.content_type)
    fields = json_format.MessageToDict(message, preserving_proto_field_name=True)
    return {k: v for k, v in fields.items() if k not in exclude and k != "http_body"}

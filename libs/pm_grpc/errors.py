"""The one place where errors become gRPC status codes (and, through Envoy, HTTP statuses)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any, NoReturn

import grpc

from pm_errors import ErrorCode, PmError, RateLimited, http_status
from pm_grpc.http import Context, http_metadata

log = logging.getLogger(__name__)

GRPC_STATUS: Mapping[ErrorCode, grpc.StatusCode] = {
    ErrorCode.INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorCode.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    ErrorCode.ALREADY_EXISTS: grpc.StatusCode.ALREADY_EXISTS,
    ErrorCode.CONFLICT: grpc.StatusCode.FAILED_PRECONDITION,
    ErrorCode.UNAUTHENTICATED: grpc.StatusCode.UNAUTHENTICATED,
    ErrorCode.PERMISSION_DENIED: grpc.StatusCode.PERMISSION_DENIED,
    ErrorCode.RATE_LIMITED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ErrorCode.PAYLOAD_TOO_LARGE: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorCode.UNSUPPORTED_MEDIA_TYPE: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorCode.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    ErrorCode.DEADLINE_EXCEEDED: grpc.StatusCode.DEADLINE_EXCEEDED,
    ErrorCode.CONFIGURATION: grpc.StatusCode.INTERNAL,
    ErrorCode.INTERNAL: grpc.StatusCode.INTERNAL,
}

_INTERNAL_BODY = {"error": "Internal server error"}


async def abort_with(context: Context, err: PmError) -> NoReturn:
    """End the RPC with the status of `err` and the JSON body REST clients see."""
    headers = {"retry-after": str(err.retry_after_seconds)} if isinstance(err, RateLimited) else None
    body = _INTERNAL_BODY if err.code in (ErrorCode.INTERNAL, ErrorCode.CONFIGURATION) else err.body()
    await context.abort(
        GRPC_STATUS[err.code],
        err.message if body is not _INTERNAL_BODY else _INTERNAL_BODY["error"],
        trailing_metadata=http_metadata(http_status(err.code), body, headers),
    )


async def _abort_unexpected(context: Context, method: str, exc: Exception) -> NoReturn:
    log.error("unhandled error in %s", method, exc_info=exc, extra={"rpc": method})
    await context.abort(
        grpc.StatusCode.INTERNAL, "internal error", trailing_metadata=http_metadata(500, _INTERNAL_BODY)
    )


async def _abort_unimplemented(context: Context, method: str) -> NoReturn:
    await context.abort(
        grpc.StatusCode.UNIMPLEMENTED,
        f"{method} is not implemented yet",
        trailing_metadata=http_metadata(501, {"error": "Not implemented", "method": method}),
    )


@asynccontextmanager
async def _errors_mapped(context: Context, method: str) -> AsyncIterator[None]:
    try:
        yield
    except PmError as err:
        await abort_with(context, err)
    except NotImplementedError:
        # The generated servicer base class raises this for RPCs a service does not offer yet.
        await _abort_unimplemented(context, method)
    except (grpc.aio.AbortError, grpc.aio.UsageError):
        raise
    except Exception as exc:  # noqa: BLE001 - the top-level handler of every RPC
        await _abort_unexpected(context, method, exc)


def _call_guarded(method: str, behavior: Callable[..., Any]) -> Callable[[Any, Context], Awaitable[Any]]:
    async def guarded(request: Any, context: Context) -> Any:
        async with _errors_mapped(context, method):
            result = behavior(request, context)
            return await result if isinstance(result, Awaitable) else result

    return guarded


def _stream_guarded(method: str, behavior: Callable[..., Any]) -> Callable[[Any, Context], AsyncIterator[Any]]:
    async def guarded(request: Any, context: Context) -> AsyncIterator[Any]:
        async with _errors_mapped(context, method):
            result = behavior(request, context)
            if hasattr(result, "__aiter__"):
                async for item in result:
                    yield item
            else:
                for item in result:
                    yield item

    return guarded


class ErrorMappingInterceptor(grpc.aio.ServerInterceptor):
    """Turns PmError into its status, and anything unexpected into INTERNAL without details."""

    def __init__(self) -> None:
        # Per method: the handler it was given and the guarded one (built once, not per call).
        self._guarded: dict[str, tuple[object, grpc.RpcMethodHandler[Any, Any]]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        cached = self._guarded.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        guarded = _guard(method, handler)
        self._guarded[method] = (handler, guarded)
        return guarded


def _guard(method: str, handler: grpc.RpcMethodHandler[Any, Any]) -> grpc.RpcMethodHandler[Any, Any]:
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(
            _call_guarded(method, handler.unary_unary),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(
            _stream_guarded(method, handler.unary_stream),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
    # Client- and bidi-streaming RPCs are not part of our contracts.
    return handler

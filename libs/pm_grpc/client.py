"""Client channels to other services."""

from __future__ import annotations

import grpc
from opentelemetry.instrumentation.grpc import aio_client_interceptors
from opentelemetry.sdk.trace import TracerProvider

from pm_grpc.server import TRACED


def open_channel(target: str, tracer_provider: TracerProvider | None = None) -> grpc.aio.Channel:
    """An insecure (cluster-internal) channel with tracing and keepalive; close it when done."""
    return grpc.aio.insecure_channel(
        target,
        interceptors=aio_client_interceptors(tracer_provider=tracer_provider, filter_=TRACED),  # type: ignore[no-untyped-call]
        options=[
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.enable_retries", 1),
            ("grpc.max_receive_message_length", 8 * 1024 * 1024),
        ],
    )

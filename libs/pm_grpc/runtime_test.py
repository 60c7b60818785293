"""run_service: a stop request ends the process even when a background loop misbehaves."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from pm_grpc import BuildContext, ServiceRuntime, ServiceSpec, run_service
from pm_settings import ServiceSettings
from pm_testing.processes import free_port, wait_for


class _Loops:
    """Background loops for the test service, recording what happened to them."""

    def __init__(self) -> None:
        self.cancellations = 0
        self.closed = False

    async def polite(self) -> None:
        await asyncio.Event().wait()

    async def stubborn(self) -> None:
        """Swallows the first cancellation, as a loop around Python 3.11's wait_for can."""
        while True:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.cancellations += 1
                if self.cancellations > 1:
                    raise

    async def deaf(self) -> None:
        """Ignores every cancellation for a while (longer than run_service waits for it)."""
        deadline = asyncio.get_running_loop().time() + 8
        while asyncio.get_running_loop().time() < deadline:
            try:
                await asyncio.sleep(0.05)
            except asyncio.CancelledError:
                self.cancellations += 1


def _spec(loops: _Loops, *background: str) -> ServiceSpec[ServiceSettings]:
    @asynccontextmanager
    async def build(settings: ServiceSettings, ctx: BuildContext) -> AsyncIterator[ServiceRuntime]:
        try:
            yield ServiceRuntime(registrations=(), probes={}, background=[getattr(loops, b) for b in background])
        finally:
            loops.closed = True

    return ServiceSpec("runtime-test", ServiceSettings, build)


async def _run_until_serving_then_stop(spec: ServiceSpec[ServiceSettings]) -> int:
    port = free_port()
    settings = ServiceSettings(
        grpc_listen=f"127.0.0.1:{port}", metrics_listen="127.0.0.1:0", shutdown_grace_seconds=0.2
    )
    stop = asyncio.Event()
    task = asyncio.create_task(run_service(spec, settings, {}, stop))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub: Any = health_pb2_grpc.HealthStub(channel)  # the stubs lack the aio signatures

        async def serving() -> bool:
            try:
                reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
            except grpc.aio.AioRpcError:
                return False
            return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

        await wait_for(serving, timeout=20, what="test service SERVING")
    stop.set()
    async with asyncio.timeout(20):
        return await task


async def test_a_loop_that_swallows_the_first_cancellation_is_cancelled_again() -> None:
    loops = _Loops()
    assert await _run_until_serving_then_stop(_spec(loops, "polite", "stubborn")) == 0
    assert loops.cancellations == 2
    assert loops.closed


async def test_a_loop_that_ignores_cancellation_does_not_keep_the_service_alive(
    capsys: pytest.CaptureFixture[str],
) -> None:
    loops = _Loops()
    assert await _run_until_serving_then_stop(_spec(loops, "deaf")) == 1
    assert loops.cancellations >= 3
    assert loops.closed
    assert "background tasks ignore cancellation: deaf" in capsys.readouterr().err

"""Run a service in-process (real gRPC server on loopback) and talk to it over a real channel."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from pm_grpc import ServiceSpec, run_service
from pm_settings import load_settings
from pm_testing.processes import free_port, wait_for


async def health_status(channel: grpc.aio.Channel, service: str = "") -> int:
    """The gRPC health status of `service` (SERVING == 1), or -1 when the server does not answer."""
    try:
        stub: Any = health_pb2_grpc.HealthStub(channel)  # the stubs lack the aio signatures
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=2)
    except grpc.aio.AioRpcError:
        return -1
    return int(reply.status)


@asynccontextmanager
async def running_service(
    spec: ServiceSpec[Any], environ: Mapping[str, str], *, until_serving: bool = True
) -> AsyncIterator[grpc.aio.Channel]:
    """Run `spec` with settings from `environ` until the block ends; yields a channel to it.

    Waits until the service reports SERVING (every dependency probe passed), or only until it
    answers health checks when `until_serving` is false, and checks that it stops with exit 0.
    """
    listen = environ.get("GRPC_LISTEN") or f"127.0.0.1:{free_port()}"
    port = int(listen.rpartition(":")[2])
    env = {"METRICS_LISTEN": "127.0.0.1:0", "SHUTDOWN_GRACE_SECONDS": "1", **environ, "GRPC_LISTEN": listen}
    settings = load_settings(spec.settings_type, env)
    stop = asyncio.Event()
    task = asyncio.create_task(run_service(spec, settings, env, stop))
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")

    async def serving() -> bool:
        if task.done():
            raise RuntimeError(f"service {spec.name} exited early: {task.result()}")
        status = await health_status(channel)
        return status == health_pb2.HealthCheckResponse.SERVING if until_serving else status >= 0

    try:
        await wait_for(serving, timeout=30, what=f"{spec.name} {'SERVING' if until_serving else 'answering'}")
        yield channel
    finally:
        await channel.close()
        stop.set()
        exit_code = await asyncio.wait_for(task, timeout=30)
        assert exit_code == 0, f"{spec.name} exited with {exit_code}"

"""Run a service in-process (real gRPC server on loopback) or as a real process, and talk to it."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
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


class ServiceProcess:
    """A service as a real process (`python -m pm_<service>`) that a test can kill and restart."""

    def __init__(self, service: str, environ: Mapping[str, str], log: Path) -> None:
        self.service = service
        self.port = int(environ["GRPC_LISTEN"].rpartition(":")[2])
        self._environ = {
            **{k: v for k, v in os.environ.items() if not k.startswith("PEX")},
            "PYTHONPATH": os.pathsep.join(p for p in sys.path if p),
            **environ,
        }
        self._log = log
        self._process: asyncio.subprocess.Process | None = None

    async def start(self, *, timeout: float = 60) -> None:
        with self._log.open("ab") as out:
            self._process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", f"pm_{self.service}", env=self._environ, stdout=out, stderr=out
            )
        process = self._process
        async with grpc.aio.insecure_channel(f"127.0.0.1:{self.port}") as channel:

            async def serving() -> bool:
                if process.returncode is not None:
                    raise RuntimeError(f"pm_{self.service} exited with {process.returncode}: {self.log_tail()}")
                return await health_status(channel) == health_pb2.HealthCheckResponse.SERVING

            await wait_for(serving, timeout=timeout, what=f"pm_{self.service} SERVING")

    async def kill(self) -> None:
        """SIGKILL: no shutdown, no acknowledgements, nothing flushed."""
        if self._process is not None and self._process.returncode is None:
            self._process.kill()
            await self._process.wait()

    async def stop(self) -> int | None:
        """SIGTERM and wait; the exit code (None when it was not running)."""
        if self._process is None or self._process.returncode is not None:
            return None
        self._process.terminate()
        return await asyncio.wait_for(self._process.wait(), timeout=30)

    def log_tail(self, chars: int = 3000) -> str:
        return self._log.read_text(errors="replace")[-chars:] if self._log.exists() else ""

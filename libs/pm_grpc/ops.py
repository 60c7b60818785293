"""Liveness and readiness of a service (pm.ops.v1.OpsService) from dependency probes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping

from google.protobuf.timestamp_pb2 import Timestamp

from pm.ops.v1 import ops_pb2, ops_pb2_grpc
from pm_grpc.http import Context, set_http_status

# A probe returns normally when its dependency answers and raises with a reason otherwise.
Probe = Callable[[], Awaitable[None]]


def _now() -> Timestamp:
    stamp = Timestamp()
    stamp.GetCurrentTime()
    return stamp


async def _run_probe(probe: Probe, timeout: float) -> ops_pb2.DependencyCheck:
    start = time.perf_counter()
    try:
        async with asyncio.timeout(timeout):
            await probe()
    except TimeoutError:
        return ops_pb2.DependencyCheck(healthy=False, error=f"no answer within {timeout:g}s")
    except Exception as exc:  # noqa: BLE001 - any failure of a probe means "not ready", with its reason
        return ops_pb2.DependencyCheck(healthy=False, error=_reason(exc))
    return ops_pb2.DependencyCheck(healthy=True, latency_ms=int((time.perf_counter() - start) * 1000))


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}"[:300] if text else type(exc).__name__


async def check_all(probes: Mapping[str, Probe], timeout: float) -> dict[str, ops_pb2.DependencyCheck]:
    """Run every probe concurrently, each bounded by `timeout` seconds."""
    names = list(probes)
    results = await asyncio.gather(*(_run_probe(probes[n], timeout) for n in names))
    return dict(zip(names, results, strict=True))


class OpsServicer(ops_pb2_grpc.OpsServiceServicer):
    """Answers /healthz (alive) and /readyz (every dependency reachable; 503 otherwise)."""

    def __init__(
        self,
        service: str,
        version: str,
        probes: Mapping[str, Probe],
        probe_timeout: float = 2.0,
    ) -> None:
        self._service = service
        self._version = version
        self._probes = dict(probes)
        self._probe_timeout = probe_timeout
        self._started = time.monotonic()

    async def GetLiveness(
        self,
        request: ops_pb2.GetLivenessRequest,
        context: Context,
    ) -> ops_pb2.GetLivenessResponse:
        return ops_pb2.GetLivenessResponse(
            status="ok",
            timestamp=_now(),
            uptime_seconds=int(time.monotonic() - self._started),
            service=self._service,
            version=self._version,
        )

    async def GetReadiness(
        self,
        request: ops_pb2.GetReadinessRequest,
        context: Context,
    ) -> ops_pb2.GetReadinessResponse:
        checks = await check_all(self._probes, self._probe_timeout)
        ready = all(c.healthy for c in checks.values())
        response = ops_pb2.GetReadinessResponse(
            status="ready" if ready else "not_ready",
            checks=checks,
            timestamp=_now(),
            service=self._service,
        )
        if not ready:
            set_http_status(context, 503)
        return response

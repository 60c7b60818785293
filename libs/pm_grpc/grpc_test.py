"""Component tests: a real grpc.aio server on an ephemeral port and a real channel."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry

from pm.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from pm.ops.v1 import ops_pb2, ops_pb2_grpc
from pm_errors import Conflict, RateLimited
from pm_grpc import GrpcServer, OpsServicer, ServiceRegistration, set_http_status


class _Ingest(ingest_pb2_grpc.IngestServiceServicer):
    """Implements two RPCs; the rest stay the generated UNIMPLEMENTED ones."""

    async def Investigate(
        self, request: ingest_pb2.InvestigateRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> ingest_pb2.InvestigateResponse:
        if request.ticket_id == "DUP-1":
            raise Conflict("Active investigation already exists for this ticket", details={"investigation_id": "i-1"})
        if request.ticket_id == "SLOW-1":
            raise RateLimited("Rate limit exceeded", retry_after_seconds=60)
        if request.ticket_id == "BUG-1":
            raise ValueError("secret internals")
        set_http_status(context, 202)
        return ingest_pb2.InvestigateResponse(investigation_id="i-2", status="queued")


async def _broken_probe() -> None:
    raise ConnectionRefusedError("connect to 127.0.0.1:1 refused")


async def _fine_probe() -> None:
    return None


# The metrics registry of each `served` server, newest last.
served_registries: list[CollectorRegistry] = []


@pytest.fixture()
async def served() -> AsyncIterator[tuple[GrpcServer, grpc.aio.Channel]]:
    ops = OpsServicer("pm-test", "1.0", {"database": _fine_probe, "redis": _broken_probe})
    server = GrpcServer(
        "127.0.0.1:0",
        [
            ServiceRegistration(
                "pm.ingest.v1.IngestService", ingest_pb2_grpc.add_IngestServiceServicer_to_server, _Ingest()
            ),
            ServiceRegistration("pm.ops.v1.OpsService", ops_pb2_grpc.add_OpsServiceServicer_to_server, ops),
        ],
        metrics_registry=(registry := CollectorRegistry()),
    )
    served_registries.append(registry)
    port = await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    yield server, channel
    await channel.close()
    await server.stop(1)


async def test_health_is_not_serving_until_marked_then_serving(served: tuple[GrpcServer, grpc.aio.Channel]) -> None:
    server, channel = served
    stub: Any = health_pb2_grpc.HealthStub(channel)
    for name in ("", "pm.ingest.v1.IngestService"):
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
    await server.set_serving(True)
    reply = await stub.Check(health_pb2.HealthCheckRequest(service="pm.ingest.v1.IngestService"), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_unimplemented_rpc_answers_unimplemented(served: tuple[GrpcServer, grpc.aio.Channel]) -> None:
    _, channel = served
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await ingest_pb2_grpc.IngestServiceStub(channel).InvestigateBatch(
            ingest_pb2.InvestigateBatchRequest(), timeout=5
        )
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_domain_error_maps_to_status_and_http_body(served: tuple[GrpcServer, grpc.aio.Channel]) -> None:
    _, channel = served
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await ingest_pb2_grpc.IngestServiceStub(channel).Investigate(
            ingest_pb2.InvestigateRequest(ticket_id="DUP-1"), timeout=5
        )
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    trailers = dict(err.value.trailing_metadata() or ())
    assert trailers["x-pm-http-status"] == "409"
    assert json.loads(trailers["x-pm-http-body"]) == {
        "error": "Active investigation already exists for this ticket",
        "investigation_id": "i-1",
    }


async def test_rate_limit_carries_retry_after(served: tuple[GrpcServer, grpc.aio.Channel]) -> None:
    _, channel = served
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await ingest_pb2_grpc.IngestServiceStub(channel).Investigate(
            ingest_pb2.InvestigateRequest(ticket_id="SLOW-1"), timeout=5
        )
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    trailers = dict(err.value.trailing_metadata() or ())
    assert trailers["x-pm-http-status"] == "429"
    assert trailers["retry-after"] == "60"


async def test_unexpected_error_is_internal_without_details(served: tuple[GrpcServer, grpc.aio.Channel]) -> None:
    _, channel = served
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await ingest_pb2_grpc.IngestServiceStub(channel).Investigate(
            ingest_pb2.InvestigateRequest(ticket_id="BUG-1"), timeout=5
        )
    assert err.value.code() == grpc.StatusCode.INTERNAL
    assert "secret internals" not in (err.value.details() or "")
    assert "secret internals" not in str(err.value.trailing_metadata())


async def test_success_can_carry_an_http_status(served: tuple[GrpcServer, grpc.aio.Channel]) -> None:
    _, channel = served
    call = ingest_pb2_grpc.IngestServiceStub(channel).Investigate(
        ingest_pb2.InvestigateRequest(ticket_id="PAY-1"), timeout=5
    )
    reply = await call
    assert reply.investigation_id == "i-2"
    assert dict(await call.trailing_metadata() or ())["x-pm-http-status"] == "202"


async def test_readiness_names_the_failing_dependency(served: tuple[GrpcServer, grpc.aio.Channel]) -> None:
    _, channel = served
    call = ops_pb2_grpc.OpsServiceStub(channel).GetReadiness(ops_pb2.GetReadinessRequest(), timeout=5)
    reply = await call
    assert reply.status == "not_ready"
    assert reply.checks["database"].healthy
    assert not reply.checks["redis"].healthy
    assert "refused" in reply.checks["redis"].error
    assert dict(await call.trailing_metadata() or ())["x-pm-http-status"] == "503"


async def test_stop_refuses_new_calls(served: tuple[GrpcServer, grpc.aio.Channel]) -> None:
    server, channel = served
    await server.stop(0.5)
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async with asyncio.timeout(10):
            await ops_pb2_grpc.OpsServiceStub(channel).GetLiveness(ops_pb2.GetLivenessRequest(), timeout=2)
    assert err.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


async def test_each_call_is_counted_with_the_http_status_a_rest_client_sees(
    served: tuple[GrpcServer, grpc.aio.Channel],
) -> None:
    _, channel = served
    stub = ingest_pb2_grpc.IngestServiceStub(channel)
    await stub.Investigate(ingest_pb2.InvestigateRequest(ticket_id="PAY-1"), timeout=5)
    for ticket in ("DUP-1", "SLOW-1", "BUG-1"):
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.Investigate(ingest_pb2.InvestigateRequest(ticket_id=ticket), timeout=5)
    with pytest.raises(grpc.aio.AioRpcError):
        await stub.InvestigateBatch(ingest_pb2.InvestigateBatchRequest(), timeout=5)
    registry = served_registries[-1]

    def count(method: str, code: str) -> float | None:
        labels = {"grpc_service": "pm.ingest.v1.IngestService", "grpc_method": method, "code": code}
        return registry.get_sample_value("pm_http_responses_total", labels)

    # The servicer's own statuses (202, 409, 429), and the code's where it states none.
    assert [count("Investigate", c) for c in ("202", "409", "429", "500")] == [1.0, 1.0, 1.0, 1.0]
    assert count("Investigate", "200") is None
    assert count("InvestigateBatch", "501") == 1.0

"""The ingest service in-process against the real stack: readiness, and native gRPC submissions."""

from __future__ import annotations

import asyncpg
import grpc
import pytest

from pm.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from pm.ops.v1 import ops_pb2, ops_pb2_grpc
from pm_db import apply_migrations
from pm_ingest.app import SPEC
from pm_testing import fresh_database, running_service, stack_env


async def test_ingest_is_ready_when_its_dependencies_answer() -> None:
    env = stack_env()
    async with fresh_database(env) as dsn, running_service(SPEC, env.service_environ(database_url=dsn)) as channel:
        readiness = await ops_pb2_grpc.OpsServiceStub(channel).GetReadiness(ops_pb2.GetReadinessRequest(), timeout=10)
        assert readiness.status == "ready"
        assert set(readiness.checks) == {"database", "redis", "vault"}
        assert all(check.healthy for check in readiness.checks.values())
        liveness = await ops_pb2_grpc.OpsServiceStub(channel).GetLiveness(ops_pb2.GetLivenessRequest(), timeout=5)
        assert liveness.status == "ok"
        assert liveness.service == "pm-ingest"


async def test_native_grpc_clients_submit_with_typed_fields_and_metadata_credentials() -> None:
    env = stack_env()
    environ = {"API_KEYS": "grpc-client-key", "RATE_LIMIT_INVESTIGATION_PER_MINUTE": "0"}
    async with fresh_database(env) as dsn:
        await apply_migrations(dsn)
        async with running_service(SPEC, {**env.service_environ(database_url=dsn), **environ}) as channel:
            stub = ingest_pb2_grpc.IngestServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Investigate(ingest_pb2.InvestigateRequest(ticket_id="PAY-1"), timeout=5)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            call = stub.Investigate(
                ingest_pb2.InvestigateRequest(ticket_id="PAY-1", mode="fast"),
                metadata=(("x-api-key", "grpc-client-key"),),
                timeout=5,
            )
            reply = await call
            assert reply.status == "queued"
            assert reply.status_url == f"/api/v1/investigations/{reply.investigation_id}"
            assert dict(await call.trailing_metadata())["x-pm-http-status"] == "202"
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Investigate(
                    ingest_pb2.InvestigateRequest(ticket_id="PAY-1"),
                    metadata=(("x-api-key", "grpc-client-key"),),
                    timeout=5,
                )
            assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Investigate(
                    ingest_pb2.InvestigateRequest(ticket_id="PAY 2", mode="slow"),
                    metadata=(("x-api-key", "grpc-client-key"),),
                    timeout=5,
                )
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            conn = await asyncpg.connect(dsn)
            try:
                row = await conn.fetchrow("SELECT mode, trigger_source FROM investigations")
            finally:
                await conn.close()
            assert (row["mode"], row["trigger_source"]) == ("fast", "api")

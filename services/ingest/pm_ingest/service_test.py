"""The ingest service in-process against the real stack: health, readiness, unimplemented RPCs."""

from __future__ import annotations

import grpc
import pytest

from pm.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from pm.ops.v1 import ops_pb2, ops_pb2_grpc
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


async def test_intake_rpcs_answer_unimplemented_until_the_intake_issue() -> None:
    env = stack_env()
    async with fresh_database(env) as dsn, running_service(SPEC, env.service_environ(database_url=dsn)) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await ingest_pb2_grpc.IngestServiceStub(channel).Investigate(
                ingest_pb2.InvestigateRequest(ticket_id="PAY-1"), timeout=5
            )
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED

"""The orchestrator in-process against the real stack: health, readiness, RPCs served and not."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2

from pm.investigation.v1 import investigation_pb2, investigation_pb2_grpc
from pm.ops.v1 import ops_pb2, ops_pb2_grpc
from pm.query.v1 import query_pb2, query_pb2_grpc
from pm_orchestrator.app import SPEC
from pm_testing import fresh_bucket, fresh_database, health_status, running_service, stack_env


async def test_orchestrator_is_ready_when_its_dependencies_answer() -> None:
    env = stack_env()
    with fresh_bucket(env) as bucket:
        async with fresh_database(env) as dsn:
            environ = env.service_environ(database_url=dsn, bucket=bucket, registry_addr="127.0.0.1:1")
            async with running_service(SPEC, environ) as channel:
                readiness = await ops_pb2_grpc.OpsServiceStub(channel).GetReadiness(
                    ops_pb2.GetReadinessRequest(), timeout=10
                )
                assert readiness.status == "ready"
                assert set(readiness.checks) == {"database", "redis", "object_store", "vault"}
                # The query API is served and needs credentials, similar-incident search included.
                stub = investigation_pb2_grpc.InvestigationServiceStub(channel)
                for call in (
                    stub.GetInvestigation(investigation_pb2.GetInvestigationRequest(id="x"), timeout=5),
                    stub.FindSimilarInvestigations(
                        investigation_pb2.FindSimilarInvestigationsRequest(id="x"), timeout=5
                    ),
                ):
                    with pytest.raises(grpc.aio.AioRpcError) as anonymous:
                        await call
                    assert anonymous.value.code() == grpc.StatusCode.UNAUTHENTICATED
                # The raw query passthrough is not built: the generated base class answers.
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await query_pb2_grpc.QueryServiceStub(channel).QueryLogs(query_pb2.QueryLogsRequest(), timeout=5)
                assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_orchestrator_is_not_ready_without_its_bucket() -> None:
    env = stack_env()
    async with fresh_database(env) as dsn:
        environ = env.service_environ(database_url=dsn, bucket="pm-test-no-such-bucket", registry_addr="127.0.0.1:1")
        async with running_service(SPEC, environ, until_serving=False) as channel:
            readiness = await ops_pb2_grpc.OpsServiceStub(channel).GetReadiness(
                ops_pb2.GetReadinessRequest(), timeout=10
            )
            assert readiness.status == "not_ready"
            assert not readiness.checks["object_store"].healthy
            assert readiness.checks["database"].healthy
            assert await health_status(channel) == health_pb2.HealthCheckResponse.NOT_SERVING

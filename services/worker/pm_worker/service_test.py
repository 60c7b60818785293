"""The worker in-process against the real stack (with a registry: tests/integration)."""

from __future__ import annotations

from grpc_health.v1 import health_pb2

from pm.ops.v1 import ops_pb2, ops_pb2_grpc
from pm_testing import free_port, fresh_bucket, health_status, running_service, stack_env
from pm_worker.app import SPEC


async def test_worker_is_not_serving_while_the_registry_is_down() -> None:
    env = stack_env()
    with fresh_bucket(env) as bucket:
        worker_env = env.service_environ(bucket=bucket, registry_addr=f"127.0.0.1:{free_port()}")
        async with running_service(SPEC, worker_env, until_serving=False) as channel:
            readiness = await ops_pb2_grpc.OpsServiceStub(channel).GetReadiness(
                ops_pb2.GetReadinessRequest(), timeout=10
            )
            assert readiness.status == "not_ready"
            assert "registry unreachable" in readiness.checks["registry"].error
            assert await health_status(channel) == health_pb2.HealthCheckResponse.NOT_SERVING

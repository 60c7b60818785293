"""Worker and registry together: the worker turns ready once the registry serves."""

from __future__ import annotations

from pm.ops.v1 import ops_pb2, ops_pb2_grpc
from pm_registry.app import SPEC as REGISTRY
from pm_testing import free_port, fresh_bucket, fresh_database, running_service, stack_env
from pm_worker.app import SPEC as WORKER


async def test_worker_is_ready_once_the_registry_serves() -> None:
    env = stack_env()
    with fresh_bucket(env) as bucket:
        async with fresh_database(env) as dsn:
            registry_port = free_port()
            registry_env = {**env.service_environ(database_url=dsn), "GRPC_LISTEN": f"127.0.0.1:{registry_port}"}
            worker_env = env.service_environ(bucket=bucket, registry_addr=f"127.0.0.1:{registry_port}")
            async with running_service(REGISTRY, registry_env), running_service(WORKER, worker_env) as channel:
                readiness = await ops_pb2_grpc.OpsServiceStub(channel).GetReadiness(
                    ops_pb2.GetReadinessRequest(), timeout=10
                )
                assert readiness.status == "ready"
                assert set(readiness.checks) == {"redis", "object_store", "registry", "vault"}

"""The registry in-process against the real stack: health, readiness, unimplemented RPCs."""

from __future__ import annotations

import grpc
import pytest

from pm.ops.v1 import ops_pb2, ops_pb2_grpc
from pm.registry.v1 import registry_pb2, registry_pb2_grpc
from pm_registry.app import SPEC
from pm_testing import fresh_database, running_service, stack_env


async def test_registry_is_ready_and_answers_unimplemented_until_the_registry_issue() -> None:
    env = stack_env()
    async with fresh_database(env) as dsn, running_service(SPEC, env.service_environ(database_url=dsn)) as channel:
        readiness = await ops_pb2_grpc.OpsServiceStub(channel).GetReadiness(ops_pb2.GetReadinessRequest(), timeout=10)
        assert readiness.status == "ready"
        assert set(readiness.checks) == {"database", "vault"}
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await registry_pb2_grpc.RegistryServiceStub(channel).ListServers(
                registry_pb2.ListServersRequest(), timeout=5
            )
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED

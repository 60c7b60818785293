"""The registry in-process against the real stack: readiness without MCP servers, bad files refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from pm.ops.v1 import ops_pb2, ops_pb2_grpc
from pm.registry.v1 import registry_pb2, registry_pb2_grpc
from pm_errors import ConfigurationError
from pm_registry.app import SPEC
from pm_testing import fresh_database, running_service, stack_env


async def test_registry_is_ready_without_servers_and_says_so() -> None:
    env = stack_env()
    async with fresh_database(env) as dsn, running_service(SPEC, env.service_environ(database_url=dsn)) as channel:
        readiness = await ops_pb2_grpc.OpsServiceStub(channel).GetReadiness(ops_pb2.GetReadinessRequest(), timeout=10)
        assert readiness.status == "ready"
        # MCP servers are not readiness checks: one server down must not take the registry out.
        assert set(readiness.checks) == {"database", "vault"}
        stub = registry_pb2_grpc.RegistryServiceStub(channel)
        servers = await stub.ListServers(registry_pb2.ListServersRequest(), timeout=5)
        assert list(servers.servers) == []
        health = await stub.GetHealth(registry_pb2.GetHealthRequest(), timeout=5)
        assert (health.healthy, health.total_servers) == (True, 0)


async def test_a_servers_file_that_does_not_validate_stops_start_up(tmp_path: Path) -> None:
    env = stack_env()
    bad = tmp_path / "servers.yaml"
    bad.write_text("servers:\n  - name: grafana\n    transport: carrier-pigeon\n")
    environ = {**env.service_environ(database_url="postgresql://127.0.0.1:1/none"), "MCP_SERVERS_FILE": str(bad)}
    with pytest.raises(ConfigurationError, match=r"servers\.yaml: servers\[grafana\]\.transport"):
        async with running_service(SPEC, environ):
            pass

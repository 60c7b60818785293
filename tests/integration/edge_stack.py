"""A whole stack behind Envoy, in this process: registry (with a sandbox servers file), worker,
orchestrator and ingest on the real PostgreSQL, Redis, OpenBao and S3-compatible server, each
service with its own metrics port, and Envoy in front rendering deploy/envoy/envoy.yaml.tmpl.

For tests that use the stack as a client does (REST through Envoy, a script, a scrape). Tests that
kill or restart services run them as processes instead (pm_testing.ServiceProcess).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc

from integration.sandbox import until_connected
from pm_db import apply_migrations
from pm_ingest.app import SPEC as INGEST
from pm_orchestrator.app import SPEC as ORCHESTRATOR
from pm_registry.app import SPEC as REGISTRY
from pm_testing import free_port, fresh_bucket, fresh_database, running_edge, running_service, stack_env
from pm_worker.app import SPEC as WORKER

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("registry", "worker", "orchestrator", "ingest")


@dataclass(frozen=True, slots=True)
class EdgeStack:
    """The running stack: Envoy's base URL, the database, and each service's channel and metrics port."""

    base_url: str
    api_key: str
    dsn: str
    channels: Mapping[str, grpc.aio.Channel]
    metrics_ports: Mapping[str, int]


@asynccontextmanager
async def running_edge_stack(
    tmp_path: Path,
    *,
    servers: str,
    api_key: str,
    environ: Mapping[str, str] | None = None,
    worker_environ: Mapping[str, str] | None = None,
) -> AsyncIterator[EdgeStack]:
    """The stack with `servers` as the registry's servers file; `environ` goes to every service,
    `worker_environ` to the worker only (an LLM key, say)."""
    env = stack_env()
    config = tmp_path / "servers.yaml"
    config.write_text(servers)
    async with AsyncExitStack() as stack:
        bucket = stack.enter_context(fresh_bucket(env))
        dsn = await stack.enter_async_context(fresh_database(env))
        await apply_migrations(dsn)
        grpc_ports = {service: free_port() for service in SERVICES}
        metrics_ports = {service: free_port() for service in SERVICES}
        base = env.service_environ(database_url=dsn, bucket=bucket, registry_addr=f"127.0.0.1:{grpc_ports['registry']}")
        base |= {"API_KEYS": api_key, "OUTBOX_POLL_SECONDS": "0.2", **(environ or {})}

        def service_environ(service: str, **extra: str) -> dict[str, str]:
            return {
                **base,
                "GRPC_LISTEN": f"127.0.0.1:{grpc_ports[service]}",
                "METRICS_LISTEN": f"127.0.0.1:{metrics_ports[service]}",
                **extra,
            }

        channels: dict[str, grpc.aio.Channel] = {}
        channels["registry"] = await stack.enter_async_context(
            running_service(REGISTRY, service_environ("registry", MCP_SERVERS_FILE=str(config)))
        )
        await until_connected(channels["registry"])
        channels["worker"] = await stack.enter_async_context(
            running_service(WORKER, service_environ("worker", **(worker_environ or {})))
        )
        for service, spec in (("orchestrator", ORCHESTRATOR), ("ingest", INGEST)):
            channels[service] = await stack.enter_async_context(running_service(spec, service_environ(service)))
        edge = await stack.enter_async_context(
            running_edge(
                env.envoy_bin,
                ROOT,
                tmp_path,
                ingest=(grpc_ports["ingest"], metrics_ports["ingest"]),
                orchestrator=(grpc_ports["orchestrator"], metrics_ports["orchestrator"]),
                worker_metrics=metrics_ports["worker"],
                registry_metrics=metrics_ports["registry"],
            )
        )
        yield EdgeStack(edge.base_url, api_key, dsn, channels, metrics_ports)

"""Starts the public edge for end-to-end tests: real Envoy (the repo's template and descriptor
set) in front of the real ingest and orchestrator services on the real stack."""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx

from pm_ingest.app import SPEC as INGEST
from pm_orchestrator.app import SPEC as ORCHESTRATOR
from pm_testing import free_port, fresh_bucket, running_edge, running_service, stack_env

PROTO_ROOT = Path("proto")
TEMPLATE = Path("deploy/envoy/envoy.yaml.tmpl")


@dataclass(frozen=True, slots=True)
class Edge:
    """The running edge: its base URL, the descriptor set it loaded and what ingest runs with."""

    base_url: str
    descriptor: Path
    client: httpx.AsyncClient
    ingest_environ: Mapping[str, str]
    ingest_channel: grpc.aio.Channel
    metrics_url: str


async def start_edge(
    stack: AsyncExitStack,
    tmp_path: Path,
    database_url: str,
    *,
    ingest_environ: Mapping[str, str] | None = None,
    orchestrator_environ: Mapping[str, str] | None = None,
) -> Edge:
    """Start ingest, the orchestrator and Envoy inside `stack`; `ingest_environ` and `orchestrator_environ`
    add or override settings."""
    env = stack_env()
    bucket = stack.enter_context(fresh_bucket(env))
    ingest_port, orchestrator_port, metrics_port, orchestrator_metrics = (free_port() for _ in range(4))
    ingest_env = {
        **env.service_environ(database_url=database_url),
        "GRPC_LISTEN": f"127.0.0.1:{ingest_port}",
        "METRICS_LISTEN": f"127.0.0.1:{metrics_port}",
        **(ingest_environ or {}),
    }
    orchestrator_env = {
        **env.service_environ(database_url=database_url, bucket=bucket, registry_addr="127.0.0.1:1"),
        "GRPC_LISTEN": f"127.0.0.1:{orchestrator_port}",
        "METRICS_LISTEN": f"127.0.0.1:{orchestrator_metrics}",
        **(orchestrator_environ or {}),
    }
    channel = await stack.enter_async_context(running_service(INGEST, ingest_env))
    await stack.enter_async_context(running_service(ORCHESTRATOR, orchestrator_env))
    edge = await stack.enter_async_context(
        running_edge(
            env.envoy_bin,
            Path(),
            tmp_path,
            ingest=(ingest_port, metrics_port),
            orchestrator=(orchestrator_port, orchestrator_metrics),
        )
    )
    base_url = edge.base_url
    client = await stack.enter_async_context(httpx.AsyncClient(base_url=base_url, timeout=15))
    return Edge(base_url, edge.descriptor, client, ingest_env, channel, f"http://127.0.0.1:{metrics_port}/metrics")

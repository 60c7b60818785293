"""scripts/dr-check.py, the DR checklist's last steps, against a whole running stack: Envoy in
front of ingest, orchestrator, worker and registry (with the sandbox scenario) on the real
PostgreSQL, Redis, OpenBao and S3-compatible server. It passes on a healthy stack and names the
failing step otherwise."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path

import pytest

from integration.sandbox import registry_config, until_connected
from pm_db import apply_migrations
from pm_ingest.app import SPEC as INGEST
from pm_orchestrator.app import SPEC as ORCHESTRATOR
from pm_registry.app import SPEC as REGISTRY
from pm_testing import (
    build_descriptor_set,
    edge_values,
    free_port,
    fresh_bucket,
    fresh_database,
    render_envoy_config,
    running_envoy,
    running_service,
    stack_env,
)
from pm_worker.app import SPEC as WORKER

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "dr-check.py"
SCENARIO = ROOT / "services" / "sandbox" / "scenarios" / "payments-retry-storm"
API_KEY = "dr-check-key-0001"


@pytest.fixture()
async def base_url(tmp_path: Path) -> AsyncIterator[str]:
    env = stack_env()
    config = tmp_path / "servers.yaml"
    config.write_text(registry_config(SCENARIO))
    async with AsyncExitStack() as stack:
        bucket = stack.enter_context(fresh_bucket(env))
        dsn = await stack.enter_async_context(fresh_database(env))
        await apply_migrations(dsn)
        registry_port, ingest_port, orchestrator_port, metrics_port = (free_port() for _ in range(4))
        base = env.service_environ(database_url=dsn, bucket=bucket, registry_addr=f"127.0.0.1:{registry_port}")
        base |= {"API_KEYS": API_KEY, "OUTBOX_POLL_SECONDS": "0.2", "METRICS_LISTEN": "127.0.0.1:0"}
        registry = await stack.enter_async_context(
            running_service(
                REGISTRY, {**base, "GRPC_LISTEN": f"127.0.0.1:{registry_port}", "MCP_SERVERS_FILE": str(config)}
            )
        )
        await until_connected(registry)
        await stack.enter_async_context(running_service(WORKER, base))
        await stack.enter_async_context(
            running_service(ORCHESTRATOR, {**base, "GRPC_LISTEN": f"127.0.0.1:{orchestrator_port}"})
        )
        await stack.enter_async_context(
            running_service(
                INGEST,
                {**base, "GRPC_LISTEN": f"127.0.0.1:{ingest_port}", "METRICS_LISTEN": f"127.0.0.1:{metrics_port}"},
            )
        )
        listen_port, admin_port = free_port(), free_port()
        envoy_config = render_envoy_config(
            ROOT / "deploy" / "envoy" / "envoy.yaml.tmpl",
            edge_values(
                listen_port=listen_port,
                admin_port=admin_port,
                descriptor=build_descriptor_set(ROOT / "proto", tmp_path / "pm.pb"),
                ingest=(ingest_port, metrics_port),
                orchestrator=(orchestrator_port, 9),
            ),
        )
        await stack.enter_async_context(running_envoy(env.envoy_bin, envoy_config, admin_port, tmp_path))
        yield f"http://127.0.0.1:{listen_port}"


async def _dr_check(*args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(SCRIPT), *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=180)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_the_dr_check_passes_on_a_healthy_stack_and_names_the_failing_step(base_url: str) -> None:
    code, out, err = await _dr_check(
        "--base-url", base_url, "--api-key", API_KEY, "--ticket", "SHOP-9", "--timeout", "120"
    )
    assert code == 0, out + err
    lines = out.splitlines()
    assert lines[0].startswith("ok   /healthz: pm-ingest up for")
    assert lines[1].startswith("ok   /readyz: ")
    assert {"database", "redis"} <= set(lines[1].removeprefix("ok   /readyz: ").removesuffix(" healthy").split(", "))
    assert "test investigation completed" in lines[3]
    assert "ROOT_CAUSE" in lines[3]  # the sandbox scenario's answer
    assert lines[-1] == "ok   disaster-recovery check passed"
    assert API_KEY not in out + err

    code, out, err = await _dr_check("--base-url", base_url, "--api-key", "wrong-key", "--timeout", "5")
    assert code == 1
    assert err.startswith("FAIL POST /api/v1/investigate answered 401")
    assert "wrong-key" not in out + err

    code, out, err = await _dr_check("--base-url", f"http://127.0.0.1:{free_port()}", "--api-key", API_KEY)
    assert code == 1
    assert err.startswith("FAIL GET /healthz: cannot reach")

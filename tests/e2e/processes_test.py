"""Every service as a real process, started as its pex and as `python -m pm_<svc>`.

Each one connects to the real stack, reports SERVING over gRPC health, and exits 0 on SIGTERM.
A missing required setting stops it with exit code 2 and one line that names the variable.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2

from pm_db import apply_migrations
from pm_testing import StackEnv, free_port, fresh_bucket, fresh_database, health_status, stack_env, wait_for

SERVICES = ("registry", "ingest", "orchestrator", "worker")


def _command(service: str, mode: str) -> list[str]:
    if mode == "pex":
        pex = Path(f"pm-{service}.pex")
        assert pex.is_file(), f"{pex} was not built into the sandbox"
        return [sys.executable, str(pex)]
    return [sys.executable, "-m", f"pm_{service}"]


def _process_env(extra: Mapping[str, str], mode: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("PEX")}
    if mode == "module":
        base["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    return {**base, **extra}


@asynccontextmanager
async def _service_process(command: Sequence[str], env: Mapping[str, str], port: int, log: Path) -> AsyncIterator[None]:
    with log.open("wb") as out:
        process = await asyncio.create_subprocess_exec(
            *command, env=dict(env), stdout=out, stderr=asyncio.subprocess.STDOUT
        )
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        try:

            async def serving() -> bool:
                if process.returncode is not None:
                    raise RuntimeError(f"{command} exited with {process.returncode}: {log.read_text()[-3000:]}")
                return await health_status(channel) == health_pb2.HealthCheckResponse.SERVING

            await wait_for(serving, timeout=60, what=f"{command[-1]} SERVING")
            yield
        finally:
            await channel.close()
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
            code = await asyncio.wait_for(process.wait(), timeout=30)
            assert code == 0, f"{command} exited with {code} after SIGTERM: {log.read_text()[-3000:]}"
    assert '"stopped pm-' in log.read_text()


def _environ(env: StackEnv, dsn: str, bucket: str, ports: Mapping[str, int]) -> dict[str, dict[str, str]]:
    shared = env.service_environ(database_url=dsn, bucket=bucket, registry_addr=f"127.0.0.1:{ports['registry']}")
    shared["LOG_LEVEL"] = "info"
    return {
        svc: {**shared, "GRPC_LISTEN": f"127.0.0.1:{ports[svc]}", "METRICS_LISTEN": f"127.0.0.1:{free_port()}"}
        for svc in SERVICES
    }


@pytest.mark.parametrize("mode", ["pex", "module"])
async def test_every_service_serves_and_stops_cleanly_on_sigterm(mode: str, tmp_path: Path) -> None:
    env = stack_env()
    with fresh_bucket(env) as bucket:
        async with fresh_database(env) as dsn:
            await apply_migrations(dsn)
            ports = {svc: free_port() for svc in SERVICES}
            environ = _environ(env, dsn, bucket, ports)
            async with AsyncExitStack() as stack:
                # The registry first: the worker is only ready once the registry serves.
                for svc in SERVICES:
                    await stack.enter_async_context(
                        _service_process(
                            _command(svc, mode), _process_env(environ[svc], mode), ports[svc], tmp_path / f"{svc}.log"
                        )
                    )


@pytest.mark.parametrize("service", SERVICES)
def test_missing_required_setting_exits_with_one_line_naming_it(service: str) -> None:
    env = _process_env({"REDIS_URL": "redis://127.0.0.1:1/0", "S3_BUCKET": "b", "REGISTRY_ADDR": "127.0.0.1:1"}, "pex")
    env.pop("DATABASE_URL", None)
    missing = "DATABASE_URL"
    if service == "worker":
        env.pop("REDIS_URL")
        missing = "REDIS_URL"
    result = subprocess.run(_command(service, "pex"), env=env, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"pm-{service}: missing required setting {missing}"]

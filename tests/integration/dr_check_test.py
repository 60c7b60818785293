"""scripts/dr-check.py, the DR checklist's last steps, against a whole running stack: Envoy in
front of ingest, orchestrator, worker and registry (with the sandbox scenario) on the real
PostgreSQL, Redis, OpenBao and S3-compatible server. It passes on a healthy stack and names the
failing step otherwise."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from integration.edge_stack import running_edge_stack
from integration.sandbox import registry_config
from pm_testing import free_port

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "dr-check.py"
SCENARIO = ROOT / "services" / "sandbox" / "scenarios" / "payments-retry-storm"
API_KEY = "dr-check-key-0001"


@pytest.fixture()
async def base_url(tmp_path: Path) -> AsyncIterator[str]:
    async with running_edge_stack(tmp_path, servers=registry_config(SCENARIO), api_key=API_KEY) as stack:
        yield stack.base_url


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

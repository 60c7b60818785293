"""The sandbox MCP server as a real process on loopback, which tests can kill and start again."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator, Collection, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc

from pm.registry.v1 import registry_pb2, registry_pb2_grpc
from pm_sandbox.server import TOOL_CAPABILITIES, WRITE_TOOL_CAPABILITIES
from pm_testing import free_port, wait_for
from pm_worker.rules.steps import ROLE_CAPABILITIES

# The server runs as a plain `python -m pm_sandbox`: it gets this process's import path.
CHILD_PYTHONPATH = os.pathsep.join(p for p in sys.path if p)


# The rule reasoner's roles, and `investigator`, which may read everything.
ROLES = {
    **{role: list(caps) for role, caps in ROLE_CAPABILITIES.items()},
    "investigator": sorted(set(TOOL_CAPABILITIES.values())),
}


def registry_config(
    data: Path, *, delay_ms: int = 0, without: Collection[str] = (), published: Path | None = None
) -> str:
    """A registry servers file: one stdio sandbox serving `data` (each call `delay_ms` late), and
    the rule reasoner's roles; the tools of the capabilities `without` are left out. With
    `published`, the sandbox's write tools too (appending to that file), for the delivery role."""
    tools = "".join(
        f"      {tool}: {{capabilities: [{cap}]}}\n" for tool, cap in TOOL_CAPABILITIES.items() if cap not in without
    )
    roles = dict(ROLES)
    args = ["-m", "pm_sandbox", "--data", str(data), "--delay-ms", str(delay_ms)]
    if published is not None:
        args += ["--published", str(published)]
        tools += "".join(
            f"      {tool}: {{capabilities: [{cap}], access: write}}\n" for tool, cap in WRITE_TOOL_CAPABILITIES.items()
        )
        roles["delivery"] = sorted(WRITE_TOOL_CAPABILITIES.values())
    listed = "".join(f"  {role}: {json.dumps(caps)}\n" for role, caps in roles.items())
    return (
        "servers:\n  - name: sandbox\n    transport: stdio\n"
        f"    command: {sys.executable}\n    args: {json.dumps(args)}\n"
        f'    env: {{PYTHONPATH: "{CHILD_PYTHONPATH}"}}\n    tools:\n{tools}roles:\n{listed}'
    )


async def until_connected(channel: grpc.aio.Channel, timeout: float = 30) -> None:
    """Wait until every server of the registry behind `channel` has its tool catalog."""
    stub: Any = registry_pb2_grpc.RegistryServiceStub(channel)

    async def connected() -> bool:
        reply = await stub.ListServers(registry_pb2.ListServersRequest(), timeout=5)
        return all(s.tool_count > 0 for s in reply.servers)

    await wait_for(connected, timeout=timeout, what="the registry's MCP sessions")


class SandboxProcess:
    """`python -m pm_sandbox` serving `data` over HTTP (streamable-http or sse) on a fixed port."""

    def __init__(
        self, data: Path, transport: str, *, access_key_header: str = "", environ: Mapping[str, str] | None = None
    ) -> None:
        self.data = data
        self.transport = transport
        self.port = free_port()
        self._access_key_header = access_key_header
        self._environ = dict(environ or {})
        self._process: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        path = "/sse" if self.transport == "sse" else "/mcp"
        return f"http://127.0.0.1:{self.port}{path}"

    async def start(self) -> None:
        args = ["-m", "pm_sandbox", "--data", str(self.data), "--transport", self.transport, "--port", str(self.port)]
        if self._access_key_header:
            args += ["--access-key-header", self._access_key_header]
        env = {**os.environ, **self._environ, "PYTHONPATH": CHILD_PYTHONPATH}
        self._process = await asyncio.create_subprocess_exec(
            sys.executable, *args, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL, env=env
        )

        async def listening() -> bool:
            if self._process is not None and self._process.returncode is not None:
                raise RuntimeError(f"the sandbox exited with {self._process.returncode}")
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                return False
            writer.close()
            return True

        await wait_for(listening, timeout=30, what=f"sandbox {self.transport} on port {self.port}")

    async def kill(self) -> None:
        if self._process is not None and self._process.returncode is None:
            self._process.kill()
            await self._process.wait()
        self._process = None


@asynccontextmanager
async def running_sandbox(
    data: Path, transport: str, *, access_key_header: str = "", environ: Mapping[str, str] | None = None
) -> AsyncIterator[SandboxProcess]:
    sandbox = SandboxProcess(data, transport, access_key_header=access_key_header, environ=environ)
    await sandbox.start()
    try:
        yield sandbox
    finally:
        await sandbox.kill()

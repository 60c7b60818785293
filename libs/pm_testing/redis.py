"""A private Redis server for tests that need to stop and restart it."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from redis.asyncio import Redis
from redis.exceptions import RedisError

from pm_testing.processes import free_port, wait_for
from pm_testing.stack import StackEnv


class PrivateRedis:
    """A redis-server of the test's own on a fixed loopback port; `stop()` and `start()` mid-test."""

    def __init__(self, root: Path, port: int) -> None:
        self.port = port
        self.url = f"redis://127.0.0.1:{port}/0"
        self._root = root
        self._process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        """Start the server (empty: nothing is persisted) and wait until it answers."""
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed")
        argv = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self._process = await asyncio.create_subprocess_exec(
            *argv, "--dir", str(self._root), stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
        )

        async def answers() -> bool:
            client = Redis.from_url(self.url, socket_connect_timeout=0.5)
            try:
                return bool(await client.ping())
            except (OSError, RedisError):
                return False
            finally:
                await client.aclose()

        await wait_for(answers, timeout=10, what=f"redis on port {self.port}")

    async def stop(self) -> None:
        """Kill the server; its data is gone."""
        if self._process is not None:
            self._process.kill()
            await self._process.wait()
            self._process = None


@asynccontextmanager
async def private_redis(env: StackEnv) -> AsyncIterator[PrivateRedis]:
    """A running private Redis, removed when the block ends."""
    root = Path(tempfile.mkdtemp(prefix="pm-redis-", dir=env.stack_dir))
    server = PrivateRedis(root, free_port())
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
        shutil.rmtree(root, ignore_errors=True)

"""A private PostgreSQL server for tests that need to stop or break the database."""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from pm_testing.processes import free_port
from pm_testing.stack import StackEnv


def _as_server_user(argv: list[str]) -> list[str]:
    # initdb and postgres refuse to run as root; CI runs as root.
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *argv]
    return argv


@dataclass(frozen=True, slots=True)
class PrivatePostgres:
    """A running server of the test's own; `stop()` shuts it down mid-test."""

    dsn: str
    data_dir: Path
    pg_bin: Path

    async def stop(self) -> None:
        """Fast shutdown; connections are cut."""
        await asyncio.to_thread(
            subprocess.run,
            _as_server_user([str(self.pg_bin / "pg_ctl"), "-D", str(self.data_dir), "-m", "fast", "-w", "stop"]),
            check=True,
            capture_output=True,
        )


@asynccontextmanager
async def private_postgres(env: StackEnv) -> AsyncIterator[PrivatePostgres]:
    """initdb + start a PostgreSQL 16 on a free loopback port; removed when the block ends."""
    root = Path(tempfile.mkdtemp(prefix="pm-pg-", dir=env.stack_dir))
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        os.chown(root, user.pw_uid, user.pw_gid)
    data = root / "data"
    port = free_port()
    run = subprocess.run
    await asyncio.to_thread(
        run,
        _as_server_user([str(env.pg_bin / "initdb"), "-D", str(data), "-U", "pm", "--auth=trust", "-E", "UTF8"]),
        check=True,
        capture_output=True,
    )
    options = f"-c listen_addresses=127.0.0.1 -p {port} -k {root}"
    await asyncio.to_thread(
        run,
        _as_server_user(
            [str(env.pg_bin / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(root / "server.log"), "-w", "start"]
        ),
        check=True,
        capture_output=True,
    )
    server = PrivatePostgres(dsn=f"postgresql://pm@127.0.0.1:{port}/postgres", data_dir=data, pg_bin=env.pg_bin)
    try:
        yield server
    finally:
        await asyncio.to_thread(
            run,
            _as_server_user([str(env.pg_bin / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]),
            capture_output=True,
        )
        shutil.rmtree(root, ignore_errors=True)

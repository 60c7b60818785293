"""Helpers for tests that run real processes on loopback."""

from __future__ import annotations

import asyncio
import random
import socket
from collections.abc import Awaitable, Callable

# Ports handed to tests come from below the kernel's ephemeral range (32768-60999 on Linux), so
# that no outgoing connection of a test running in parallel takes one between the moment it is
# chosen and the moment its service binds it, and above the well-known services' ports. The
# infrastructure's test ports (25432 and up) lie above this range.
PORT_RANGE = range(12000, 25000)
_handed_out: set[int] = set()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now and was not handed out before in this process.

    Picked at random from PORT_RANGE, so parallel test processes rarely pick the same one."""
    for _ in range(1000):
        port = random.choice(PORT_RANGE)
        if port in _handed_out:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError("no free port in the tests' port range after 1000 tries")


async def wait_for(
    condition: Callable[[], Awaitable[bool]],
    *,
    timeout: float,
    interval: float = 0.1,
    what: str = "condition",
) -> None:
    """Poll `condition` until it is true; raise TimeoutError naming `what` after `timeout` seconds."""
    try:
        async with asyncio.timeout(timeout):
            while not await condition():
                await asyncio.sleep(interval)
    except TimeoutError:
        raise TimeoutError(f"{what} not reached within {timeout:g}s") from None

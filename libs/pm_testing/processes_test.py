"""free_port: ports outside the kernel's ephemeral range, never the same twice, never a bound one."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from pm_testing import processes
from pm_testing.processes import PORT_RANGE, free_port


def _ephemeral_range() -> range:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
    except OSError:
        return range(32768, 61000)
    return range(int(low), int(high) + 1)


def test_ports_lie_below_the_ephemeral_range_and_are_never_handed_out_twice() -> None:
    ports = [free_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)
    assert all(port in PORT_RANGE for port in ports)
    ephemeral = _ephemeral_range()
    assert PORT_RANGE.stop <= ephemeral.start, "the test ports overlap the kernel's ephemeral range"


def test_a_port_something_listens_on_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind(("127.0.0.1", 0))
            idle = probe.getsockname()[1]
        monkeypatch.setattr(processes, "PORT_RANGE", [busy, idle])
        monkeypatch.setattr(processes, "_handed_out", set())
        assert free_port() == idle
        with pytest.raises(RuntimeError, match="no free port"):
            free_port()

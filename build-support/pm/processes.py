"""Starting, probing and stopping the stack's processes; bounded waits; small network probes."""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import BinaryIO

from profiles import LOOPBACK, StackError

POLL_INTERVAL_SECONDS = 0.1
BASE_ENV_VARS = ("PATH", "HOME", "USER", "LANG", "LC_ALL", "TZ", "TMPDIR")


def base_environ(environ: Mapping[str, str]) -> dict[str, str]:
    """The few variables every started process inherits from the caller."""
    return {name: environ[name] for name in BASE_ENV_VARS if name in environ}


def open_log(log_path: Path, argv: Sequence[str]) -> BinaryIO:
    """Open a component's log for appending, marked with what is starting now.

    The log is private to the user: dev servers print credentials (OpenBao its root token).
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = os.fdopen(os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab")
    log.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} pm starts: {shlex.join(argv)}\n".encode())
    log.flush()
    return log


def spawn(argv: Sequence[str], log_path: Path, env: Mapping[str, str], cwd: Path) -> subprocess.Popen[bytes]:
    """Start `argv` in its own session (it outlives ./pm and its shell), output to `log_path`."""
    with open_log(log_path, argv) as log:
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env),
            cwd=cwd,
            start_new_session=True,
        )


def run_checked(command: Sequence[str], what: str, cwd: Path) -> None:
    """Run a short command in its own session; raise StackError with its output when it fails."""
    result = subprocess.run(list(command), capture_output=True, text=True, cwd=cwd, check=False, start_new_session=True)
    if result.returncode != 0:
        output = (result.stdout + result.stderr).strip().splitlines()[-20:]
        raise StackError(f"{what} failed (exit {result.returncode}):\n" + "\n".join(output))


def start_ticks(pid: int) -> int | None:
    """The kernel's start time of `pid` (identifies it across pid reuse); None when gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    # fields[0] is the state (field 3 of proc(5)); starttime is field 22.
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def is_running(pid: int, ticks: int | None = None) -> bool:
    """Whether `pid` is alive and, when `ticks` is given, still the process that was recorded."""
    _reap(pid)
    current = start_ticks(pid)
    return current is not None and (ticks is None or current == ticks)


def terminate(pid: int, ticks: int | None, timeout: float, sig: signal.Signals = signal.SIGTERM) -> None:
    """Send `sig` to `pid`, wait up to `timeout` seconds, then SIGKILL it."""
    if not is_running(pid, ticks):
        return
    _signal(pid, sig)
    if _wait_gone(pid, ticks, timeout):
        return
    _signal(pid, signal.SIGKILL)
    _wait_gone(pid, ticks, 5.0)


def wait_for(
    ready: Callable[[], bool],
    *,
    what: str,
    timeout: float,
    alive: Callable[[], bool] | None = None,
) -> None:
    """Poll `ready` until it holds; fail after `timeout` seconds or as soon as `alive` turns false."""
    deadline = time.monotonic() + timeout
    while not ready():
        if alive is not None and not alive():
            raise StackError(f"{what}: the process exited")
        if time.monotonic() >= deadline:
            raise StackError(f"{what}: not ready after {timeout:.0f} s")
        time.sleep(POLL_INTERVAL_SECONDS)


def port_in_use(port: int, host: str = LOOPBACK) -> bool:
    """Whether something already listens on `host:port` (bind test; TIME_WAIT does not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return True
    return False


def accepts_connections(port: int, host: str = LOOPBACK, timeout: float = 1.0) -> bool:
    """Whether a TCP connection to `host:port` succeeds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def http_status(url: str, timeout: float = 2.0) -> int | None:
    """The HTTP status of GET `url`; None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code
    except (urllib.error.URLError, OSError):
        return None


def redis_ping(port: int, host: str = LOOPBACK, timeout: float = 1.0) -> bool:
    """Whether Redis at `host:port` answers PING with PONG."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def tail(path: Path, lines: int = 20) -> str:
    """The last `lines` lines of `path`, or a note that it does not exist."""
    try:
        content = path.read_text(errors="replace").splitlines()
    except OSError:
        return f"({path} does not exist)"
    return "\n".join(content[-lines:])


def _signal(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _wait_gone(pid: int, ticks: int | None, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while is_running(pid, ticks):
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL_INTERVAL_SECONDS)
    return True


def _reap(pid: int) -> None:
    # A process this run started stays a zombie until its parent waits for it.
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)

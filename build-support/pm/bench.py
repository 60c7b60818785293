"""`./pm bench intake`: intake throughput and latency through Envoy on a stack of its own.

The stack (profile "bench", data in .stack/bench) is started from empty data with the packaged
services, exactly as `./pm up` does, with a PagerDuty and a Jira webhook secret and a rate limit
too high to bind. For each path and concurrency, wrk (one thread, keep-alive connections) sends
requests for a fixed time; each request is distinct (its own incident, issue or ticket) and
signed over its exact bytes where the path needs it, so every 2xx must become exactly one new
investigation row and one stream entry, which is checked after each run. Peak memory (PSS) is sampled
per component (PostgreSQL with its backends) during each run. Everything shares this machine's cores.
"""

# ruff: noqa: T201 -- a command-line front end: printing is its output.

from __future__ import annotations

import hashlib
import hmac
import json
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass

import infra
import psutil
import stack
from profiles import REPO_ROOT, Profile, StackError
from statefile import load_state

PD_SECRET = "bench-pagerduty-secret"
JIRA_SECRET = "bench-jira-secret"
API_KEY = "bench-api-key-0001"
MAX_RATE = 6000  # requests per second a run is prepared for (distinct requests are pre-built)
RSS_COMPONENTS = ("envoy", "ingest", "postgres", "redis")


@dataclass(frozen=True, slots=True)
class Run:
    """The outcome of one path at one concurrency."""

    path: str
    concurrency: int
    seconds: float
    requests: int
    ok: int
    errors: int
    rps: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    rows: int
    stream_entries: int
    peak_rss_mb: Mapping[str, float]

    @property
    def consistent(self) -> bool:
        """Every 2xx became exactly one row and one stream entry.

        wrk stops with up to `concurrency` requests in flight and does not count their answers,
        so those may add rows beyond the counted 2xx; each row still has exactly one entry.
        """
        return self.ok <= self.rows <= self.ok + self.concurrency and self.rows == self.stream_entries


@dataclass(frozen=True, slots=True)
class BenchPath:
    """A benchmarked request path: how to build its requests and where its rows and entries land."""

    name: str
    url_path: str
    stream: str
    trigger_source: str
    build: Callable[[int, str], tuple[dict[str, str], bytes]]


def _hmac(secret: str, body: bytes) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def _pagerduty(i: int, run_id: str) -> tuple[dict[str, str], bytes]:
    body = json.dumps(
        {
            "event": {
                "event_type": "incident.triggered",
                "data": {
                    "id": f"B{run_id}{i}",
                    "number": int(run_id) * 1_000_000 + i,
                    "urgency": "high",
                    "title": "Checkout error rate above 5%",
                    "service": {"id": "PBENCH", "summary": "checkout-api"},
                },
            }
        },
        separators=(",", ":"),
    ).encode()
    return {"X-PagerDuty-Signature": "v1=" + _hmac(PD_SECRET, body), "Content-Type": "application/json"}, body


def _jira(i: int, run_id: str) -> tuple[dict[str, str], bytes]:
    body = json.dumps(
        {"webhookEvent": "jira:issue_created", "issue": {"key": f"JB{run_id}-{i}"}, "user": {"displayName": "bench"}},
        separators=(",", ":"),
    ).encode()
    return {"X-Hub-Signature": "sha256=" + _hmac(JIRA_SECRET, body), "Content-Type": "application/json"}, body


def _submit(i: int, run_id: str) -> tuple[dict[str, str], bytes]:
    body = json.dumps({"ticket_id": f"SB{run_id}-{i}", "mode": "fast"}, separators=(",", ":")).encode()
    return {"x-api-key": API_KEY, "Content-Type": "application/json"}, body


PATHS = (
    BenchPath(
        "pagerduty webhook (signed)", "/api/v1/webhooks/pagerduty", "pm.investigations.urgent", "pagerduty", _pagerduty
    ),
    BenchPath("jira webhook (signed)", "/api/v1/webhooks/jira", "pm.investigations", "jira_webhook", _jira),
    BenchPath("API submission (x-api-key)", "/api/v1/investigate", "pm.investigations", "api", _submit),
)

_WRK_SCRIPT = """
local requests = {}
local next_index = 0
init = function(args)
  for line in io.lines(args[1]) do
    local tab = string.find(line, "\\t", 1, true)
    local tab2 = string.find(line, "\\t", tab + 1, true)
    local hname, hvalue = string.sub(line, 1, tab - 1), string.sub(line, tab + 1, tab2 - 1)
    local body = string.sub(line, tab2 + 1)
    local headers = {["Content-Type"] = "application/json"}
    headers[hname] = hvalue
    requests[#requests + 1] = wrk.format("POST", args[2], headers, body)
  end
end
request = function()
  next_index = next_index + 1
  if next_index > #requests then
    -- Out of distinct requests: stop rather than send a repeat.
    wrk.thread:stop()
    next_index = #requests
  end
  return requests[next_index]
end
done = function(summary, latency, requests)
  local out = io.open(os.getenv("PM_BENCH_OUT"), "w")
  local e = summary.errors
  out:write(string.format(
    '{"requests":%d,"duration_us":%d,"status_errors":%d,"socket_errors":%d,"p50_us":%d,"p99_us":%d,"max_us":%d}',
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99), latency.max))
  out:close()
end
"""


def _psql(profile: Profile, sql: str) -> str:
    command = [str(infra.pg_bin_dir() / "psql"), "-At", "-d", infra.pg_dsn(profile, stack.DEV_DATABASE), "-c", sql]
    return subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip()


def _redis(profile: Profile, *args: str) -> int:
    parts = [f"*{len(args)}\r\n".encode()] + [f"${len(a.encode())}\r\n{a}\r\n".encode() for a in args]
    with socket.create_connection(("127.0.0.1", profile.port("redis")), timeout=5) as conn:
        conn.sendall(b"".join(parts))
        reply = conn.recv(128)
    if not reply.startswith(b":"):
        raise StackError(f"unexpected Redis reply {reply[:60]!r}")
    return int(reply[1:].split(b"\r\n")[0])


def _counts(profile: Profile, path: BenchPath) -> tuple[int, int]:
    rows = int(_psql(profile, f"SELECT count(*) FROM investigations WHERE trigger_source = '{path.trigger_source}'"))
    return rows, _redis(profile, "XLEN", path.stream)


def _wait_outbox_drained(profile: Profile, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while _psql(profile, "SELECT count(*) FROM outbox WHERE published_at IS NULL") != "0":
        if time.monotonic() > deadline:
            raise StackError("the outbox did not drain within 60 s after a run")
        time.sleep(0.2)


class _RssSampler:
    """Peak resident memory per component while a run lasts (PostgreSQL with its backends)."""

    def __init__(self, pids: Mapping[str, Sequence[int]]) -> None:
        self._procs = {name: [psutil.Process(pid) for pid in group] for name, group in pids.items()}
        self.peak: dict[str, float] = dict.fromkeys(pids, 0.0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _rss(self, proc: psutil.Process) -> int:
        # PSS, not RSS: PostgreSQL's backends share their buffers, which RSS would count once
        # per backend.
        total = proc.memory_full_info().pss
        for child in proc.children(recursive=True):
            try:
                total += child.memory_full_info().pss
            except psutil.Error:
                continue
        return total

    def _loop(self) -> None:
        while not self._stop.is_set():
            for name, procs in self._procs.items():
                try:
                    self.peak[name] = max(self.peak[name], sum(self._rss(p) for p in procs) / 2**20)
                except psutil.Error:
                    continue
            self._stop.wait(0.25)

    def __enter__(self) -> _RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _run(profile: Profile, path: BenchPath, concurrency: int, seconds: float, run_id: str, wrk: str) -> Run:
    work = profile.dir / "bench"
    work.mkdir(parents=True, exist_ok=True)
    data = work / f"requests-{run_id}.tsv"
    count = int(MAX_RATE * seconds)
    with data.open("w") as out:
        for i in range(count):
            headers, body = path.build(i, run_id)
            name, value = next((k, v) for k, v in headers.items() if k != "Content-Type")
            out.write(f"{name}\t{value}\t{body.decode()}\n")
    script = work / "intake.lua"
    script.write_text(_WRK_SCRIPT)
    result_file = work / f"result-{run_id}.json"
    rows_before, entries_before = _counts(profile, path)
    state = load_state(profile.state_file)
    assert state is not None
    # Ingest replicas (ingest-2, ...) count together with ingest.
    pids: dict[str, list[int]] = {}
    for record in state.processes:
        group = record.component.partition("-")[0]
        if group in RSS_COMPONENTS:
            pids.setdefault(group, []).append(record.pid)
    url = f"http://{profile.address('envoy')}"
    # Arguments after the URL go to the script's init().
    command = [wrk, "-t1", f"-c{concurrency}", f"-d{seconds:g}s", "--timeout", "10s", "-s", str(script), url]
    command += [str(data), path.url_path]
    with _RssSampler(pids) as sampler:
        subprocess.run(command, check=True, capture_output=True, env={"PM_BENCH_OUT": str(result_file)})
    _wait_outbox_drained(profile)
    rows_after, entries_after = _counts(profile, path)
    result = json.loads(result_file.read_text())
    errors = result["status_errors"] + result["socket_errors"]
    duration = result["duration_us"] / 1e6
    data.unlink()
    return Run(
        path=path.name,
        concurrency=concurrency,
        seconds=round(duration, 1),
        requests=result["requests"],
        ok=result["requests"] - errors,
        errors=errors,
        rps=round(result["requests"] / duration, 1),
        p50_ms=round(result["p50_us"] / 1000, 1),
        p99_ms=round(result["p99_us"] / 1000, 1),
        max_ms=round(result["max_us"] / 1000, 1),
        rows=rows_after - rows_before,
        stream_entries=entries_after - entries_before,
        peak_rss_mb={k: round(v, 1) for k, v in sampler.peak.items()},
    )


def _table(runs: Sequence[Run]) -> str:
    lines = [
        "| path | c | req/s | p50 ms | p99 ms | max ms | requests | errors | rows = entries = 2xx "
        "| peak memory (PSS) MB (envoy / ingest / postgres / redis) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        rss = " / ".join(f"{r.peak_rss_mb.get(c, 0):.0f}" for c in RSS_COMPONENTS)
        counts = f"{r.ok} 2xx, {r.rows} rows, {r.stream_entries} entries"
        check = f"yes ({counts})" if r.consistent else f"NO ({counts})"
        lines.append(
            f"| {r.path} | {r.concurrency} | {r.rps:.0f} | {r.p50_ms} | {r.p99_ms} | {r.max_ms} | {r.requests} | "
            f"{r.errors} | {check} | {rss} |"
        )
    return "\n".join(lines)


def bench_intake(
    environ: Mapping[str, str], *, seconds: float, concurrencies: Sequence[int], keep: bool, ingest_replicas: int = 1
) -> int:
    """Run the intake benchmark; exit 1 when a run had errors or rows that do not match its 2xx."""
    wrk = shutil.which("wrk")
    if wrk is None:
        raise StackError("wrk is not installed (apt-get install -y wrk)")
    bench_environ = {
        **environ,
        "PAGERDUTY_WEBHOOK_SECRET": PD_SECRET,
        "JIRA_WEBHOOK_SECRET": JIRA_SECRET,
        "API_KEYS": API_KEY,
        "RATE_LIMIT_INVESTIGATION_PER_MINUTE": str(10**9),
        "LOG_LEVEL": "warning",
        "PM_INGEST_REPLICAS": str(ingest_replicas),
    }
    profile = stack.up_fresh("bench", bench_environ)
    runs: list[Run] = []
    try:
        run_number = 0
        for path in PATHS:
            for concurrency in concurrencies:
                run_number += 1
                run = _run(profile, path, concurrency, seconds, f"{run_number:02d}", wrk)
                runs.append(run)
                print(
                    f"pm: {run.path:<28} c={concurrency:<3} {run.rps:>7.0f} req/s  p50 {run.p50_ms:>6.1f} ms  "
                    f"p99 {run.p99_ms:>6.1f} ms  errors {run.errors}  consistent {run.consistent}",
                    flush=True,
                )
    finally:
        if not keep:
            stack.down("bench", bench_environ)
    print()
    print(f"ingest processes: {ingest_replicas}")
    print(_table(runs))
    out = REPO_ROOT / ".stack" / "bench-intake.json"
    out.write_text(json.dumps([asdict(r) for r in runs], indent=2))
    print(f"\npm: results in {out.relative_to(REPO_ROOT)}")
    bad = [r for r in runs if r.errors or not r.consistent]
    return 1 if bad else 0


def parse_concurrencies(value: str) -> list[int]:
    """`1,8,32` -> [1, 8, 32]."""
    levels = [int(v) for v in value.split(",") if v.strip()]
    if not levels or any(not 1 <= c <= 1024 for c in levels):
        raise StackError(f"bad concurrency list {value!r}")
    return levels

"""`./pm bench intake`: intake throughput and latency through Envoy on a stack of its own.

The stack (profile "bench", data in .stack/bench) is started from empty data with the packaged
services, as `./pm up` does, with a PagerDuty and a Jira webhook secret, rate limits too high to
bind and one trace in a hundred recorded (TRACE_SAMPLE_RATIO). The orchestrator starts only
before the reads, on streams of its own, so it neither runs the investigations the write runs
create nor relays their outbox rows (whole investigations are `./pm bench engine`). For each path
and concurrency, wrk (one thread, keep-alive connections) sends requests for a fixed time; each
request is distinct (its own incident, issue or ticket, or for reads its own existing
investigation) and signed over its exact bytes where the path needs it. After each write run,
every 2xx must have become exactly one new investigation row and one stream entry; after each
read run, every answer must have been a 2xx. Peak memory (PSS) is sampled per component
(PostgreSQL with its backends) during each run. Everything shares this machine's cores.
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
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass

import infra
import psutil
import stack
from processes import wait_for
from profiles import REPO_ROOT, Profile, StackError
from statefile import load_state

PD_SECRET = "bench-pagerduty-secret"
JIRA_SECRET = "bench-jira-secret"
API_KEY = "bench-api-key-0001"
MAX_RATE = 6000  # requests per second a run is prepared for (distinct requests are pre-built)
RSS_COMPONENTS = ("envoy", "ingest", "orchestrator", "postgres", "redis")
TRACE_SAMPLE_RATIO = "0.01"
# The orchestrator's streams while it serves the reads: none that ingest writes to.
IDLE_ENGINE_NAMESPACE = "bench-reads-only:"


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
    # Write paths: new investigation rows and stream entries. Reads: None.
    rows: int | None
    stream_entries: int | None
    # Reads: answers that were not 2xx (wrk itself counts only 4xx and 5xx as errors). Writes: None.
    non_2xx: int | None
    peak_rss_mb: Mapping[str, float]

    @property
    def consistent(self) -> bool:
        """Writes: every 2xx became exactly one row and one stream entry. Reads: every answer was a 2xx.

        wrk stops with up to `concurrency` requests in flight and does not count their answers,
        so those may add rows beyond the counted 2xx; each row still has exactly one entry.
        """
        if self.rows is None or self.stream_entries is None:
            return self.non_2xx == 0
        return self.ok <= self.rows <= self.ok + self.concurrency and self.rows == self.stream_entries


@dataclass(frozen=True, slots=True)
class Request:
    """One HTTP request as wrk sends it: a method, a path, one header besides Content-Type, a body."""

    method: str
    path: str
    header: tuple[str, str]
    body: bytes = b""


@dataclass(frozen=True, slots=True)
class BenchPath:
    """A benchmarked request path: how to build its requests and, for writes, where rows and entries land."""

    name: str
    # Distinct requests for one run: (profile, how many, run id).
    requests: Callable[[Profile, int, str], Iterable[Request]]
    stream: str | None = None
    trigger_source: str | None = None

    @property
    def reads(self) -> bool:
        """Whether the path only reads (checked by status, not by rows and entries)."""
        return self.stream is None


def _hmac(secret: str, body: bytes) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def _pagerduty(i: int, run_id: str) -> Request:
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
    return Request(
        "POST", "/api/v1/webhooks/pagerduty", ("X-PagerDuty-Signature", "v1=" + _hmac(PD_SECRET, body)), body
    )


def _jira(i: int, run_id: str) -> Request:
    body = json.dumps(
        {"webhookEvent": "jira:issue_created", "issue": {"key": f"JB{run_id}-{i}"}, "user": {"displayName": "bench"}},
        separators=(",", ":"),
    ).encode()
    return Request("POST", "/api/v1/webhooks/jira", ("X-Hub-Signature", "sha256=" + _hmac(JIRA_SECRET, body)), body)


def _submit(i: int, run_id: str) -> Request:
    body = json.dumps({"ticket_id": f"SB{run_id}-{i}", "mode": "fast"}, separators=(",", ":")).encode()
    return Request("POST", "/api/v1/investigate", ("x-api-key", API_KEY), body)


def _each(build: Callable[[int, str], Request]) -> Callable[[Profile, int, str], Iterable[Request]]:
    return lambda profile, count, run_id: (build(i, run_id) for i in range(count))


def _reads(profile: Profile, count: int, run_id: str) -> Iterable[Request]:
    """GETs of `count` distinct existing investigations in random order, first adding finished
    ones when the earlier runs did not leave that many."""
    missing = count - int(_psql(profile, "SELECT count(*) FROM investigations"))
    if missing > 0:
        _psql(
            profile,
            "INSERT INTO investigations (id, ticket_id, mode, status, phase, trigger_source, requested_by, verdict,"
            " confidence, summary, completed_at)"
            f" SELECT gen_random_uuid(), 'RB{run_id}-' || n, 'fast', 'completed', 'deliver', 'api', 'bench',"
            " 'INCONCLUSIVE', 0.5, 'No cause found in the evidence gathered.', now()"
            f" FROM generate_series(1, {missing}) AS n",
        )
    ids = _psql(profile, f"SELECT id FROM investigations ORDER BY random() LIMIT {count}").split()
    return (Request("GET", f"/api/v1/investigations/{i}", ("x-api-key", API_KEY)) for i in ids)


PATHS = (
    BenchPath("pagerduty webhook (signed)", _each(_pagerduty), "pm.investigations.urgent", "pagerduty"),
    BenchPath("jira webhook (signed)", _each(_jira), "pm.investigations", "jira_webhook"),
    BenchPath("API submission (x-api-key)", _each(_submit), "pm.investigations", "api"),
    BenchPath("investigation read (x-api-key)", _reads),
)
PATH_NAMES = dict(zip(("pagerduty", "jira", "api", "reads"), PATHS, strict=True))

# Each line of the requests file: method, path, header name, header value, body (tab-separated).
_WRK_SCRIPT = """
local requests = {}
local next_index = 0
init = function(args)
  for line in io.lines(args[1]) do
    local fields, start = {}, 1
    for _ = 1, 4 do
      local tab = string.find(line, "\\t", start, true)
      fields[#fields + 1] = string.sub(line, start, tab - 1)
      start = tab + 1
    end
    local body = string.sub(line, start)
    local headers = {}
    headers[fields[3]] = fields[4]
    if body == "" then
      body = nil
    else
      headers["Content-Type"] = "application/json"
    end
    requests[#requests + 1] = wrk.format(fields[1], fields[2], headers, body)
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
    '{"requests":%d,"duration_us":%d,"status_errors":%d,"socket_errors":%d,"p50_us":%d,"p99_us":%d,"max_us":%d,'
    .. '"non_2xx":%d}',
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99), latency.max, non_2xx_total()))
  out:close()
end
"""

# Reads count every answer that is not a 2xx. Only their script has a response() callback:
# with one, wrk parses every response in Lua, which the write paths do not pay for.
_COUNT_NOTHING = """
non_2xx_total = function() return -1 end
"""
_COUNT_NON_2XX = """
local threads = {}
setup = function(thread) table.insert(threads, thread) end
non_2xx = 0
response = function(status, headers, body)
  if status < 200 or status > 299 then non_2xx = non_2xx + 1 end
end
non_2xx_total = function()
  local total = 0
  for _, thread in ipairs(threads) do total = total + thread:get("non_2xx") end
  return total
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
    if path.stream is None:
        return 0, 0
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
    with data.open("w") as out:
        for request in path.requests(profile, int(MAX_RATE * seconds), run_id):
            name, value = request.header
            out.write(f"{request.method}\t{request.path}\t{name}\t{value}\t{request.body.decode()}\n")
    script = work / ("reads.lua" if path.reads else "intake.lua")
    script.write_text(_WRK_SCRIPT + (_COUNT_NON_2XX if path.reads else _COUNT_NOTHING))
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
    command += [str(data)]
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
        rows=None if path.reads else rows_after - rows_before,
        stream_entries=None if path.reads else entries_after - entries_before,
        non_2xx=result["non_2xx"] if path.reads else None,
        peak_rss_mb={k: round(v, 1) for k, v in sampler.peak.items()},
    )


def _start_reads(profile: Profile, environ: Mapping[str, str]) -> None:
    """Start the orchestrator with an idle engine and wait until it answers reads through Envoy."""
    state = load_state(profile.state_file)
    if state is not None and any(record.component == "orchestrator" for record in state.processes):
        return
    idle_engine = {"STREAM_NAMESPACE": IDLE_ENGINE_NAMESPACE, "RECONCILE_INTERVAL_SECONDS": "3600"}
    stack.start_deferred(profile, environ, "orchestrator", idle_engine)
    url = f"http://{profile.address('envoy')}/api/v1/investigations/{uuid.uuid4()}"

    def answers() -> bool:
        request = urllib.request.Request(url, headers={"x-api-key": API_KEY})
        try:
            urllib.request.urlopen(request, timeout=2).close()
        except urllib.error.HTTPError as error:
            return error.code == 404
        except OSError:
            return False
        return True

    wait_for(answers, what=f"GET {url} answered by the orchestrator", timeout=60.0)


def _check(run: Run) -> str:
    if run.rows is None:
        counts = f"{run.ok} answers, {run.non_2xx} not 2xx"
    else:
        counts = f"{run.ok} 2xx, {run.rows} rows, {run.stream_entries} entries"
    return f"yes ({counts})" if run.consistent else f"NO ({counts})"


def _table(runs: Sequence[Run]) -> str:
    lines = [
        "| path | c | req/s | p50 ms | p99 ms | max ms | requests | errors "
        "| writes: rows = entries = 2xx; reads: all 2xx "
        f"| peak memory (PSS) MB ({' / '.join(RSS_COMPONENTS)}) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        # A component not running during the run (the orchestrator before the reads) shows "-".
        rss = " / ".join(f"{r.peak_rss_mb[c]:.0f}" if c in r.peak_rss_mb else "-" for c in RSS_COMPONENTS)
        lines.append(
            f"| {r.path} | {r.concurrency} | {r.rps:.0f} | {r.p50_ms} | {r.p99_ms} | {r.max_ms} | {r.requests} | "
            f"{r.errors} | {_check(r)} | {rss} |"
        )
    return "\n".join(lines)


def bench_intake(
    environ: Mapping[str, str],
    *,
    seconds: float,
    concurrencies: Sequence[int],
    keep: bool,
    ingest_replicas: int = 1,
    paths: Sequence[str] = (),
) -> int:
    """Run the intake benchmark; exit 1 when a run had errors, rows that do not match its 2xx, or
    a read that was not answered 2xx. `paths` (names from PATH_NAMES) limits the paths run."""
    wrk = shutil.which("wrk")
    if wrk is None:
        raise StackError("wrk is not installed (apt-get install -y wrk)")
    selected = [path for key, path in PATH_NAMES.items() if not paths or key in paths]
    bench_environ = {
        **environ,
        "PAGERDUTY_WEBHOOK_SECRET": PD_SECRET,
        "JIRA_WEBHOOK_SECRET": JIRA_SECRET,
        "API_KEYS": API_KEY,
        "RATE_LIMIT_INVESTIGATION_PER_MINUTE": str(10**9),
        "RATE_LIMIT_QUERY_PER_MINUTE": str(10**9),
        # As a deployment under this load would: record one trace in a hundred.
        "TRACE_SAMPLE_RATIO": TRACE_SAMPLE_RATIO,
        "LOG_LEVEL": "warning",
        "PM_INGEST_REPLICAS": str(ingest_replicas),
    }
    # The orchestrator serves the reads but must not run the thousands of investigations the
    # write runs create, nor relay their outbox rows: it starts only before the first read run,
    # on streams of its own, with no reconciler pass within the benchmark.
    profile = stack.up_fresh("bench", bench_environ, deferred=("orchestrator",))
    runs: list[Run] = []
    try:
        run_number = 0
        for path in selected:
            if path.reads:
                _start_reads(profile, bench_environ)
            for concurrency in concurrencies:
                run_number += 1
                run = _run(profile, path, concurrency, seconds, f"{run_number:02d}", wrk)
                runs.append(run)
                print(
                    f"pm: {run.path:<31} c={concurrency:<3} {run.rps:>7.0f} req/s  p50 {run.p50_ms:>6.1f} ms  "
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


def parse_paths(value: str) -> list[str]:
    """`api,reads` -> ["api", "reads"]; empty means every path."""
    names = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [n for n in names if n not in PATH_NAMES]
    if unknown:
        raise StackError(f"unknown path(s) {', '.join(unknown)}; known: {', '.join(PATH_NAMES)}")
    return names


def parse_concurrencies(value: str) -> list[int]:
    """`1,8,32` -> [1, 8, 32]."""
    levels = [int(v) for v in value.split(",") if v.strip()]
    if not levels or any(not 1 <= c <= 1024 for c in levels):
        raise StackError(f"bad concurrency list {value!r}")
    return levels

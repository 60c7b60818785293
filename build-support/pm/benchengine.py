"""`./pm bench engine`: whole investigations with the rule reasoner, through Envoy, at several concurrencies.

A fresh stack of its own (profile "bench") serves the demo incident through the sandbox. For
each concurrency level, `--investigations` tickets are submitted through the REST API, at most
`c` in flight at once; each is followed until it ends. Reported: completed investigations per
minute, submit-to-verdict p50/p99, failures, and each service's peak memory (PSS) during the run.
Every investigation must end `completed` with the demo's known verdict, or the run counts it as
an error.
"""

# ruff: noqa: T201 -- a command-line front end: printing is its output.

from __future__ import annotations

import json
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

import restapi
import stack
from bench import _RssSampler
from profiles import REPO_ROOT, Profile
from statefile import load_state

API_KEY = "bench-api-key-0001"
SERVICES = ("ingest", "orchestrator", "worker", "registry", "postgres", "redis", "envoy")
TIMEOUT_SECONDS = 300.0


@dataclass(frozen=True, slots=True)
class EngineRun:
    concurrency: int
    investigations: int
    completed: int
    errors: int
    seconds: float
    per_minute: float
    p50_s: float
    p99_s: float
    max_s: float
    peak_pss_mb: dict[str, float]


def _one(base: str, ticket: str) -> tuple[float, str]:
    """Submit one ticket and follow it; (seconds from submit to the end, final status or error)."""
    started = time.monotonic()
    status, reply = restapi.call("POST", f"{base}/investigate", API_KEY, {"ticket_id": ticket})
    if status != 202:
        return time.monotonic() - started, f"submit answered {status}"
    investigation_id = reply["investigation_id"]
    while time.monotonic() - started < TIMEOUT_SECONDS:
        status, investigation = restapi.call("GET", f"{base}/investigations/{investigation_id}", API_KEY)
        if status == 200 and investigation.get("status") in ("completed", "failed", "cancelled"):
            outcome = investigation["status"]
            if outcome == "completed" and investigation.get("verdict") != "ROOT_CAUSE":
                outcome = f"verdict {investigation.get('verdict')}"
            return time.monotonic() - started, outcome
        time.sleep(0.05)
    return time.monotonic() - started, "timeout"


def _percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


def _run(profile: Profile, concurrency: int, count: int, run_id: str) -> EngineRun:
    base = f"http://{profile.address('envoy')}/api/v1"
    state = load_state(profile.state_file)
    assert state is not None
    pids: dict[str, list[int]] = {}
    for record in state.processes:
        group = record.component.partition("-")[0]
        if group in SERVICES and not record.component.endswith("metrics"):
            pids.setdefault(group, []).append(record.pid)
    results: list[tuple[float, str]] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        outcome = _one(base, f"BENCH-{run_id}-{i}")
        with lock:
            results.append(outcome)

    started = time.monotonic()
    with _RssSampler(pids) as sampler, ThreadPoolExecutor(max_workers=concurrency) as pool:
        list(pool.map(one, range(count)))
    elapsed = time.monotonic() - started
    latencies = [seconds for seconds, outcome in results if outcome == "completed"]
    return EngineRun(
        concurrency=concurrency,
        investigations=count,
        completed=len(latencies),
        errors=count - len(latencies),
        seconds=round(elapsed, 1),
        per_minute=round(len(latencies) / elapsed * 60, 1),
        p50_s=round(_percentile(latencies, 0.5), 2),
        p99_s=round(_percentile(latencies, 0.99), 2),
        max_s=round(max(latencies, default=0.0), 2),
        peak_pss_mb={k: round(v, 1) for k, v in sampler.peak.items()},
    )


def bench_engine(environ: Mapping[str, str], *, investigations: int, concurrencies: Sequence[int], keep: bool) -> int:
    bench_environ = {
        **environ,
        "API_KEYS": API_KEY,
        "RATE_LIMIT_INVESTIGATION_PER_MINUTE": str(10**9),
        "RATE_LIMIT_QUERY_PER_MINUTE": str(10**9),
        "LOG_LEVEL": "warning",
    }
    profile = stack.up_fresh("bench", bench_environ)
    runs: list[EngineRun] = []
    try:
        for n, concurrency in enumerate(concurrencies, start=1):
            run = _run(profile, concurrency, investigations, f"{int(time.time())}-{n}")
            runs.append(run)
            print(
                f"pm: c={concurrency:<3} {run.completed}/{run.investigations} completed  {run.per_minute:>6.1f}/min  "
                f"p50 {run.p50_s:.2f}s  p99 {run.p99_s:.2f}s  errors {run.errors}",
                flush=True,
            )
    finally:
        if not keep:
            stack.down("bench", bench_environ)
    print()
    print("| concurrency | completed | per minute | p50 s | p99 s | max s | peak PSS MB " + " / ".join(SERVICES) + " |")
    print("|---|---|---|---|---|---|---|")
    for run in runs:
        memory = " / ".join(f"{run.peak_pss_mb.get(s, 0):.0f}" for s in SERVICES)
        print(
            f"| {run.concurrency} | {run.completed}/{run.investigations} | {run.per_minute} | {run.p50_s} | "
            f"{run.p99_s} | {run.max_s} | {memory} |"
        )
    out = REPO_ROOT / ".stack" / "bench-engine.json"
    out.write_text(json.dumps([asdict(r) for r in runs], indent=2))
    print(f"\npm: results in {out.relative_to(REPO_ROOT)}")
    return 1 if any(r.errors for r in runs) else 0

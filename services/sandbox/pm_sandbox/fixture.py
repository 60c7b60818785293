"""A small incident snapshot written to a folder, for tests: two services, a decoy deploy."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

LOGS = [
    {"timestamp": "2026-06-18T14:00:00Z", "service": "cart", "severity_text": "INFO", "msg": "handled request",
     "trace_id": "t1"},
    {"timestamp": "2026-06-18T14:05:00Z", "service": "cart", "severity_text": "ERROR",
     "msg": "redis pool exhausted: timeout after 50ms", "trace_id": "t2"},
    {"timestamp": "2026-06-18T14:06:00Z", "service": "checkout", "severity_text": "WARN",
     "msg": "upstream cart slow", "trace_id": "t2"},
    {"timestamp": "2026-06-18T14:07:00Z", "service": "cart", "severity_text": "FATAL", "msg": "giving up",
     "trace_id": "t3"},
]  # fmt: skip
METRICS = [
    ("2026-06-18T14:00:00Z", "cart", "error_ratio", 0.01),
    ("2026-06-18T14:00:30Z", "cart", "error_ratio", 0.03),
    ("2026-06-18T14:01:00Z", "cart", "error_ratio", 0.40),
    ("2026-06-18T14:01:30Z", "cart", "error_ratio", 0.60),
    ("2026-06-18T14:00:00Z", "checkout", "error_ratio", 0.00),
    ("2026-06-18T14:00:00Z", "cart", "latency_p99_ms", 80.0),
]
TRACES = [
    {"trace_id": "t2", "span_id": "a", "parent_id": None, "service": "checkout", "name": "POST /checkout",
     "start": "2026-06-18T14:05:00Z", "duration_ms": 900.0, "status": "ERROR"},
    {"trace_id": "t2", "span_id": "b", "parent_id": "a", "service": "cart", "name": "GetCart",
     "start": "2026-06-18T14:05:00Z", "duration_ms": 850.0, "status": "ERROR"},
    {"trace_id": "t1", "span_id": "c", "parent_id": None, "service": "cart", "name": "GetCart",
     "start": "2026-06-18T14:00:00Z", "duration_ms": 12.0, "status": "OK"},
]  # fmt: skip
COMMITS: list[dict[str, Any]] = [
    {"sha": "aaaaaaa1111111111111111111111111111111aa", "author": "kim", "timestamp": "2026-06-18T13:50:00Z",
     "message": "cart: shrink redis pool to 4", "files_changed": ["cart/pool.go"], "diff": "-size: 64\n+size: 4"},
    {"sha": "aaaaaaa2222222222222222222222222222222bb", "author": "lee", "timestamp": "2026-06-18T14:02:00Z",
     "message": "checkout: rename variables", "files_changed": ["checkout/main.go"], "diff": "-a\n+b"},
]  # fmt: skip
DEPLOYS = [
    {"timestamp": "2026-06-18T13:55:00Z", "service": "cart", "commit_sha": COMMITS[0]["sha"], "version": "v1"},
    {"timestamp": "2026-06-18T14:03:00Z", "service": "checkout", "commit_sha": COMMITS[1]["sha"], "version": "v7"},
]


def write_snapshot(root: Path) -> Path:
    """Write the snapshot under `root/data`; returns `root`."""
    data = root / "data"
    (data / "context").mkdir(parents=True)
    alert = {"service": "checkout", "metric": "error_ratio", "threshold": 0.05, "observed": 0.4,
             "fired_at": "2026-06-18T14:06:00Z", "severity": "critical", "summary": "checkout errors"}  # fmt: skip
    (data / "alert.json").write_text(json.dumps(alert))
    (data / "logs.ndjson").write_text("\n".join(json.dumps(r) for r in reversed(LOGS)) + "\n")
    rows = ["timestamp,service,metric,value", *(f"{t},{s},{m},{v}" for t, s, m, v in METRICS)]
    (data / "metrics.csv").write_text("\n".join(rows) + "\n")
    (data / "traces.json").write_text(json.dumps(TRACES))
    patterns = [
        {"signature": "redis pool exhausted", "service": "cart", "count": 900, "delta_vs_baseline": "+900"},
        {"signature": "handled request", "service": "cart", "count": 5000, "delta_vs_baseline": "+0"},
    ]
    (data / "patterns.json").write_text(json.dumps(patterns))
    (data / "context" / "commits.json").write_text(json.dumps(COMMITS))
    (data / "context" / "deploys.json").write_text(json.dumps(DEPLOYS))
    (data / "context" / "flags.json").write_text(json.dumps([]))
    tickets = [{"key": "SHOP-9", "summary": "checkout failing", "status": "open"}]
    (data / "context" / "tickets.json").write_text(json.dumps(tickets))
    messages = [
        {"channel": "incidents", "user": "kim", "text": "cart pool change went out", "ts": "2026-06-18T14:08:00Z"}
    ]
    (data / "context" / "messages.json").write_text(json.dumps(messages))
    (root / "ground_truth.json").write_text(json.dumps({"root_cause_commit": COMMITS[0]["sha"]}))
    return root

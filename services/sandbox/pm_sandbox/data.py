"""One incident snapshot on disk and the queries the sandbox's tools answer over it.

The folder layout is RootCauseBench's (`data/alert.json`, `data/logs.ndjson`, `data/metrics.csv`,
`data/traces.json`, `data/patterns.json`, `data/context/{commits,deploys,flags}.json`), plus
optional `data/context/tickets.json` and `data/context/messages.json`. `ground_truth.json`, if
present, is never read. Queries have real semantics: time windows (inclusive start, exclusive
end), service filters, case-insensitive text search, severity at-or-above, metric aggregation
into fixed steps, limits and offsets.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

SEVERITIES = ("TRACE", "DEBUG", "INFO", "WARN", "ERROR", "FATAL")
_SEVERITY_ALIASES = {"WARNING": "WARN", "CRITICAL": "FATAL", "PANIC": "FATAL"}
MAX_LIMIT = 1000


class QueryError(ValueError):
    """A query the data cannot answer as asked (bad time, unknown aggregation, ...)."""


def parse_time(value: str | None, name: str) -> datetime | None:
    """An ISO 8601 time (Z or offset); naive times are UTC."""
    if value is None or value == "":
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise QueryError(f"{name} must be an ISO 8601 time, got {value!r}") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _severity_rank(value: str) -> int:
    name = _SEVERITY_ALIASES.get(value.upper(), value.upper())
    return SEVERITIES.index(name) if name in SEVERITIES else SEVERITIES.index("INFO")


def _in_window(at: datetime, start: datetime | None, end: datetime | None) -> bool:
    return (start is None or at >= start) and (end is None or at < end)


def _page(items: Sequence[Mapping[str, Any]], limit: int, offset: int) -> dict[str, Any]:
    if not 1 <= limit <= MAX_LIMIT:
        raise QueryError(f"limit must be between 1 and {MAX_LIMIT}")
    if offset < 0:
        raise QueryError("offset must not be negative")
    page = list(items[offset : offset + limit])
    return {"total": len(items), "offset": offset, "returned": len(page), "items": page}


@dataclass(frozen=True, slots=True)
class Incident:
    """Everything one snapshot holds, loaded once."""

    name: str
    alert: Mapping[str, Any]
    logs: Sequence[Mapping[str, Any]]
    metrics: Sequence[Mapping[str, Any]]
    traces: Sequence[Mapping[str, Any]]
    patterns: Sequence[Mapping[str, Any]]
    commits: Sequence[Mapping[str, Any]]
    deploys: Sequence[Mapping[str, Any]]
    flags: Sequence[Mapping[str, Any]]
    tickets: Sequence[Mapping[str, Any]]
    messages: Sequence[Mapping[str, Any]]

    # -- queries ----------------------------------------------------------------------------

    def get_alert(self) -> dict[str, Any]:
        """The alert that fired: service, metric, threshold, observed value, time, severity, summary."""
        return dict(self.alert)

    def search_logs(
        self,
        *,
        service: str | None = None,
        text: str | None = None,
        min_severity: str | None = None,
        start: str | None = None,
        end: str | None = None,
        trace_id: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> dict[str, Any]:
        """Log records, oldest first."""
        since, until = parse_time(start, "start"), parse_time(end, "end")
        floor = _severity_rank(min_severity) if min_severity else 0
        needle = text.lower() if text else None
        hits = [
            r
            for r in self.logs
            if (service is None or r.get("service") == service)
            and (trace_id is None or r.get("trace_id") == trace_id)
            and _severity_rank(str(r.get("severity_text", "INFO"))) >= floor
            and (needle is None or needle in json.dumps(r).lower())
            and _in_window(_at(r["timestamp"]), since, until)
        ]
        return _page(hits, limit, offset)

    def query_metrics(
        self,
        *,
        metric: str,
        service: str | None = None,
        start: str | None = None,
        end: str | None = None,
        step_seconds: int = 60,
        aggregation: str = "avg",
    ) -> dict[str, Any]:
        """One series per service: values aggregated into `step_seconds` buckets."""
        if aggregation not in ("avg", "max", "min", "sum", "count"):
            raise QueryError("aggregation must be avg, max, min, sum or count")
        if step_seconds < 1:
            raise QueryError("step_seconds must be at least 1")
        since, until = parse_time(start, "start"), parse_time(end, "end")
        buckets: dict[str, dict[int, list[float]]] = {}
        for row in self.metrics:
            if row["metric"] != metric or (service is not None and row["service"] != service):
                continue
            at = _at(row["timestamp"])
            if not _in_window(at, since, until):
                continue
            slot = int(at.timestamp()) // step_seconds * step_seconds
            buckets.setdefault(row["service"], {}).setdefault(slot, []).append(float(row["value"]))
        series = []
        for name, slots in sorted(buckets.items()):
            points = [
                {"timestamp": datetime.fromtimestamp(slot, UTC).isoformat().replace("+00:00", "Z"),
                 "value": _aggregate(values, aggregation)}
                for slot, values in sorted(slots.items())
            ]  # fmt: skip
            series.append({"service": name, "metric": metric, "points": points})
        known = sorted({r["metric"] for r in self.metrics})
        return {"series": series, "step_seconds": step_seconds, "aggregation": aggregation, "known_metrics": known}

    def search_traces(
        self,
        *,
        service: str | None = None,
        status: str | None = None,
        min_duration_ms: float | None = None,
        start: str | None = None,
        end: str | None = None,
        trace_id: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> dict[str, Any]:
        """Spans, oldest first."""
        since, until = parse_time(start, "start"), parse_time(end, "end")
        hits = [
            s
            for s in self.traces
            if (service is None or s.get("service") == service)
            and (status is None or str(s.get("status", "")).upper() == status.upper())
            and (trace_id is None or s.get("trace_id") == trace_id)
            and (min_duration_ms is None or float(s.get("duration_ms", 0)) >= min_duration_ms)
            and _in_window(_at(s["start"]), since, until)
        ]
        return _page(hits, limit, offset)

    def log_patterns(self, *, service: str | None = None, limit: int = 50) -> dict[str, Any]:
        """Clustered log signatures, largest count first."""
        hits = [p for p in self.patterns if service is None or p.get("service") == service]
        hits.sort(key=lambda p: -int(p.get("count", 0)))
        return _page(hits, limit, 0)

    def list_deploys(
        self, *, service: str | None = None, start: str | None = None, end: str | None = None
    ) -> dict[str, Any]:
        """Deploys, oldest first."""
        return _page(_events(self.deploys, service, start, end), MAX_LIMIT, 0)

    def list_commits(
        self,
        *,
        text: str | None = None,
        path: str | None = None,
        start: str | None = None,
        end: str | None = None,
        limit: int = 100,
    ) -> dict[str, Any]:
        """Commits without their diffs (get_commit has the diff), oldest first."""
        since, until = parse_time(start, "start"), parse_time(end, "end")
        needle = text.lower() if text else None
        hits = [
            {k: v for k, v in c.items() if k != "diff"}
            for c in self.commits
            if (needle is None or needle in str(c.get("message", "")).lower())
            and (path is None or any(path in f for f in c.get("files_changed", ())))
            and _in_window(_at(c["timestamp"]), since, until)
        ]
        return _page(hits, limit, 0)

    def get_commit(self, sha: str) -> dict[str, Any]:
        """One commit with its diff, by full sha or a unique prefix of at least 7 characters."""
        if len(sha) < 7:
            raise QueryError("sha must have at least 7 characters")
        matches = [c for c in self.commits if str(c["sha"]).startswith(sha.lower())]
        if len(matches) != 1:
            raise QueryError(f"{len(matches)} commits match {sha!r}; give a longer prefix" if matches else
                             f"no commit matches {sha!r}")  # fmt: skip
        return dict(matches[0])

    def flag_changes(
        self, *, service: str | None = None, start: str | None = None, end: str | None = None
    ) -> dict[str, Any]:
        """Feature-flag changes, oldest first."""
        return _page(_events(self.flags, service, start, end), MAX_LIMIT, 0)

    def get_ticket(self, issue_key: str) -> dict[str, Any]:
        """A ticket by its key (e.g. SHOP-9)."""
        for ticket in self.tickets:
            if str(ticket.get("key", "")).upper() == issue_key.upper():
                return dict(ticket)
        raise QueryError(f"no ticket {issue_key!r}")

    def search_messages(self, *, query: str, channel: str | None = None, limit: int = 50) -> dict[str, Any]:
        """Chat messages containing `query`, oldest first."""
        needle = query.lower()
        hits = [
            m
            for m in self.messages
            if needle in str(m.get("text", "")).lower() and (channel is None or m.get("channel") == channel)
        ]
        return _page(hits, limit, 0)


def _events(
    items: Sequence[Mapping[str, Any]], service: str | None, start: str | None, end: str | None
) -> list[Mapping[str, Any]]:
    """Timestamped events of `service` (all when None) inside [start, end)."""
    since, until = parse_time(start, "start"), parse_time(end, "end")
    return [
        e
        for e in items
        if (service is None or e.get("service") == service) and _in_window(_at(e["timestamp"]), since, until)
    ]


def _at(value: str) -> datetime:
    parsed = parse_time(value, "timestamp")
    assert parsed is not None
    return parsed


def _aggregate(values: Sequence[float], how: str) -> float:
    if how == "count":
        return float(len(values))
    if how == "sum":
        return sum(values)
    if how == "max":
        return max(values)
    if how == "min":
        return min(values)
    return sum(values) / len(values)


def _json_list(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    value = json.loads(path.read_text())
    if not isinstance(value, list):
        raise ValueError(f"{path}: expected a JSON list")
    return value


def _sorted(items: Iterable[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    return sorted(items, key=lambda item: _at(str(item[key])))


def load_incident(folder: str | Path) -> Incident:
    """Load a snapshot folder (the folder that holds `data/`, or `data/` itself)."""
    root = Path(folder)
    data = root / "data" if (root / "data").is_dir() else root
    if not (data / "alert.json").is_file():
        raise ValueError(f"{root}: no alert.json (expected the RootCauseBench layout)")
    logs = [json.loads(line) for line in (data / "logs.ndjson").read_text().splitlines() if line.strip()]
    with (data / "metrics.csv").open(newline="") as handle:
        metrics = list(csv.DictReader(handle))
    context = data / "context"
    return Incident(
        name=root.name if root.name != "data" else root.parent.name,
        alert=json.loads((data / "alert.json").read_text()),
        logs=_sorted(logs, "timestamp"),
        metrics=metrics,
        traces=_sorted(_json_list(data / "traces.json"), "start"),
        patterns=_json_list(data / "patterns.json"),
        commits=_sorted(_json_list(context / "commits.json"), "timestamp"),
        deploys=_sorted(_json_list(context / "deploys.json"), "timestamp"),
        flags=_sorted(_json_list(context / "flags.json"), "timestamp"),
        tickets=_json_list(context / "tickets.json"),
        messages=_json_list(context / "messages.json"),
    )

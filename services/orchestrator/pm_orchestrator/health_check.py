"""The error-rate health check over the domains' services, run on a schedule and on demand
(`POST /api/v1/health-check`, pm.ops.v1.HealthCheckService).

For every service of every domain config (its `services` and its `primary_services[].name`):

- current = the mean of the error-rate metric (`HEALTH_CHECK_METRIC`) over the last
  `HEALTH_CHECK_WINDOW_MINUTES`, read through the registry's `metrics.query`;
- baseline = its mean over the `HEALTH_CHECK_BASELINE_HOURS` before that window;
- threshold = max(baseline x multiplier, `HEALTH_CHECK_MIN_ERROR_RATE`); the multiplier is the
  domain's `health_check_threshold` setting, else `HEALTH_CHECK_THRESHOLD_MULTIPLIER`;
- current above the threshold is a breach: an investigation is started the way intake starts
  one (row, dedup claim, outbox event and audit row in one statement, `trigger_source
  health_check`, fast mode, the health-check priority), at most one per domain and service
  inside `HEALTH_CHECK_DEDUP_WINDOW_SECONDS`; a repeat breach reports the first one.

A service whose metric cannot be read, or has no data in the window, is reported as `error` with
the reason; the others are still checked.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from pydantic import BaseModel, ConfigDict, Field

from pm.common.v1 import types_pb2
from pm.events.v1 import events_pb2
from pm.ops.v1 import ops_pb2, ops_pb2_grpc
from pm_auth import CATEGORY_INVESTIGATION, AuthProvider, RateLimiter, rate_limited_error
from pm_errors import NotFound
from pm_grpc import request_headers
from pm_grpc.bodies import parse_body, request_object
from pm_grpc.http import Context
from pm_intake import ActiveConflict, AlertDuplicate, Audit, NewInvestigation, create_alert, new_investigation
from pm_orchestrator.jobs_tools import RegistryTools, ToolFailure, mean_metric
from pm_orchestrator.rows import json_object

log = logging.getLogger(__name__)

# Checks of different services run side by side, this many at a time.
CONCURRENCY = 4
BASELINE_STEP_SECONDS = 300
CURRENT_STEP_SECONDS = 60
# Results kept in a scheduled run's record (the counts cover all of them).
RECORDED_RESULTS = 200


class HealthCheckFailed(Exception):
    """A scheduled health check that could not read a single error rate."""


@dataclass(frozen=True, slots=True)
class Thresholds:
    """When an error rate is a breach: above max(baseline x multiplier, floor)."""

    multiplier: float = 1.0
    min_error_rate: float = 0.01

    def multiplier_for(self, domain_settings: Mapping[str, Any]) -> float:
        """The domain's `health_check_threshold` when it is a positive number, else the default."""
        value = domain_settings.get("health_check_threshold")
        if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
            return float(value)
        return self.multiplier

    def threshold(self, baseline: float, multiplier: float) -> float:
        return max(baseline * multiplier, self.min_error_rate)


@dataclass(frozen=True, slots=True)
class HealthCheckConfig:
    """The health check's settings."""

    metric: str = "error_ratio"
    window: timedelta = timedelta(minutes=15)
    baseline: timedelta = timedelta(hours=24)
    thresholds: Thresholds = field(default_factory=Thresholds)
    dedup_window_seconds: int = 7200


@dataclass(frozen=True, slots=True)
class ServiceCheck:
    """The check of one service of one domain."""

    domain: str
    service: str
    baseline_error_rate: float
    current_error_rate: float
    threshold: float
    # healthy | triggered | deduplicated | error
    status: str
    investigation_id: str | None = None
    reason: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__slots__ if getattr(self, k) is not None}


@dataclass(frozen=True, slots=True)
class Requester:
    """Who asked for the check (the audit rows of the investigations it starts)."""

    identity: str = "scheduler"
    auth_method: str = "system"
    request_id: str | None = None


def domain_services(services: Sequence[str] | None, settings: Mapping[str, Any]) -> list[str]:
    """A domain's services: its `services` column and `primary_services[].name`, each once."""
    names = [s for s in services or () if isinstance(s, str) and s]
    primary = settings.get("primary_services")
    if isinstance(primary, list):
        names += [p["name"] for p in primary if isinstance(p, Mapping) and isinstance(p.get("name"), str) and p["name"]]
    return list(dict.fromkeys(names))


async def start_investigation(
    conn: asyncpg.Connection, inv: NewInvestigation, audit: Audit, key: str, window_seconds: float
) -> tuple[str, uuid.UUID | None]:
    """("triggered", id) when `inv` was created, ("deduplicated", the earlier id) when `key` was
    claimed inside its window or the ticket is already being investigated."""
    try:
        await create_alert(conn, inv, audit, key, audit.source, window_seconds)
    except AlertDuplicate as exc:
        return "deduplicated", exc.investigation_id
    except ActiveConflict as exc:
        return "deduplicated", exc.active[0].investigation_id if exc.active else None
    return "triggered", inv.id


class HealthCheck:
    """Runs the check; `notify` wakes the outbox relay after an investigation was committed."""

    def __init__(
        self, pool: asyncpg.Pool, tools: RegistryTools, config: HealthCheckConfig, notify: Callable[[], None]
    ) -> None:
        self._pool = pool
        self._tools = tools
        self._config = config
        self._notify = notify

    async def run(self, domains: Sequence[str] = (), requester: Requester | None = None) -> list[ServiceCheck]:
        """Check every service of the named domains (all when none); NotFound names unknown ones."""
        requester = requester or Requester()
        rows = await self._pool.fetch(
            "SELECT name, services, settings FROM domain_configs"
            " WHERE cardinality($1::text[]) = 0 OR name = ANY($1::text[]) ORDER BY name",
            list(domains),
        )
        unknown = sorted(set(domains) - {r["name"] for r in rows})
        if unknown:
            raise NotFound("Unknown domain(s)", details={"unknown_domains": unknown})
        end = datetime.now(UTC).replace(microsecond=0)
        slots = asyncio.Semaphore(CONCURRENCY)

        async def one(domain: str, service: str, multiplier: float) -> ServiceCheck:
            async with slots:
                return await self._check(domain, service, multiplier, end, requester)

        checks = []
        for row in rows:
            settings = json_object(row["settings"])
            multiplier = self._config.thresholds.multiplier_for(settings)
            checks += [one(row["name"], s, multiplier) for s in domain_services(row["services"], settings)]
        return list(await asyncio.gather(*checks))

    async def _check(
        self, domain: str, service: str, multiplier: float, end: datetime, requester: Requester
    ) -> ServiceCheck:
        config = self._config
        start = end - config.window
        try:
            current = await mean_metric(
                self._tools, config.metric, service, start, end, step_seconds=CURRENT_STEP_SECONDS
            )
            baseline = await mean_metric(
                self._tools, config.metric, service, start - config.baseline, start, step_seconds=BASELINE_STEP_SECONDS
            )
        except ToolFailure as exc:
            return ServiceCheck(domain, service, 0.0, 0.0, 0.0, "error", reason=f"{config.metric}: {exc}")
        if current is None:
            minutes = int(config.window.total_seconds() // 60)
            missing = f"no {config.metric} data for {service} in the last {minutes} minutes"
            return ServiceCheck(domain, service, baseline or 0.0, 0.0, 0.0, "error", reason=missing)
        reason = None if baseline is not None else "no baseline data: compared with HEALTH_CHECK_MIN_ERROR_RATE"
        threshold = config.thresholds.threshold(baseline or 0.0, multiplier)
        if current <= threshold:
            return ServiceCheck(domain, service, baseline or 0.0, current, threshold, "healthy", reason=reason)
        context = events_pb2.HealthCheckContext(
            service=service,
            baseline_error_rate=baseline or 0.0,
            current_error_rate=current,
            threshold=threshold,
            threshold_multiplier=multiplier,
        )
        inv = new_investigation(
            ticket_id=f"HC-{domain}-{service}-{int(time.time() * 1000)}"[:200],
            domain=domain,
            mode="fast",
            trigger_source="health_check",
            priority=types_pb2.PRIORITY_HEALTH_CHECK,
            requested_by=requester.identity,
            trigger_context={
                "health_check": {
                    "service": service,
                    "metric": config.metric,
                    "baseline_error_rate": baseline or 0.0,
                    "current_error_rate": current,
                    "threshold": threshold,
                    "threshold_multiplier": multiplier,
                    "window_start": start.isoformat(),
                    "window_end": end.isoformat(),
                }
            },
            event_context=events_pb2.InvestigationRequested(health_check=context),
        )
        audit = Audit(
            identity=requester.identity,
            auth_method=requester.auth_method,
            source="health_check",
            action="health_check",
            outcome="accepted",
            request_id=requester.request_id,
            details={"domain": domain, "service": service, "current_error_rate": current, "threshold": threshold},
        )
        async with self._pool.acquire() as conn:
            status, investigation_id = await start_investigation(
                conn, inv, audit, f"health_check:{domain}:{service}", config.dedup_window_seconds
            )
        if status == "triggered":
            self._notify()
            log.warning(
                "health check: %s/%s error rate %.4f above %.4f; investigation %s started",
                domain,
                service,
                current,
                threshold,
                investigation_id,
                extra={"investigation_id": str(investigation_id), "domain": domain},
            )
        return ServiceCheck(
            domain,
            service,
            baseline or 0.0,
            current,
            threshold,
            status,
            investigation_id=str(investigation_id) if investigation_id else None,
            reason=reason,
        )

    async def scheduled(self, scheduled_for: datetime) -> dict[str, Any]:
        """The scheduled run: every domain; the counts and the results. It fails when no service's
        error rate could be read at all (the registry or the metrics server is down), so that
        pm_scheduled_job_runs_total{status="failed"} shows it."""
        results = await self.run()
        if results and all(r.status == "error" for r in results):
            raise HealthCheckFailed(
                f"no error rate could be read for any of {len(results)} services: {results[0].reason}"
            )
        return summary(results)


def summary(results: Sequence[ServiceCheck]) -> dict[str, Any]:
    """Counts by status and (up to RECORDED_RESULTS) the results, for a run's record."""
    counts = {s: sum(1 for r in results if r.status == s) for s in ("healthy", "triggered", "deduplicated", "error")}
    return {"checked": len(results), **counts, "results": [r.as_json() for r in results[:RECORDED_RESULTS]]}


class HealthCheckBody(BaseModel):
    """The REST body of POST /api/v1/health-check: `{"domains": [...]}`, or nothing for all."""

    model_config = ConfigDict(extra="forbid")

    domains: list[str] = Field(default_factory=list, max_length=500)


class HealthCheckServicer(ops_pb2_grpc.HealthCheckServiceServicer):
    """pm.ops.v1.HealthCheckService: authenticated and rate-limited like a submission."""

    def __init__(self, check: HealthCheck, auth: AuthProvider, limiter: RateLimiter) -> None:
        self._check = check
        self._auth = auth
        self._limiter = limiter

    async def RunHealthCheck(
        self, request: ops_pb2.RunHealthCheckRequest, context: Context
    ) -> ops_pb2.RunHealthCheckResponse:
        headers = request_headers(context)
        identity = await self._auth.authenticate(headers)
        decision = await self._limiter.hit(identity.subject, CATEGORY_INVESTIGATION)
        if not decision.allowed:
            raise rate_limited_error(decision)
        body = parse_body(HealthCheckBody, request_object(request, exclude=()))
        requester = Requester(identity.subject, identity.method, headers.get("x-request-id"))
        results = await self._check.run(list(dict.fromkeys(body.domains)), requester)
        triggered = sum(1 for r in results if r.status == "triggered")
        message = (
            f"{triggered} investigation(s) started" if triggered else "No error rate above its threshold"
        ) if results else "No domain has services to check"  # fmt: skip
        return ops_pb2.RunHealthCheckResponse(
            checked=len(results),
            triggered=triggered,
            results=[ops_pb2.HealthCheckResult(**r.as_json()) for r in results],
            message=message,
        )

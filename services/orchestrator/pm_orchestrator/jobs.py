"""The scheduled jobs besides the health check: knowledge lifecycle, stale-ticket review and the
post-deploy check (docs/operability.md, "Scheduled jobs").

Each is an object whose `run(scheduled_for)` returns the JSON result the scheduler records in
`scheduled_job_runs.result`; an exception fails the run with its message.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import asyncpg

from pm.common.v1 import types_pb2
from pm.events.v1 import events_pb2
from pm_grpc.tool_results import ticket_field
from pm_intake import Audit, new_investigation
from pm_orchestrator.cron import CronSchedule
from pm_orchestrator.health_check import HealthCheck, HealthCheckConfig, Thresholds, start_investigation
from pm_orchestrator.jobs_tools import (
    CHAT,
    DELIVERY_ROLE,
    SCHEDULER_ROLE,
    TICKETS,
    RegistryTools,
    ToolFailure,
    mean_metric,
)
from pm_orchestrator.meta import run_meta_analysis
from pm_orchestrator.rows import json_object
from pm_orchestrator.scheduler import ScheduledJob
from pm_orchestrator.settings import OrchestratorSettings

log = logging.getLogger(__name__)

SYSTEM_AUDIT = {"auth_method": "system", "outcome": "accepted"}


# -- knowledge lifecycle ----------------------------------------------------------------------


class KnowledgeLifecycle:
    """Archives provisional entries left untouched for `provisional_ttl_days`; turns active entries
    not verified for `active_verify_days` back into provisional ones (one transaction)."""

    def __init__(self, pool: asyncpg.Pool, *, provisional_ttl_days: int = 30, active_verify_days: int = 90) -> None:
        self._pool = pool
        self._ttl = provisional_ttl_days
        self._verify = active_verify_days

    async def run(self, scheduled_for: datetime) -> dict[str, Any]:
        async with self._pool.acquire() as conn, conn.transaction():
            # Archive first: an entry downgraded below gets its own provisional period from now.
            archived = await conn.fetchval(
                """
                WITH a AS (
                    UPDATE knowledge_entries SET confidence = 'archived', archived_at = now(), updated_at = now()
                    WHERE confidence = 'provisional'
                      AND greatest(updated_at, last_verified_at) < now() - make_interval(days => $1)
                    RETURNING 1
                ) SELECT count(*) FROM a
                """,
                self._ttl,
            )
            downgraded = await conn.fetchval(
                """
                WITH d AS (
                    UPDATE knowledge_entries SET confidence = 'provisional', updated_at = now()
                    WHERE confidence = 'active' AND last_verified_at < now() - make_interval(days => $1)
                    RETURNING 1
                ) SELECT count(*) FROM d
                """,
                self._verify,
            )
        return {
            "archived": archived,
            "downgraded": downgraded,
            "provisional_ttl_days": self._ttl,
            "active_verify_days": self._verify,
        }


# -- stale-ticket review ----------------------------------------------------------------------

# Ticket ids that name a real ticket (not the PD-/GRAFANA-/HC-/DEPLOY- ids made for alerts), from
# the sources whose ticket is a tracker's.
_TICKET_KEY = r"^[A-Z][A-Z0-9_]*-[0-9]+$"
_TICKET_SOURCES = ["api", "batch", "jira_webhook", "slack_command"]
_CLOSED = {"done", "closed", "resolved", "cancelled", "canceled", "complete", "completed", "fixed", "won't do",
           "won't fix", "wontfix", "rejected", "duplicate"}  # fmt: skip
# Tickets investigated longer ago than this are no longer looked up.
TICKET_LOOKBACK = timedelta(days=90)


@dataclass(frozen=True, slots=True)
class StaleReviewConfig:
    """STALE_* settings and where the summary goes."""

    investigation_hours: float = 24.0
    ticket_days: int = 7
    max_results: int = 50
    channel: str = ""
    # The chat tool's arguments (PUBLISH_CHAT_ARGUMENTS) and the ticket lookup's, as templates.
    chat_arguments: Mapping[str, str] = field(default_factory=lambda: {"channel_id": "{channel}", "text": "{text}"})
    ticket_arguments: Mapping[str, str] = field(default_factory=lambda: {"issue_key": "{ticket_id}"})
    public_base_url: str = ""


def ticket_status(data: Mapping[str, Any]) -> str | None:
    """A ticket's status name from a `tickets.get` answer (`status`, or Jira's `fields.status.name`)."""
    return ticket_field(data, "status")


def _age(hours: float) -> str:
    return f"{hours / 24:.0f}d" if hours >= 48 else f"{hours:.0f}h"


class StaleTicketReview:
    """Lists investigations stuck in queued/running for longer than `investigation_hours` and
    tickets still open `ticket_days` after their investigation ended, and posts one summary to the
    chat channel through the registry (only when a channel is configured)."""

    def __init__(self, pool: asyncpg.Pool, tools: RegistryTools, config: StaleReviewConfig) -> None:
        self._pool = pool
        self._tools = tools
        self._config = config

    async def _stuck(self) -> list[dict[str, Any]]:
        rows = await self._pool.fetch(
            "SELECT id, ticket_id, domain, status, phase, created_at,"
            " extract(epoch FROM now() - created_at) / 3600 AS age_hours"
            " FROM investigations WHERE status IN ('queued', 'running')"
            " AND created_at < now() - make_interval(secs => $1) ORDER BY created_at LIMIT $2",
            self._config.investigation_hours * 3600,
            self._config.max_results,
        )
        return [
            {
                "investigation_id": str(r["id"]),
                "ticket_id": r["ticket_id"],
                "domain": r["domain"],
                "status": r["status"],
                "phase": r["phase"],
                "age_hours": round(float(r["age_hours"]), 1),
            }
            for r in rows
        ]

    async def _tickets(self) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """Tickets still open; and how the lookups went."""
        rows = await self._pool.fetch(
            """
            SELECT * FROM (
                SELECT DISTINCT ON (ticket_id) ticket_id, id, domain, status, created_at,
                       extract(epoch FROM now() - created_at) / 3600 AS age_hours
                FROM investigations
                WHERE trigger_source = ANY($1::text[]) AND ticket_id ~ $2
                  AND status IN ('completed', 'failed') AND created_at > now() - make_interval(secs => $3)
                ORDER BY ticket_id, created_at DESC
            ) latest
            WHERE created_at < now() - make_interval(days => $4)
            ORDER BY created_at DESC LIMIT $5
            """,
            _TICKET_SOURCES,
            _TICKET_KEY,
            TICKET_LOOKBACK.total_seconds(),
            self._config.ticket_days,
            self._config.max_results,
        )
        lookups: dict[str, Any] = {"candidates": len(rows), "checked": 0, "unknown": 0}
        if not rows:
            return [], lookups
        try:
            if await self._tools.tool(TICKETS, SCHEDULER_ROLE) is None:
                lookups["skipped"] = f"no registry tool offers {TICKETS} to the {SCHEDULER_ROLE} role"
                return [], lookups
        except ToolFailure as exc:
            lookups["skipped"] = str(exc)
            return [], lookups
        still_open = []
        for row in rows:
            arguments = {k: v.format(ticket_id=row["ticket_id"]) for k, v in self._config.ticket_arguments.items()}
            try:
                data = await self._tools.call(TICKETS, SCHEDULER_ROLE, arguments, agent_name="stale-ticket-review")
            except ToolFailure as exc:
                lookups["unknown"] += 1
                log.info("stale-ticket review: %s: %s", row["ticket_id"], exc)
                continue
            status = ticket_status(data)
            lookups["checked"] += 1
            if status is None:
                lookups["unknown"] += 1
            elif status.lower() not in _CLOSED:
                still_open.append(
                    {
                        "ticket_id": row["ticket_id"],
                        "ticket_status": status,
                        "investigation_id": str(row["id"]),
                        "domain": row["domain"],
                        "age_hours": round(float(row["age_hours"]), 1),
                    }
                )
        return still_open, lookups

    def _text(self, stuck: Sequence[Mapping[str, Any]], tickets: Sequence[Mapping[str, Any]]) -> str:
        config = self._config
        base = config.public_base_url.rstrip("/")
        lines = [
            f":warning: *Stale-ticket review*: {len(stuck)} investigation(s) queued or running for more than"
            f" {config.investigation_hours:g}h; {len(tickets)} ticket(s) still open more than {config.ticket_days}"
            " day(s) after their investigation."
        ]
        if stuck:
            lines.append("*Stuck investigations* (oldest first):")
            lines += [
                f"• {s['ticket_id']} ({s['domain'] or 'no domain'}): {s['status']} in {s['phase']} for"
                f" {_age(s['age_hours'])} — {base}/api/v1/investigations/{s['investigation_id']}"
                for s in stuck
            ]
        if tickets:
            lines.append("*Open tickets*:")
            lines += [
                f"• {t['ticket_id']} ({t['domain'] or 'no domain'}): {t['ticket_status']}, investigated"
                f" {_age(t['age_hours'])} ago — {base}/api/v1/investigations/{t['investigation_id']}/report"
                for t in tickets
            ]
        return "\n".join(lines)

    async def run(self, scheduled_for: datetime) -> dict[str, Any]:
        stuck = await self._stuck()
        tickets, lookups = await self._tickets()
        result: dict[str, Any] = {
            "stale_investigations": len(stuck),
            "open_tickets": len(tickets),
            "ticket_lookups": lookups,
            "investigations": stuck,
            "tickets": tickets,
            "posted": False,
        }
        if not stuck and not tickets:
            return result
        text = self._text(stuck, tickets)
        if not self._config.channel:
            result["not_posted"] = "STALE_TICKET_SLACK_CHANNEL is not set"
            result["summary"] = text
            return result
        values = {"channel": self._config.channel, "text": text, "ticket_id": ""}
        arguments = {k: v.format(**values) for k, v in self._config.chat_arguments.items()}
        # The same key on a repeated attempt of this occurrence: the registry replays, never posts twice.
        await self._tools.call(
            CHAT,
            DELIVERY_ROLE,
            arguments,
            agent_name="stale-ticket-review",
            idempotency_key=f"scheduled:stale_ticket_review:{scheduled_for.isoformat()}",
        )
        result.update(posted=True, channel=self._config.channel, summary=text)
        return result


# -- post-deploy check ------------------------------------------------------------------------

# A check whose metrics cannot be read is tried again on later runs, for this long after it was due.
POST_DEPLOY_RETRY = timedelta(hours=1)
POST_DEPLOY_BATCH = 50
# One investigation per deploy: its dedup key is the deploy's id.
POST_DEPLOY_DEDUP_SECONDS = 86_400
_DEPLOY_COLUMNS = (
    "id, service, version, environment, deployer, deployed_at, commit_sha, pipeline_url, commit_url, domain,"
    " check_due_at"
)


@dataclass(frozen=True, slots=True)
class PostDeployConfig:
    """POST_DEPLOY_WINDOW_MINUTES and the health check's metric and thresholds."""

    metric: str = "error_ratio"
    window: timedelta = timedelta(minutes=30)
    thresholds: Thresholds = field(default_factory=Thresholds)


class PostDeployCheck:
    """Checks the deploys whose check is due: the service's error rate in the window before the
    deploy against the window after it (up to now); above max(before x multiplier, floor) is a
    regression, which starts one investigation per deploy (`post_deploy`) and marks the deploy
    `triggered`; otherwise `healthy`; `skipped` without data after the deploy; `error` when the
    metrics could not be read within POST_DEPLOY_RETRY of the due time."""

    def __init__(
        self, pool: asyncpg.Pool, tools: RegistryTools, config: PostDeployConfig, notify: Callable[[], None]
    ) -> None:
        self._pool = pool
        self._tools = tools
        self._config = config
        self._notify = notify

    async def run(self, scheduled_for: datetime) -> dict[str, Any]:
        due = await self._pool.fetch(
            "SELECT id FROM deploy_events WHERE check_status = 'pending' AND check_due_at <= now()"
            " ORDER BY check_due_at LIMIT $1",
            POST_DEPLOY_BATCH,
        )
        checks = []
        for row in due:
            outcome = await self._check_one(row["id"])
            if outcome is not None:
                checks.append(outcome)
        counts = {
            s: sum(1 for c in checks if c["status"] == s)
            for s in ("healthy", "triggered", "skipped", "error", "pending")
        }
        return {"due": len(due), **counts, "checks": checks}

    async def _check_one(self, deploy_id: Any) -> dict[str, Any] | None:
        async with self._pool.acquire() as conn, conn.transaction():
            deploy = await conn.fetchrow(
                f"SELECT {_DEPLOY_COLUMNS} FROM deploy_events WHERE id = $1 AND check_status = 'pending'"
                " FOR UPDATE SKIP LOCKED",
                deploy_id,
            )
            if deploy is None:
                return None
            settings = await conn.fetchval("SELECT settings FROM domain_configs WHERE name = $1", deploy["domain"])
            multiplier = self._config.thresholds.multiplier_for(json_object(settings))
            outcome = await self._measure(deploy, multiplier)
            investigation_id = None
            if outcome["status"] == "triggered":
                status, investigation_id = await start_investigation(
                    conn, self._investigation(deploy, outcome), self._audit(deploy), f"post_deploy:{deploy['id']}",
                    POST_DEPLOY_DEDUP_SECONDS,
                )  # fmt: skip
                outcome["investigation_id"] = str(investigation_id) if investigation_id else None
                if status == "deduplicated":
                    outcome["reason"] = "the ticket was already being investigated"
            if outcome["status"] != "pending":
                await conn.execute(
                    "UPDATE deploy_events SET check_status = $2, check_investigation_id = $3, checked_at = now()"
                    " WHERE id = $1",
                    deploy["id"],
                    outcome["status"],
                    investigation_id,
                )
        if outcome["status"] == "triggered":
            self._notify()
        return outcome

    async def _measure(self, deploy: Mapping[str, Any], multiplier: float) -> dict[str, Any]:
        config = self._config
        deployed_at: datetime = deploy["deployed_at"]
        now = datetime.now(UTC)
        after_end = min(now, deployed_at + config.window)
        outcome: dict[str, Any] = {
            "deploy_id": str(deploy["id"]),
            "service": deploy["service"],
            "version": deploy["version"],
        }
        if after_end <= deployed_at:
            return {**outcome, "status": "skipped", "reason": "the deploy time is in the future"}
        try:
            before = await mean_metric(
                self._tools, config.metric, deploy["service"], deployed_at - config.window, deployed_at, step_seconds=60
            )
            after = await mean_metric(
                self._tools, config.metric, deploy["service"], deployed_at, after_end, step_seconds=60
            )
        except ToolFailure as exc:
            overdue = now - deploy["check_due_at"] > POST_DEPLOY_RETRY
            status = "error" if overdue or not exc.retryable else "pending"
            return {**outcome, "status": status, "reason": f"{config.metric}: {exc}"}
        if after is None:
            return {**outcome, "status": "skipped", "reason": f"no {config.metric} data after the deploy"}
        threshold = config.thresholds.threshold(before or 0.0, multiplier)
        outcome.update(
            before_error_rate=before or 0.0,
            after_error_rate=after,
            threshold=threshold,
            status="triggered" if after > threshold else "healthy",
        )
        if before is None:
            outcome["reason"] = "no data before the deploy: compared with HEALTH_CHECK_MIN_ERROR_RATE"
        return outcome

    def _investigation(self, deploy: Mapping[str, Any], outcome: Mapping[str, Any]) -> Any:
        context = events_pb2.DeployContext(
            service=deploy["service"],
            version=deploy["version"],
            environment=deploy["environment"],
            deployer=deploy["deployer"],
            commit_sha=deploy["commit_sha"] or "",
            pipeline_url=deploy["pipeline_url"] or "",
            commit_url=deploy["commit_url"] or "",
        )
        context.deployed_at.FromDatetime(deploy["deployed_at"])
        return new_investigation(
            ticket_id=f"DEPLOY-{deploy['service']}-{deploy['version']}"[:200],
            domain=deploy["domain"],
            mode="fast",
            trigger_source="post_deploy",
            priority=types_pb2.PRIORITY_HEALTH_CHECK,
            requested_by="post-deploy-check",
            trigger_context={
                "deploy": {
                    "deploy_id": str(deploy["id"]),
                    "service": deploy["service"],
                    "version": deploy["version"],
                    "environment": deploy["environment"],
                    "deployer": deploy["deployer"],
                    "deployed_at": deploy["deployed_at"].isoformat(),
                    "commit_sha": deploy["commit_sha"],
                    "pipeline_url": deploy["pipeline_url"],
                    "commit_url": deploy["commit_url"],
                },
                "post_deploy_check": {
                    "metric": self._config.metric,
                    "before_error_rate": outcome["before_error_rate"],
                    "after_error_rate": outcome["after_error_rate"],
                    "threshold": outcome["threshold"],
                },
            },
            event_context=events_pb2.InvestigationRequested(deploy=context),
        )

    def _audit(self, deploy: Mapping[str, Any]) -> Audit:
        return Audit(
            identity="post-deploy-check",
            source="post_deploy",
            action="post_deploy_check",
            details={"deploy_id": str(deploy["id"]), "service": deploy["service"], "version": deploy["version"]},
            **SYSTEM_AUDIT,
        )


# -- the schedule -----------------------------------------------------------------------------


async def _meta_analysis(pool: asyncpg.Pool, scheduled_for: datetime) -> dict[str, Any]:
    """The weekly meta analysis: the recommendations it proposed."""
    created = await run_meta_analysis(pool, scheduled_for)
    return {"recommendations_created": len(created), "ids": [str(r["id"]) for r in created]}


def scheduled_jobs(
    settings: OrchestratorSettings,
    pool: asyncpg.Pool,
    tools: RegistryTools,
    health: HealthCheck,
    notify: Callable[[], None],
) -> list[ScheduledJob]:
    """Every job whose cron setting is not "off", named as in scheduled_job_runs.job."""
    thresholds = Thresholds(settings.health_check_threshold_multiplier, settings.health_check_min_error_rate)
    runs: dict[str, tuple[str, Callable[[datetime], Awaitable[Mapping[str, Any]]]]] = {
        "health_check": (settings.health_check_cron, health.scheduled),
        "post_deploy_check": (
            settings.post_deploy_check_cron,
            PostDeployCheck(
                pool,
                tools,
                PostDeployConfig(
                    settings.health_check_metric, timedelta(minutes=settings.post_deploy_window_minutes), thresholds
                ),
                notify,
            ).run,
        ),
        "stale_ticket_review": (
            settings.stale_ticket_review_cron,
            StaleTicketReview(
                pool,
                tools,
                StaleReviewConfig(
                    investigation_hours=settings.stale_investigation_hours,
                    ticket_days=settings.stale_ticket_threshold_days,
                    max_results=settings.stale_ticket_max_results,
                    channel=settings.stale_ticket_slack_channel,
                    chat_arguments=settings.publish_chat_arguments,
                    ticket_arguments=settings.stale_ticket_lookup_arguments,
                    public_base_url=settings.public_base_url,
                ),
            ).run,
        ),
        "knowledge_lifecycle": (
            settings.knowledge_lifecycle_cron,
            KnowledgeLifecycle(
                pool,
                provisional_ttl_days=settings.knowledge_provisional_ttl_days,
                active_verify_days=settings.knowledge_active_verify_days,
            ).run,
        ),
        "meta_analysis": (settings.meta_analysis_cron, partial(_meta_analysis, pool)),
    }
    return [ScheduledJob(name, CronSchedule.parse(cron), run) for name, (cron, run) in runs.items() if cron != "off"]


def health_check_config(settings: OrchestratorSettings) -> HealthCheckConfig:
    """The health check's settings."""
    return HealthCheckConfig(
        metric=settings.health_check_metric,
        window=timedelta(minutes=settings.health_check_window_minutes),
        baseline=timedelta(hours=settings.health_check_baseline_hours),
        thresholds=Thresholds(settings.health_check_threshold_multiplier, settings.health_check_min_error_rate),
        dedup_window_seconds=settings.health_check_dedup_window_seconds,
    )

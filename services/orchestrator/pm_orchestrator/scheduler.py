"""The scheduler: runs each scheduled job at its cron times, on exactly one replica.

Leadership is a PostgreSQL session advisory lock (`pg_try_advisory_lock`) held on a connection
of its own. The replica holding it leads; the others try again every `poll_seconds`. The leader
checks its connection at the same interval (and is told at once when PostgreSQL closes it): a
leader that loses the connection has lost the lock with it, so it stops its running jobs and
goes back to trying. PostgreSQL releases the lock of a dead process's session, so another
replica takes over within a poll interval.

Every run is first claimed as a `scheduled_job_runs` row; `UNIQUE (job, scheduled_for)` makes
the claim succeed once, so an occurrence runs once even if two leaders overlapped for a moment
(the old one not yet aware of its lost connection). A new leader runs the latest occurrence it
finds unclaimed when it is at most `grace_seconds` late; older ones are skipped, not caught up.
A job never overlaps itself, and a run longer than `job_timeout_seconds` is cancelled and failed.
The row ends as `succeeded` with the job's result (JSON) or `failed` with the error; a row left
`running` by a replica that died is marked failed once it is older than the job timeout.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from pm_intake import jsonable
from pm_orchestrator.cron import CronSchedule

log = logging.getLogger(__name__)

# The session advisory lock key of the scheduler's leader ("pm_sched").
SCHEDULER_LOCK = 0x706D5F7363686564
DURATION_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
# How often the leader marks dead replicas' runs failed and drops runs past their retention.
HOUSEKEEPING_SECONDS = 600.0
_DB_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)

JobResult = Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class ScheduledJob:
    """A job and when it runs: `run(scheduled_for)` returns the result recorded with the run."""

    name: str
    schedule: CronSchedule
    run: Callable[[datetime], Awaitable[JobResult]]


class SchedulerMetrics:
    """pm_scheduler_leader, pm_scheduled_job_runs_total, pm_scheduled_job_duration_seconds,
    pm_scheduled_job_last_success_timestamp_seconds."""

    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.leader = Gauge(
            "pm_scheduler_leader", "1 while this replica holds the scheduler's lock and runs the jobs.",
            registry=registry,
        )  # fmt: skip
        self.runs = Counter(
            "pm_scheduled_job_runs", "Scheduled job runs that ended, by job and status (succeeded, failed).",
            ["job", "status"], registry=registry,
        )  # fmt: skip
        self.duration = Histogram(
            "pm_scheduled_job_duration_seconds", "Duration of scheduled job runs, by job.", ["job"],
            buckets=DURATION_BUCKETS, registry=registry,
        )  # fmt: skip
        self.last_success = Gauge(
            "pm_scheduled_job_last_success_timestamp_seconds",
            "Unix time at which the job's last successful run (on this replica) ended.",
            ["job"],
            registry=registry,
        )

    def known(self, jobs: Sequence[str]) -> None:
        """Export every job's series from the start (0 until it runs)."""
        for job in jobs:
            for status in ("succeeded", "failed"):
                self.runs.labels(job, status)
            self.duration.labels(job)


class Scheduler:
    """Leader election and the run loop; `run` is a background loop that never returns."""

    def __init__(
        self,
        dsn: str,
        pool: asyncpg.Pool,
        jobs: Sequence[ScheduledJob],
        metrics: SchedulerMetrics,
        *,
        poll_seconds: float = 5.0,
        grace_seconds: float = 300.0,
        job_timeout_seconds: float = 900.0,
        retention_days: int = 30,
        lock_key: int = SCHEDULER_LOCK,
        application_name: str = "pm-orchestrator-scheduler",
    ) -> None:
        if len({job.name for job in jobs}) != len(jobs):
            raise ValueError("scheduled job names must be unique")
        self._dsn = dsn
        self._pool = pool
        self._jobs = list(jobs)
        self._metrics = metrics
        self._poll = poll_seconds
        self._grace = timedelta(seconds=grace_seconds)
        self._timeout = job_timeout_seconds
        self._retention_days = retention_days
        self._lock_key = lock_key
        self._application_name = application_name
        self._claimed: dict[str, datetime] = {}
        self._running: dict[str, asyncio.Task[None]] = {}
        self._last_housekeeping = float("-inf")
        self.is_leader = False
        metrics.known([job.name for job in self._jobs])

    def claimed(self, job: str) -> datetime | None:
        """The latest occurrence of `job` this replica found claimed, by itself or another leader."""
        return self._claimed.get(job)

    async def run(self) -> None:
        """Try to lead; while leading, run the due jobs; on losing the lock, try again."""
        while True:
            conn = await self._connect()
            if conn is not None:
                try:
                    await self._follow_then_lead(conn)
                except _DB_ERRORS as exc:
                    log.warning("scheduler: lock connection failed (%s: %s); reconnecting", type(exc).__name__, exc)
                finally:
                    await _close(conn)
            await asyncio.sleep(self._poll)

    async def _connect(self) -> asyncpg.Connection | None:
        try:
            conn: asyncpg.Connection = await asyncpg.connect(
                self._dsn,
                timeout=max(self._poll, 5.0),
                server_settings={"application_name": self._application_name},
            )
        except _DB_ERRORS as exc:
            log.warning("scheduler: cannot reach PostgreSQL (%s); trying again", type(exc).__name__)
            return None
        return conn

    async def _follow_then_lead(self, conn: asyncpg.Connection) -> None:
        """Try the lock every poll interval; lead once it is taken; return when leadership is lost."""
        while True:
            if await conn.fetchval("SELECT pg_try_advisory_lock($1)", self._lock_key, timeout=self._poll):
                await self._lead(conn)
                return
            await asyncio.sleep(self._poll)

    async def _lead(self, conn: asyncpg.Connection) -> None:
        lost = asyncio.Event()

        def closed(_: Any) -> None:
            lost.set()

        conn.add_termination_listener(closed)
        self.is_leader = True
        self._metrics.leader.set(1)
        self._claimed.clear()
        self._last_housekeeping = float("-inf")
        log.info("scheduler: this replica now runs the scheduled jobs")
        try:
            while not lost.is_set():
                await self._housekeeping()
                await self._start_due()
                try:
                    async with asyncio.timeout(self._sleep_seconds()):
                        await lost.wait()
                except TimeoutError:
                    pass
                if lost.is_set():
                    break
                try:
                    await conn.fetchval("SELECT 1", timeout=self._poll)
                except _DB_ERRORS as exc:
                    log.warning("scheduler: lock connection lost (%s)", type(exc).__name__)
                    break
        finally:
            self.is_leader = False
            self._metrics.leader.set(0)
            running = [task for task in self._running.values() if not task.done()]
            for task in running:
                task.cancel()
            if running:
                await asyncio.gather(*running, return_exceptions=True)
            self._running.clear()
            log.warning("scheduler: this replica no longer runs the scheduled jobs")

    def _sleep_seconds(self) -> float:
        """Until the next occurrence of any job, at most one poll interval."""
        now = datetime.now(UTC)
        upcoming = [job.schedule.next_after(now) for job in self._jobs]
        soonest = min((u for u in upcoming if u is not None), default=None)
        if soonest is None:
            return self._poll
        # A little past the minute boundary, so the occurrence is `at or before` the clock.
        return max(0.05, min(self._poll, (soonest - now).total_seconds() + 0.05))

    async def _start_due(self) -> None:
        now = datetime.now(UTC)
        for job in self._jobs:
            task = self._running.get(job.name)
            if task is not None and not task.done():
                continue  # a job never overlaps itself; the occurrence runs late if still within grace
            occurrence = job.schedule.latest_at_or_before(now)
            if occurrence is None or now - occurrence > self._grace or self._claimed.get(job.name) == occurrence:
                continue
            try:
                run_id = await self._claim(job.name, occurrence)
            except _DB_ERRORS as exc:
                log.warning("scheduler: cannot claim %s at %s (%s)", job.name, occurrence.isoformat(), exc)
                continue
            self._claimed[job.name] = occurrence
            if run_id is None:
                continue  # another leader ran this occurrence
            self._running[job.name] = asyncio.create_task(
                self._execute(job, occurrence, run_id), name=f"scheduled-job:{job.name}"
            )

    async def _claim(self, job: str, occurrence: datetime) -> uuid.UUID | None:
        run_id = uuid.uuid4()
        claimed: uuid.UUID | None = await self._pool.fetchval(
            "INSERT INTO scheduled_job_runs (id, job, scheduled_for) VALUES ($1, $2, $3)"
            " ON CONFLICT (job, scheduled_for) DO NOTHING RETURNING id",
            run_id,
            job,
            occurrence,
        )
        return claimed

    async def _execute(self, job: ScheduledJob, occurrence: datetime, run_id: uuid.UUID) -> None:
        started = time.monotonic()
        extra = {"job": job.name, "scheduled_for": occurrence.isoformat(), "run_id": str(run_id)}
        log.info("scheduled job %s started (%s)", job.name, occurrence.isoformat(), extra=extra)
        try:
            async with asyncio.timeout(self._timeout):
                result = dict(await job.run(occurrence))
        except asyncio.CancelledError:
            await self._ended(
                job.name, run_id, started, "failed", {}, "cancelled: the replica lost leadership or stopped"
            )
            raise
        except TimeoutError:
            await self._ended(job.name, run_id, started, "failed", {}, f"timed out after {self._timeout:.0f}s")
        except Exception as exc:  # - a job's failure is recorded; it must not stop the scheduler
            log.exception("scheduled job %s failed", job.name, extra=extra)
            await self._ended(job.name, run_id, started, "failed", {}, f"{type(exc).__name__}: {exc}"[:1000])
        else:
            await self._ended(job.name, run_id, started, "succeeded", result, None)
            log.info("scheduled job %s succeeded: %s", job.name, _brief(result), extra=extra)

    async def _ended(
        self, job: str, run_id: uuid.UUID, started: float, status: str, result: JobResult, error: str | None
    ) -> None:
        self._metrics.runs.labels(job, status).inc()
        self._metrics.duration.labels(job).observe(time.monotonic() - started)
        if status == "succeeded":
            self._metrics.last_success.labels(job).set(time.time())
        try:
            # Shielded: a cancelled run still records how it ended.
            await asyncio.shield(
                self._pool.execute(
                    "UPDATE scheduled_job_runs SET status = $2, result = $3::jsonb, error = $4, finished_at = now()"
                    " WHERE id = $1 AND status = 'running'",
                    run_id,
                    status,
                    jsonable(result),
                    error,
                    timeout=10,
                )
            )
        except _DB_ERRORS as exc:
            log.warning("scheduler: the end of %s run %s was not recorded (%s)", job, run_id, exc)

    async def _housekeeping(self) -> None:
        """Fail runs a dead replica left `running`; drop runs past their retention."""
        if time.monotonic() - self._last_housekeeping < HOUSEKEEPING_SECONDS:
            return
        try:
            abandoned = await self._pool.execute(
                "UPDATE scheduled_job_runs SET status = 'failed', finished_at = now(),"
                " error = 'abandoned: the replica running it stopped or lost leadership'"
                " WHERE status = 'running' AND started_at < now() - make_interval(secs => $1)",
                self._timeout + 60,
            )
            dropped = await self._pool.execute(
                "DELETE FROM scheduled_job_runs WHERE started_at < now() - make_interval(days => $1)",
                self._retention_days,
            )
        except _DB_ERRORS as exc:
            log.warning("scheduler: housekeeping failed (%s)", exc)
            return
        self._last_housekeeping = time.monotonic()
        if abandoned != "UPDATE 0" or dropped != "DELETE 0":
            log.info("scheduler housekeeping: %s abandoned runs failed, %s old runs dropped", abandoned, dropped)


def _brief(result: JobResult) -> str:
    """The scalar entries of a result, for the log line."""
    return ", ".join(f"{k}={v}" for k, v in result.items() if isinstance(v, int | float | str | bool)) or "done"


async def _close(conn: asyncpg.Connection) -> None:
    """Close the lock connection (ending the session releases the lock); never blocks for long."""
    try:
        await asyncio.wait_for(conn.close(), timeout=2)
    except _DB_ERRORS:
        conn.terminate()
    except asyncio.CancelledError:
        conn.terminate()
        raise

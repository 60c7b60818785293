"""The investigation state machine. PostgreSQL is its truth; streams only carry work.

INTAKE → TRIAGE → GATHER (parallel agents) → HYPOTHESIZE ⇄ VERIFY → RECOMMEND → REPORT → DELIVER.

Phases are a table (`PHASES`): an agent phase names the roles it dispatches and the phase whose
step outputs feed them; an orchestrator phase names its handler. Every transition of one
investigation happens in one transaction holding that investigation's row lock, so several
orchestrator replicas can consume side by side:

- `InvestigationRequested`: a queued investigation becomes running and its TRIAGE steps are
  created, each with its AgentTask in the outbox (published after commit by the relay).
- `AgentResult`: applied only while its step is open for that attempt (compare-and-set on
  status and attempt), so a redelivered or duplicate result changes nothing. A retryable
  failure gets a new attempt after a backoff; a permanent one, or too many attempts, ends the
  investigation FAILED with the reason — unless evidence was already gathered: then RECOMMEND
  runs on the latest states and the investigation ends with a partial report, INCONCLUSIVE,
  naming the step that failed. When every step of the phase has succeeded, the next phase
  starts; after RECOMMEND the report is rendered and stored, then DELIVER completes it.
- HYPOTHESIZE ⇄ VERIFY: a VERIFY step whose output says `again` (nothing verified settles it
  and untested candidates remain) sends the investigation back to HYPOTHESIZE with its state,
  as long as the iterations stay within the investigation's `max_iterations` (1/3/5 for
  fast/balanced/deep); `hypothesis_iteration` counts them.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
from google.protobuf import json_format, struct_pb2
from opentelemetry import trace

from pm.common.v1 import types_pb2
from pm.events.v1 import events_pb2
from pm_errors import Conflict, NotFound
from pm_orchestrator.delivery import Publishing, record_deliveries
from pm_orchestrator.knowledge import known_issues
from pm_orchestrator.metrics import EngineMetrics
from pm_orchestrator.report import render_html, render_markdown
from pm_orchestrator.rows import json_object
from pm_storage import ObjectStore
from pm_streams import STREAM_AGENT_TASKS, STREAM_INVESTIGATIONS, STREAM_INVESTIGATIONS_URGENT, Delivery
from pm_streams.outbox import OutboxRelay
from pm_telemetry import bind_investigation, parent_context, trace_context

log = logging.getLogger(__name__)

MESSAGE_TYPE_TASK = "pm.events.v1.AgentTask"
MESSAGE_TYPE_REQUESTED = "pm.events.v1.InvestigationRequested"
# pg_try_advisory_xact_lock key of the reconciler (one replica reconciles at a time).
RECONCILE_LOCK = 0x706D5F72_6563
# What a transaction noted for the metrics, reported after it commits (see Engine._transaction).
_AFTER_COMMIT: ContextVar[list[tuple[str, Any]] | None] = ContextVar("pm_engine_after_commit", default=None)
MAX_ATTEMPTS = 3
RETRY_BASE_SECONDS = 2.0
# Phases whose succeeded steps count as evidence for a partial report, latest first.
EVIDENCE_PHASES = ("verify", "hypothesize", "gather")


@dataclass(frozen=True, slots=True)
class AgentPhase:
    """A phase run by agent steps."""

    roles: tuple[str, ...]
    # The phase whose succeeded steps' states feed these steps (None: the phase starts afresh).
    inputs_from: str | None
    next: str
    # A phase whose step may ask for another hypothesis iteration (`again` in its output): the
    # phase it loops back to, fed with this phase's states.
    loop_to: str | None = None


Handler = Callable[["Engine", asyncpg.Connection, asyncpg.Record], Awaitable[str | None]]
# The HYPOTHESIZE steps' context of similar past incidents (pm_orchestrator.similar.HypothesisContext).
Recall = Callable[[asyncpg.Connection, asyncpg.Record], Awaitable[dict[str, Any]]]


@dataclass(frozen=True, slots=True)
class OrchestratorPhase:
    """A phase the orchestrator runs itself; the handler returns the next phase (None: done)."""

    handler: Handler


async def _report(engine: Engine, conn: asyncpg.Connection, investigation: asyncpg.Record) -> str | None:
    await engine.write_report(conn, investigation)
    return "deliver"


async def _deliver(engine: Engine, conn: asyncpg.Connection, investigation: asyncpg.Record) -> str | None:
    await record_deliveries(conn, investigation, engine.publishing)
    await conn.execute(
        "UPDATE investigations SET status = 'completed', phase = 'deliver', completed_at = now(), updated_at = now()"
        " WHERE id = $1",
        investigation["id"],
    )
    await engine.event(conn, investigation["id"], "completed", "completed", "deliver", "investigation completed")
    _note("ended", investigation["id"])
    return None


PHASES: Mapping[str, AgentPhase | OrchestratorPhase] = {
    "triage": AgentPhase(("triage",), None, "gather"),
    "gather": AgentPhase(
        ("gather.logs", "gather.metrics", "gather.traces", "gather.changes", "gather.context"), "triage", "hypothesize"
    ),
    "hypothesize": AgentPhase(("hypothesize",), "gather", "verify"),
    "verify": AgentPhase(("verify",), "hypothesize", "recommend", loop_to="hypothesize"),
    "recommend": AgentPhase(("recommend",), "verify", "report"),
    "report": OrchestratorPhase(_report),
    "deliver": OrchestratorPhase(_deliver),
}
_PHASE_ENUM = {
    "triage": types_pb2.PHASE_TRIAGE,
    "gather": types_pb2.PHASE_GATHER,
    "hypothesize": types_pb2.PHASE_HYPOTHESIZE,
    "verify": types_pb2.PHASE_VERIFY,
    "recommend": types_pb2.PHASE_RECOMMEND,
}
_STEP_STATUS = {
    events_pb2.STEP_STATUS_SUCCEEDED: "succeeded",
    events_pb2.STEP_STATUS_FAILED: "failed",
    events_pb2.STEP_STATUS_FAILED_PERMANENT: "failed_permanent",
}


@dataclass(frozen=True, slots=True)
class Budget:
    """Limits of one investigation from the settings: the defaults, and the ceiling of what a
    request may ask for."""

    wall_seconds: float = 1800.0
    max_tool_calls: int = 1000
    max_cost_usd: float = 5.0

    def limits(self, requested: Mapping[str, Any]) -> dict[str, float | int]:
        """The limits of an investigation whose request asked for `requested` (lower values win;
        unknown or malformed entries are ignored)."""
        limits: dict[str, float | int] = {
            "wall_seconds": self.wall_seconds,
            "max_tool_calls": self.max_tool_calls,
            "max_cost_usd": self.max_cost_usd,
        }
        for name, ceiling in list(limits.items()):
            value = requested.get(name)
            if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
                limits[name] = type(ceiling)(min(value, ceiling))
        return limits


class Engine:
    """Applies InvestigationRequested and AgentResult messages to PostgreSQL."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        store: ObjectStore,
        relay: OutboxRelay | None = None,
        budget: Budget | None = None,
        publishing: Publishing | None = None,
        metrics: EngineMetrics | None = None,
        recall: Recall | None = None,
    ) -> None:
        self._pool = pool
        self._store = store
        self._recall = recall
        self._relay = relay
        self._budget = budget or Budget()
        self.publishing = publishing or Publishing()
        self._metrics = metrics

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[asyncpg.Connection]:
        """One transaction; what it noted for the metrics is reported once it has committed."""
        notes: list[tuple[str, Any]] = []
        token = _AFTER_COMMIT.set(notes)
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                yield conn
        finally:
            _AFTER_COMMIT.reset(token)
        if notes and self._metrics is not None:
            await self._report(notes)

    async def _report(self, notes: Sequence[tuple[str, Any]]) -> None:
        assert self._metrics is not None
        ended: list[uuid.UUID] = []
        for kind, value in notes:
            if kind == "started":
                self._metrics.investigation_started(value)
            elif kind == "step":
                self._metrics.step(*value)
            elif kind == "ended":
                ended.append(value)
        if ended:
            rows = await self._pool.fetch(
                "SELECT status, trigger_source, domain, created_at, started_at, completed_at, verdict, confidence,"
                " hypothesis_iteration FROM investigations WHERE id = ANY($1::uuid[])",
                ended,
            )
            for row in rows:
                self._metrics.investigation_ended(row)

    # -- messages ---------------------------------------------------------------------------

    async def on_requested(self, message: events_pb2.InvestigationRequested, delivery: Delivery) -> None:
        async with self._transaction() as conn:
            investigation = await self._lock(conn, message.investigation_id)
            if investigation is None or investigation["status"] != "queued":
                return  # unknown, or already started by another delivery or replica
            limits = self._budget.limits(json_object(investigation["budget"]))
            # The request's trace, kept for work no message will carry (an investigation written
            # without one, by an older intake or by hand, continues the trace of this delivery).
            await conn.execute(
                "UPDATE investigations SET status = 'running', started_at = now(), updated_at = now(), budget = $2,"
                " deadline_at = coalesce(deadline_at, now() + make_interval(secs => $3)),"
                " trace_context = CASE WHEN trace_context = '{}'::jsonb THEN $4 ELSE trace_context END WHERE id = $1",
                investigation["id"],
                limits,
                float(limits["wall_seconds"]),
                dict(message.trace_context) or trace_context(),
            )
            await self.event(conn, investigation["id"], "started", "running", "intake", "investigation started")
            _note("started", investigation)
            await self._enter(conn, investigation, "triage")
        self._notify()

    async def on_result(self, result: events_pb2.AgentResult, delivery: Delivery) -> None:
        async with self._transaction() as conn:
            investigation = await self._lock(conn, result.investigation_id)
            if investigation is None:
                return
            step = await conn.fetchrow(
                "SELECT * FROM investigation_steps WHERE task_id = $1 AND attempt = $2 FOR UPDATE",
                result.task_id,
                result.attempt,
            )
            if step is None or step["status"] not in ("dispatched", "running"):
                return  # a duplicate, or a result for an attempt that was superseded
            status = _STEP_STATUS.get(result.status, "failed")
            await self._record_run(conn, step, result, status)
            if investigation["status"] != "running":
                await conn.execute("UPDATE investigation_steps SET status = 'cancelled' WHERE id = $1", step["id"])
                return
            breach = await self._breach(conn, investigation["id"])
            if breach:
                await self.conclude_early(conn, investigation["id"], breach)
            elif status == "succeeded":
                await self._succeeded(conn, investigation, step, result)
            elif status == "failed" and step["attempt"] < MAX_ATTEMPTS:
                await self._retry(conn, investigation, step, result.error)
            else:
                reason = f"step {step['agent_role']} failed after {step['attempt']} attempt(s): {result.error}"
                await self._give_up(conn, investigation, step, reason[:2000])
        self._notify()

    # -- budgets ----------------------------------------------------------------------------

    async def _breach(self, conn: asyncpg.Connection, investigation_id: uuid.UUID) -> str:
        """Which budget of the investigation is exhausted ("" when none)."""
        row = await conn.fetchrow(
            "SELECT budget, tool_calls, cost_usd, deadline_at, now() > deadline_at AS late FROM investigations"
            " WHERE id = $1",
            investigation_id,
        )
        limits = json_object(row["budget"])
        if row["late"]:
            return f"deadline of {float(limits.get('wall_seconds', 0)):.0f}s passed"
        if "max_tool_calls" in limits and row["tool_calls"] > int(limits["max_tool_calls"]):
            return f"tool-call budget of {int(limits['max_tool_calls'])} exhausted ({row['tool_calls']} calls)"
        if "max_cost_usd" in limits and float(row["cost_usd"]) > float(limits["max_cost_usd"]):
            return f"cost budget of ${float(limits['max_cost_usd']):.2f} exhausted (${float(row['cost_usd']):.2f})"
        return ""

    async def conclude_early(self, conn: asyncpg.Connection, investigation_id: uuid.UUID, reason: str) -> None:
        """A budget ran out: open steps are superseded and the investigation goes straight to REPORT
        with INCONCLUSIVE and the reason, then completes."""
        investigation = await conn.fetchrow("SELECT * FROM investigations WHERE id = $1", investigation_id)
        await conn.execute(
            "UPDATE investigation_steps SET status = 'superseded' WHERE investigation_id = $1"
            " AND status IN ('pending', 'dispatched', 'running')",
            investigation_id,
        )
        await self.event(conn, investigation_id, "budget", "running", investigation["phase"], f"stopped: {reason}")
        findings = {
            "verdict": "INCONCLUSIVE",
            "confidence": 0.0,
            "summary": f"The investigation stopped during {investigation['phase']}: {reason}. No verdict was reached.",
            "remediation": {
                "class": "investigate",
                "steps": ["Raise the budget or narrow the question, then run it again."],
            },
            "problems": [reason],
        }
        await conn.execute("UPDATE investigations SET phase = 'report' WHERE id = $1", investigation_id)
        await self.write_report(conn, investigation, findings)
        await _deliver(self, conn, investigation)

    async def cancel(self, investigation_id: uuid.UUID, reason: str, by: str) -> str:
        """Cancel a queued or running investigation; returns its status before. Its open steps are
        cancelled (their results will be ignored, and the registry refuses their further tool
        calls). Raises NotFound, or Conflict when it has already ended."""
        async with self._transaction() as conn:
            investigation = await conn.fetchrow(
                "SELECT * FROM investigations WHERE id = $1 FOR UPDATE", investigation_id
            )
            if investigation is None:
                raise NotFound("Investigation not found", details={"id": str(investigation_id)})
            if investigation["status"] not in ("queued", "running"):
                raise Conflict(
                    f"Investigation already {investigation['status']}",
                    details={"investigation_id": str(investigation_id), "status": investigation["status"]},
                )
            await conn.execute(
                "UPDATE investigation_steps SET status = 'cancelled' WHERE investigation_id = $1"
                " AND status IN ('pending', 'dispatched', 'running')",
                investigation_id,
            )
            message = f"cancelled by {by}" + (f": {reason}" if reason else "")
            await conn.execute(
                "UPDATE investigations SET status = 'cancelled', error = $2, cancel_requested_at = now(),"
                " completed_at = now(), updated_at = now() WHERE id = $1",
                investigation_id,
                message[:2000],
            )
            await self.event(conn, investigation_id, "cancelled", "cancelled", investigation["phase"], message)
            _note("ended", investigation_id)
            return str(investigation["status"])

    # -- transitions ------------------------------------------------------------------------

    async def _lock(self, conn: asyncpg.Connection, investigation_id: str) -> asyncpg.Record | None:
        try:
            key = uuid.UUID(investigation_id)
        except ValueError:
            log.warning("message for a malformed investigation id", extra={"investigation_id": investigation_id[:60]})
            return None
        return await conn.fetchrow("SELECT * FROM investigations WHERE id = $1 FOR UPDATE", key)

    async def _enter(
        self,
        conn: asyncpg.Connection,
        investigation: asyncpg.Record,
        phase: str | None,
        states: Sequence[str] | None = None,
        message: str = "",
    ) -> None:
        """Start `phase` (and, for orchestrator phases, run on until an agent phase or the end).
        An agent phase's steps get `states`, by default those its `inputs_from` phase left."""
        while phase is not None:
            with _tracer().start_as_current_span(
                "engine.phase", attributes={"pm.investigation_id": str(investigation["id"]), "pm.phase": phase}
            ):
                investigation = await conn.fetchrow(
                    "UPDATE investigations SET phase = $2, updated_at = now(), hypothesis_iteration ="
                    " CASE WHEN $2 = 'hypothesize' AND hypothesis_iteration = 0 THEN 1 ELSE hypothesis_iteration END"
                    " WHERE id = $1 RETURNING *",
                    investigation["id"],
                    phase,
                )
                text = message or f"phase {phase} started"
                log.info("%s", text, extra={"investigation_id": str(investigation["id"]), "phase": phase})
                await self.event(conn, investigation["id"], "phase", "running", phase, text)
                spec = PHASES[phase]
                if isinstance(spec, AgentPhase):
                    if states is None:
                        states = (
                            await self._states(conn, investigation["id"], spec.inputs_from) if spec.inputs_from else []
                        )
                    for role in spec.roles:
                        await self._dispatch(conn, investigation, phase, role, 1, states, delay=0.0)
                    return
                phase = await spec.handler(self, conn, investigation)
                states, message = None, ""

    async def _states(self, conn: asyncpg.Connection, investigation_id: uuid.UUID, phase: str) -> list[str]:
        """The states `phase`'s succeeded steps left, in its latest hypothesis iteration."""
        rows = await conn.fetch(
            "SELECT output FROM investigation_steps s WHERE investigation_id = $1 AND phase = $2"
            " AND status = 'succeeded' AND iteration = (SELECT max(iteration) FROM investigation_steps"
            "   WHERE investigation_id = $1 AND phase = $2 AND status = 'succeeded')"
            " ORDER BY agent_role",
            investigation_id,
            phase,
        )
        return [str(json_object(row["output"]).get("state_uri", "")) for row in rows]

    async def _dispatch(
        self,
        conn: asyncpg.Connection,
        investigation: asyncpg.Record,
        phase: str,
        role: str,
        attempt: int,
        states: Sequence[str],
        *,
        delay: float,
    ) -> None:
        step_id = uuid.uuid4()
        iteration = int(investigation["hypothesis_iteration"]) or 1
        task_id = f"{investigation['id']}:{phase}:{role}:{iteration}:{attempt}"
        # The domain names the registry server whose tools the steps prefer (e.g. one sandbox per
        # benchmark case); without a server of that name, any server offering a capability serves.
        inputs: dict[str, Any] = {"state_uris": list(states), "server": str(investigation["domain"] or "")}
        if role == "gather.context":
            # Where people talk about it: the ticket and the chat channel it was asked from (never
            # the Slack response_url, which is a credential).
            slack = json_object(investigation["trigger_context"]).get("slack")
            channel = slack.get("channel_id", "") if isinstance(slack, Mapping) else ""
            inputs["context"] = {"ticket_id": investigation["ticket_id"], "channel": str(channel)}
        if phase == "hypothesize" and self._recall is not None:
            # Past incidents like this one, or why none is given (pm_orchestrator.similar).
            inputs["similar_incidents"] = await self._recall(conn, investigation)
        if phase in ("hypothesize", "recommend"):
            # Active knowledge entries of the investigation's services (pm_orchestrator.knowledge).
            inputs["knowledge"] = await known_issues(conn, investigation)
        await conn.execute(
            "INSERT INTO investigation_steps (id, investigation_id, phase, agent_role, iteration, attempt, status,"
            " task_id, reasoner, input, dispatched_at) VALUES ($1, $2, $3, $4, $5, $6, 'dispatched', $7, 'rule', $8,"
            " now())",
            step_id,
            investigation["id"],
            phase,
            role,
            iteration,
            attempt,
            task_id,
            inputs,
        )
        await self._announce(
            conn,
            investigation,
            task_id=task_id,
            step_id=step_id,
            phase=phase,
            role=role,
            attempt=attempt,
            inputs=inputs,
            delay=delay,
        )

    async def _announce(
        self,
        conn: asyncpg.Connection,
        investigation: Mapping[str, Any],
        *,
        task_id: str,
        step_id: uuid.UUID,
        phase: str,
        role: str,
        attempt: int,
        inputs: Mapping[str, Any],
        delay: float = 0.0,
    ) -> None:
        """The step's AgentTask into the outbox (published by the relay after commit), carrying the
        trace context of its dispatch, so the worker's spans join the investigation's trace."""
        with _tracer().start_as_current_span(
            "engine.dispatch",
            attributes={
                "pm.investigation_id": str(investigation["id"]),
                "pm.phase": phase,
                "pm.agent": role,
                "pm.attempt": attempt,
                "pm.task_id": task_id,
            },
        ):
            task = events_pb2.AgentTask(
                task_id=task_id,
                investigation_id=str(investigation["id"]),
                step_id=str(step_id),
                phase=_PHASE_ENUM[phase],
                agent_role=role,
                attempt=attempt,
                model_tier=str(investigation["mode"]),
                # The worker decides: its LLM reasoner when it has a key, else the rule reasoner.
                reasoner="auto",
                input=json_format.ParseDict(dict(inputs), struct_pb2.Struct()),
                trace_context=trace_context(),
            )
            task.dispatched_at.FromDatetime(datetime.now(UTC))
            await _outbox(conn, STREAM_AGENT_TASKS, investigation, MESSAGE_TYPE_TASK, task.SerializeToString(), delay)

    # -- reconciliation ---------------------------------------------------------------------

    async def reconcile(self, stale_seconds: float) -> int:
        """Announce again what the streams may have lost (Redis restarted empty, flushed): queued
        investigations never started and open steps without a result, both older than
        `stale_seconds` and with nothing of theirs waiting in the outbox. Duplicates are harmless
        (starting is idempotent, results are applied once). One replica at a time; returns how
        many messages were announced again."""
        announced = 0
        async with self._transaction() as conn:
            if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", RECONCILE_LOCK):
                return 0
            queued = await conn.fetch(
                "SELECT * FROM investigations i WHERE status = 'queued'"
                " AND created_at < now() - make_interval(secs => $1)"
                " AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.aggregate_id = i.id AND o.published_at IS NULL)"
                " AND NOT EXISTS (SELECT 1 FROM investigation_events e WHERE e.investigation_id = i.id"
                "                 AND e.kind = 'redriven' AND e.occurred_at > now() - make_interval(secs => $1))"
                " LIMIT 500",
                stale_seconds,
            )
            for investigation in queued:
                with _redriving(investigation["id"], investigation["trace_context"], "intake"):
                    event = events_pb2.InvestigationRequested(
                        event_id=str(uuid.uuid4()),
                        investigation_id=str(investigation["id"]),
                        ticket_id=investigation["ticket_id"],
                        domain=investigation["domain"] or "",
                        callback_url=investigation["callback_url"] or "",
                        requested_by=investigation["requested_by"],
                        trace_context=trace_context(),
                    )
                    stream = STREAM_INVESTIGATIONS_URGENT if investigation["priority"] <= 2 else STREAM_INVESTIGATIONS
                    await _outbox(conn, stream, investigation, MESSAGE_TYPE_REQUESTED, event.SerializeToString(), 0.0)
                    await self.event(
                        conn, investigation["id"], "redriven", "queued", "intake", "request announced again"
                    )
                announced += 1
            late = await conn.fetch(
                "SELECT id, trace_context FROM investigations WHERE status = 'running' AND deadline_at < now()"
                " LIMIT 500"
            )
            for row in late:
                with _redriving(row["id"], row["trace_context"], "deadline"):
                    locked = await conn.fetchrow("SELECT id FROM investigations WHERE id = $1 FOR UPDATE", row["id"])
                    reason = await self._breach(conn, locked["id"]) if locked else ""
                    if reason:
                        await self.conclude_early(conn, locked["id"], reason)
                        announced += 1
            steps = await conn.fetch(
                "SELECT s.*, i.mode, i.priority, i.trace_context FROM investigation_steps s JOIN investigations i"
                " ON i.id = s.investigation_id WHERE i.status = 'running' AND s.status IN ('dispatched', 'running')"
                " AND s.dispatched_at < now() - make_interval(secs => $1)"
                " AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.aggregate_id = s.investigation_id"
                "                 AND o.published_at IS NULL) LIMIT 500",
                stale_seconds,
            )
            for step in steps:
                investigation = {"id": step["investigation_id"], "mode": step["mode"], "priority": step["priority"]}
                with _redriving(step["investigation_id"], step["trace_context"], step["phase"]):
                    await self._announce(
                        conn,
                        investigation,
                        task_id=step["task_id"],
                        step_id=step["id"],
                        phase=step["phase"],
                        role=step["agent_role"],
                        attempt=step["attempt"],
                        inputs=json_object(step["input"]),
                    )
                    await conn.execute("UPDATE investigation_steps SET dispatched_at = now() WHERE id = $1", step["id"])
                    await self.event(
                        conn, step["investigation_id"], "redriven", "running", step["phase"],
                        f"step {step['agent_role']} announced again (no result for {stale_seconds:.0f}s)",
                    )  # fmt: skip
                announced += 1
        if announced:
            log.warning("reconciler announced %d message(s) again", announced)
            self._notify()
        return announced

    async def run_reconciler(self, interval_seconds: float, stale_seconds: float) -> None:
        """Reconcile every `interval_seconds` until cancelled."""
        while True:
            await asyncio.sleep(interval_seconds)
            try:
                await self.reconcile(stale_seconds)
            except (asyncpg.PostgresError, OSError) as exc:
                log.warning("reconciler: %s; trying again in %.0fs", exc, interval_seconds)

    async def _record_run(
        self, conn: asyncpg.Connection, step: asyncpg.Record, result: events_pb2.AgentResult, status: str
    ) -> None:
        usage = result.usage
        reasoner = "llm" if result.model and result.model != "none" else "rule"
        _note("step", (step["agent_role"], status, max(result.duration_ms, 0) / 1000))
        await conn.execute(
            "INSERT INTO agent_runs (id, investigation_id, step_id, task_id, agent_name, phase, reasoner, status,"
            " tool_calls, output_uri, trace_uri, error, worker_id, duration_ms, model, input_tokens, output_tokens,"
            " cache_creation_tokens, cache_read_tokens, cost_usd, llm_calls)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21)"
            " ON CONFLICT (task_id) DO NOTHING",
            uuid.uuid4(),
            step["investigation_id"],
            step["id"],
            step["task_id"],
            f"{reasoner}:{step['agent_role']}",
            step["phase"],
            reasoner,
            status,
            len(result.tool_call_ids),
            result.output_uri or None,
            result.trace_uri or None,
            result.error or None,
            result.worker_id or None,
            max(result.duration_ms, 0),
            result.model or "none",
            max(usage.input_tokens, 0),
            max(usage.output_tokens, 0),
            max(usage.cache_creation_input_tokens, 0),
            max(usage.cache_read_input_tokens, 0),
            max(usage.cost_usd, 0.0),
            max(usage.llm_calls, 0),
        )
        await conn.execute(
            "UPDATE investigation_steps SET status = $2, output = $3, output_uri = $4, trace_uri = $5, error = $6,"
            " worker_id = $7, finished_at = now(), duration_ms = $8, reasoner = $9 WHERE id = $1",
            step["id"],
            "succeeded" if status == "succeeded" else "failed",
            json_format.MessageToDict(result.output) if result.HasField("output") else None,
            result.output_uri or None,
            result.trace_uri or None,
            result.error or None,
            result.worker_id or None,
            max(result.duration_ms, 0),
            reasoner,
        )
        # What the step spent counts toward the investigation's totals (and so its budgets).
        await conn.execute(
            "UPDATE investigations SET tool_calls = tool_calls + $2, input_tokens = input_tokens + $3,"
            " output_tokens = output_tokens + $4, cache_creation_tokens = cache_creation_tokens + $5,"
            " cache_read_tokens = cache_read_tokens + $6, cost_usd = cost_usd + $7, updated_at = now() WHERE id = $1",
            step["investigation_id"],
            len(result.tool_call_ids),
            max(usage.input_tokens, 0),
            max(usage.output_tokens, 0),
            max(usage.cache_creation_input_tokens, 0),
            max(usage.cache_read_input_tokens, 0),
            max(usage.cost_usd, 0.0),
        )

    async def _succeeded(
        self,
        conn: asyncpg.Connection,
        investigation: asyncpg.Record,
        step: asyncpg.Record,
        result: events_pb2.AgentResult,
    ) -> None:
        await self.event(
            conn, investigation["id"], "step", "running", step["phase"], f"step {step['agent_role']} succeeded"
        )
        open_steps = await conn.fetchval(
            "SELECT count(*) FROM investigation_steps WHERE investigation_id = $1 AND phase = $2"
            " AND status IN ('pending', 'dispatched', 'running')",
            investigation["id"],
            step["phase"],
        )
        if open_steps:
            return
        spec = PHASES[step["phase"]]
        assert isinstance(spec, AgentPhase)
        output = _result_output(result)
        iteration = int(investigation["hypothesis_iteration"])
        if spec.loop_to and output.get("again") and iteration < int(investigation["max_iterations"]):
            investigation = await conn.fetchrow(
                "UPDATE investigations SET hypothesis_iteration = $2 WHERE id = $1 RETURNING *",
                investigation["id"],
                iteration + 1,
            )
            states = await self._states(conn, investigation["id"], step["phase"])
            message = (
                f"phase {spec.loop_to} started: hypothesis iteration {iteration + 1} of"
                f" {investigation['max_iterations']} (iteration {iteration} settled nothing)"
            )
            await self._enter(conn, investigation, spec.loop_to, states, message)
            return
        await self._enter(conn, investigation, spec.next)

    async def _retry(
        self, conn: asyncpg.Connection, investigation: asyncpg.Record, step: asyncpg.Record, error: str
    ) -> None:
        delay = RETRY_BASE_SECONDS * 2 ** (step["attempt"] - 1)
        await self.event(
            conn,
            investigation["id"],
            "step_retry",
            "running",
            step["phase"],
            f"step {step['agent_role']} failed ({error[:200]}); attempt {step['attempt'] + 1} in {delay:.0f}s",
        )
        states = list(json_object(step["input"]).get("state_uris", []))
        await self._dispatch(
            conn, investigation, step["phase"], step["agent_role"], step["attempt"] + 1, states, delay=delay
        )

    async def _give_up(
        self, conn: asyncpg.Connection, investigation: asyncpg.Record, step: asyncpg.Record, reason: str
    ) -> None:
        """A step failed for good. With evidence gathered already (and the step not RECOMMEND
        itself), RECOMMEND runs on the latest states for a partial, INCONCLUSIVE report naming the
        failure; otherwise the investigation fails with the reason."""
        states: list[str] = []
        if step["phase"] != "recommend":
            for phase in EVIDENCE_PHASES:
                states = [s for s in await self._states(conn, investigation["id"], phase) if s]
                if states:
                    break
        if not states:
            await self._fail(conn, investigation, reason)
            return
        await conn.execute(
            "UPDATE investigation_steps SET status = 'cancelled' WHERE investigation_id = $1"
            " AND status IN ('pending', 'dispatched', 'running')",
            investigation["id"],
        )
        investigation = await conn.fetchrow(
            "UPDATE investigations SET error = $2, updated_at = now() WHERE id = $1 RETURNING *",
            investigation["id"],
            reason,
        )
        await self.event(
            conn,
            investigation["id"],
            "partial",
            "running",
            step["phase"],
            f"{reason}; concluding from the evidence so far",
        )
        await self._enter(conn, investigation, "recommend", states, "phase recommend started: partial report")

    async def _fail(self, conn: asyncpg.Connection, investigation: asyncpg.Record, reason: str) -> None:
        await conn.execute(
            "UPDATE investigation_steps SET status = 'cancelled' WHERE investigation_id = $1"
            " AND status IN ('pending', 'dispatched', 'running')",
            investigation["id"],
        )
        await conn.execute(
            "UPDATE investigations SET status = 'failed', error = $2, completed_at = now(), updated_at = now()"
            " WHERE id = $1",
            investigation["id"],
            reason,
        )
        await self.event(conn, investigation["id"], "failed", "failed", investigation["phase"], reason)
        _note("ended", investigation["id"])
        await record_deliveries(conn, investigation, self.publishing)

    # -- report -----------------------------------------------------------------------------

    async def write_report(
        self, conn: asyncpg.Connection, investigation: asyncpg.Record, findings: Mapping[str, Any] | None = None
    ) -> None:
        """Render the findings (by default the RECOMMEND step's); store Markdown and HTML in S3 and
        the report row."""
        with _tracer().start_as_current_span(
            "engine.report", attributes={"pm.investigation_id": str(investigation["id"])}
        ) as span:
            verdict = await self._write_report(conn, investigation, findings)
            span.set_attribute("pm.verdict", verdict)

    async def _write_report(
        self, conn: asyncpg.Connection, investigation: asyncpg.Record, findings: Mapping[str, Any] | None
    ) -> str:
        if findings is None:
            row = await conn.fetchrow(
                "SELECT output FROM investigation_steps WHERE investigation_id = $1 AND phase = 'recommend'"
                " AND status = 'succeeded' ORDER BY finished_at DESC LIMIT 1",
                investigation["id"],
            )
            findings = json_object(row["output"]) if row else {}
            if investigation["error"]:
                findings = partial(findings, str(investigation["error"]))
        record = {"id": str(investigation["id"]), "ticket_id": investigation["ticket_id"]}
        markdown = render_markdown(record, findings)
        prefix = f"reports/{investigation['id']}"
        md_ref = await self._store.put(f"{prefix}/report.md", markdown.encode(), content_type="text/markdown")
        html_ref = await self._store.put(
            f"{prefix}/report.html",
            render_html(markdown, f"Investigation {investigation['ticket_id']}").encode(),
            content_type="text/html",
        )
        verdict = str(findings.get("verdict") or "INCONCLUSIVE")
        confidence = float(findings.get("confidence") or 0.0)
        remediation = findings.get("remediation") or {}
        evidence = [
            {"claim": e.get("claim", ""), "tool_call_ids": e.get("call_ids", []), "stance": "supports"}
            for e in findings.get("evidence") or []
        ]
        rejected = [h for h in findings.get("hypotheses") or [] if h.get("status") == "rejected"]
        await conn.execute(
            "INSERT INTO reports (id, investigation_id, verdict, confidence, summary, evidence, recommendations,"
            " timeline, first_failing_service, blast_radius, culprit_change, operational_signal, rejected_hypotheses,"
            " markdown, markdown_uri, html_uri, object_version_id)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)",
            uuid.uuid4(),
            investigation["id"],
            verdict,
            confidence,
            str(findings.get("summary") or ""),
            evidence,
            [
                {"action": remediation.get("class", "investigate"), "description": s}
                for s in remediation.get("steps") or []
            ],
            findings.get("timeline") or [],
            findings.get("first_failing_service") or None,
            list(findings.get("blast_radius") or []),
            findings.get("culprit"),
            findings.get("operational_signal") or None,
            rejected,
            markdown,
            md_ref.uri(self._store.bucket),
            html_ref.uri(self._store.bucket),
            md_ref.version_id,
        )
        for ordinal, hypothesis in enumerate(findings.get("hypotheses") or [], start=1):
            status = {"confirmed": "accepted", "supported": "accepted", "untested": "open"}.get(
                hypothesis.get("status", ""), "rejected"
            )
            await conn.execute(
                "INSERT INTO hypotheses (id, investigation_id, iteration, ordinal, statement, candidate, confidence,"
                " status, verdict, checks, rejection_reason) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
                " ON CONFLICT (investigation_id, iteration, ordinal) DO NOTHING",
                uuid.uuid4(),
                investigation["id"],
                int(hypothesis.get("iteration") or 1),
                ordinal,
                f"{hypothesis.get('kind', 'change')} {hypothesis.get('ref', '')}"
                f" ({hypothesis.get('title', '')}) caused it",
                {k: hypothesis.get(k) for k in ("kind", "ref", "service", "title", "at", "score")},
                confidence if status == "accepted" else 0.0,
                status,
                verdict if status == "accepted" else None,
                hypothesis.get("checks") or [],
                hypothesis.get("rejected_because") or None,
            )
        await conn.execute(
            "UPDATE investigations SET verdict = $2, confidence = $3, summary = $4, report_url = $5, updated_at = now()"
            " WHERE id = $1",
            investigation["id"],
            verdict,
            confidence,
            str(findings.get("summary") or "")[:4000],
            html_ref.uri(self._store.bucket),
        )
        await self.event(conn, investigation["id"], "report", "running", "report", f"report ready: {verdict}")
        return verdict

    # -- progress ---------------------------------------------------------------------------

    async def event(
        self, conn: asyncpg.Connection, investigation_id: uuid.UUID, kind: str, status: str, phase: str, message: str
    ) -> None:
        await conn.execute(
            "INSERT INTO investigation_events (id, investigation_id, sequence, kind, status, phase, message)"
            " SELECT $1, $2, coalesce(max(sequence), 0) + 1, $3, $4, $5, $6 FROM investigation_events"
            " WHERE investigation_id = $2",
            uuid.uuid4(),
            investigation_id,
            kind,
            status,
            phase,
            message,
        )

    def _notify(self) -> None:
        if self._relay is not None:
            self._relay.notify()


async def _outbox(
    conn: asyncpg.Connection,
    stream: str,
    investigation: Mapping[str, Any],
    message_type: str,
    payload: bytes,
    delay: float,
) -> None:
    await conn.execute(
        "INSERT INTO outbox (id, stream, aggregate_id, message_type, payload, priority, available_at)"
        " VALUES ($1, $2, $3, $4, $5, $6, now() + make_interval(secs => $7))",
        uuid.uuid4(),
        stream,
        investigation["id"],
        message_type,
        payload,
        int(investigation["priority"]),
        delay,
    )


@functools.cache
def _tracer() -> trace.Tracer:
    """The engine's tracer (the process's provider, once the runtime has set it)."""
    return trace.get_tracer(__name__)


@contextmanager
def _redriving(investigation_id: uuid.UUID, carried: Any, phase: str) -> Iterator[None]:
    """A reconciler re-drive of one investigation, as a span of the investigation's own trace
    (the request's, kept on its row), with its id on every log line."""
    with (
        _tracer().start_as_current_span(
            "engine.redrive",
            context=parent_context(json_object(carried)),
            attributes={"pm.investigation_id": str(investigation_id), "pm.phase": phase},
        ),
        bind_investigation(str(investigation_id)),
    ):
        yield


def _note(kind: str, value: Any) -> None:
    """Remember `value` for the metrics, reported once the current transaction commits."""
    notes = _AFTER_COMMIT.get()
    if notes is not None:
        notes.append((kind, value))


def partial(findings: Mapping[str, Any], reason: str) -> dict[str, Any]:
    """The findings of an investigation a failed step cut short: INCONCLUSIVE whatever they
    suggest, saying what failed and what they pointed to."""
    suggested = str(findings.get("verdict") or "INCONCLUSIVE")
    culprit = findings.get("culprit") or {}
    pointed = (
        f" The evidence so far points to {culprit.get('kind', 'change')} {str(culprit.get('ref', ''))[:12]}"
        f" ({suggested}), unconfirmed."
        if culprit and suggested != "INCONCLUSIVE"
        else ""
    )
    return {
        **findings,
        "verdict": "INCONCLUSIVE",
        "confidence": min(float(findings.get("confidence") or 0.0), 0.3),
        "summary": f"Partial report: {reason}.{pointed} {findings.get('summary', '')}".strip(),
        "partial": reason,
        "problems": [reason, *(findings.get("problems") or [])],
    }


def _result_output(result: events_pb2.AgentResult) -> dict[str, Any]:
    return json_format.MessageToDict(result.output) if result.HasField("output") else {}

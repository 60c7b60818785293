"""Runs agent steps: AgentTask in (consumer group on pm.agent.tasks), AgentResult out.

For each task the worker reads the states the task's input names from the object store, runs
the step's role through its reasoner with tools from the registry (citing the investigation,
the step and the role, so every call is audited under them), writes the new state, the output
and a trace to the object store, and publishes the result. The task is acknowledged only after
the result is published: a worker killed mid-step leaves it pending, and another worker's
reaper claims it after `STEP_RECLAIM_IDLE_MS` and runs it again (same task id and attempt; the
orchestrator applies a result only once).

Object keys (versioned bucket):
    investigations/<investigation_id>/steps/<step_id>/attempt-<n>/state.json    reasoner state
    investigations/<investigation_id>/steps/<step_id>/attempt-<n>/output.json   structured output
    investigations/<investigation_id>/steps/<step_id>/attempt-<n>/trace.json    tool calls, timing
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import grpc
from google.protobuf import json_format, struct_pb2
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import StatusCode
from prometheus_client import CollectorRegistry, Counter, Gauge

from pm.common.v1 import types_pb2
from pm.events.v1 import events_pb2
from pm_errors import NotFound, PmError
from pm_storage import ObjectStore
from pm_streams import GROUP_WORKERS, STREAM_AGENT_RESULTS, STREAM_AGENT_TASKS, Delivery, StreamBus
from pm_worker.llm.case_view import carry_notes, notes_of
from pm_worker.llm.conclude import RegistryTools
from pm_worker.llm.gather_context import report_view
from pm_worker.llm.loop import LoopResult
from pm_worker.llm.protocol import AnswerMissing, ProviderRejected, StructuredOutputInvalid
from pm_worker.llm.roles import Assignment, LLMSetup, run_llm_role
from pm_worker.rules.reasoner import CANDIDATES_PER_ITERATION, Case, ContextSources
from pm_worker.rules.steps import StepInputError, dump_case, load_case, run_role
from pm_worker.rules.toolbox import InvestigationEnded, RegistryToolBox
from pm_worker.similar import hypothesis_context, knowledge_context

log = logging.getLogger(__name__)


MESSAGE_TYPE_RESULT = "pm.events.v1.AgentResult"


def step_prefix(task: events_pb2.AgentTask) -> str:
    return f"investigations/{task.investigation_id}/steps/{task.step_id}/attempt-{task.attempt}"


def _s3_key(uri: str, bucket: str) -> tuple[str, str | None]:
    """(key, version) of `s3://bucket/key?versionId=v` (or a bare key)."""
    rest = uri.removeprefix(f"s3://{bucket}/") if uri.startswith("s3://") else uri
    key, _, query = rest.partition("?versionId=")
    return key, (query or None)


class StepExecutor:
    """Consumes agent tasks and publishes their results."""

    def __init__(
        self,
        bus: StreamBus,
        store: ObjectStore,
        registry: grpc.aio.Channel,
        *,
        worker_id: str,
        reclaim_idle_ms: int = 60_000,
        max_deliveries: int = 5,
        tool_timeout_seconds: float = 60.0,
        concurrency: int = 1,
        candidates_per_iteration: int = CANDIDATES_PER_ITERATION,
        llm: LLMSetup | None = None,
        metrics: CollectorRegistry | None = None,
        tracer_provider: TracerProvider | None = None,
        sources: ContextSources | None = None,
    ) -> None:
        self._bus = bus
        self._store = store
        self._registry = registry
        self.worker_id = worker_id
        self._reclaim_idle_ms = reclaim_idle_ms
        self._max_deliveries = max_deliveries
        self._tool_timeout = tool_timeout_seconds
        self._concurrency = concurrency
        self._per_iteration = candidates_per_iteration
        # The tool arguments of GATHER's context part (the ticket and chat of each task are its own).
        self._sources = sources or ContextSources()
        self._llm = llm
        # Declared even without an LLM, so dashboards and alerts find the families (empty).
        self._llm_metrics = LLMMetrics(metrics)
        self._worker_metrics = WorkerMetrics(metrics, concurrency) if metrics is not None else None
        self._tracer = trace.get_tracer(__name__, tracer_provider=tracer_provider)

    def subscribe(self) -> None:
        self._bus.subscribe(
            STREAM_AGENT_TASKS,
            group=GROUP_WORKERS,
            consumer=self.worker_id,
            message_type=events_pb2.AgentTask,
            handler=self.handle,
            reclaim_idle_ms=self._reclaim_idle_ms,
            max_deliveries=self._max_deliveries,
            concurrency=self._concurrency,
        )

    async def handle(self, task: events_pb2.AgentTask, delivery: Delivery) -> None:
        if self._worker_metrics is not None:
            self._worker_metrics.running.inc()
        try:
            result = await self.run(task)
        finally:
            if self._worker_metrics is not None:
                self._worker_metrics.running.dec()
        if delivery.delivery_count > 1:
            log.info("re-ran a reclaimed step", extra={"task_id": task.task_id, "deliveries": delivery.delivery_count})
        await self._bus.publish(STREAM_AGENT_RESULTS, result, message_id=f"{task.task_id}:result")

    async def run(self, task: events_pb2.AgentTask) -> events_pb2.AgentResult:
        """Run one step as an `agent.step` span; never raises for the step's own failures (they
        become the result)."""
        phase = types_pb2.Phase.Name(task.phase).removeprefix("PHASE_").lower()
        with self._tracer.start_as_current_span(
            "agent.step",
            attributes={
                "pm.investigation_id": task.investigation_id,
                "pm.phase": phase,
                "pm.agent": task.agent_role,
                "pm.attempt": task.attempt,
                "pm.task_id": task.task_id,
                "pm.step_id": task.step_id,
                "pm.worker_id": self.worker_id,
            },
        ) as span:
            result = await self._run(task)
            reasoner = "llm" if result.model else "rule"
            span.set_attribute("pm.reasoner", reasoner)
            span.set_attribute("pm.model", result.model or "none")
            span.set_attribute("pm.step_status", events_pb2.StepStatus.Name(result.status))
            span.set_attribute("pm.tool_calls", len(result.tool_call_ids))
            if result.status != events_pb2.STEP_STATUS_SUCCEEDED:
                span.set_status(StatusCode.ERROR, result.error[:300])
        return result

    async def _run(self, task: events_pb2.AgentTask) -> events_pb2.AgentResult:
        started = time.monotonic()
        result = events_pb2.AgentResult(
            task_id=task.task_id,
            investigation_id=task.investigation_id,
            step_id=task.step_id,
            attempt=task.attempt,
            worker_id=self.worker_id,
            trace_context=dict(task.trace_context),
        )
        try:
            if task.reasoner not in ("", "rule", "auto", "llm"):
                raise StepInputError(f"unknown reasoner {task.reasoner!r}")
            if task.reasoner == "llm" and self._llm is None:
                raise StepInputError("the LLM reasoner is not configured on this worker (no LLM key)")
            inputs = json_format.MessageToDict(task.input) if task.HasField("input") else {}
            tools = RegistryToolBox(
                self._registry,
                agent_role=task.agent_role,
                investigation_id=task.investigation_id,
                step_id=task.step_id,
                agent_name=f"rule:{task.agent_role}",
                phase=types_pb2.Phase.Name(task.phase),
                server=str(inputs.get("server", "")),
                timeout_seconds=self._tool_timeout,
            )
            states = [await self._read_state(uri) for uri in inputs.get("state_uris", [])]
            state, output = await self._rule_step(task, tools, states, inputs)
            if "similar_incidents" in inputs:
                # What HYPOTHESIZE was given of similar past incidents, or why it abstained.
                output = {**output, "similar_incidents": hypothesis_context(inputs["similar_incidents"])}
            if "knowledge" in inputs:
                # The active knowledge entries of the investigation's services it was given.
                output = {**output, "knowledge": knowledge_context(inputs["knowledge"])}
            state, output, llm_trace = await self._reason(task, inputs, tools, states, state, output, result)
            if task.agent_role == "recommend" and (said := report_view(load_case(state), notes_of([state]))):
                # What the ticket and chat said, for the report (leads, shown apart from the evidence).
                output = {**output, "reported_context": said}
            prefix = step_prefix(task)
            state_ref = await self._put_json(f"{prefix}/state.json", state)
            output = {**output, "state_uri": state_ref.uri(self._store.bucket)}
            output_ref = await self._put_json(f"{prefix}/output.json", output)
            call_ids = sorted(set(tools.call_ids))  # only the calls this step made
            trace = {
                "task_id": task.task_id,
                "role": task.agent_role,
                "reasoner": "llm" if result.model else "rule",
                "model": result.model,
                "llm_turns": llm_trace,
                "worker_id": self.worker_id,
                "tool_calls": tools.calls,
                "tool_call_ids": call_ids,
                "problems": state.get("problems", []),
                "duration_ms": int((time.monotonic() - started) * 1000),
            }
            trace_ref = await self._put_json(f"{prefix}/trace.json", trace)
            result.status = events_pb2.STEP_STATUS_SUCCEEDED
            result.output.CopyFrom(_struct(output))
            result.output_uri = output_ref.uri(self._store.bucket)
            result.trace_uri = trace_ref.uri(self._store.bucket)
            result.tool_call_ids.extend(call_ids)
        except (StepInputError, InvestigationEnded, ProviderRejected) as exc:
            result.status = events_pb2.STEP_STATUS_FAILED_PERMANENT
            result.error = str(exc)
        except (StructuredOutputInvalid, AnswerMissing) as exc:
            # The model did not give a valid answer after its corrective turn: the step fails
            # visibly with what was wrong (and is retried; a new conversation may succeed).
            result.status = events_pb2.STEP_STATUS_FAILED
            result.error = f"the model's answer was not usable: {exc}"[:2000]
        except (PmError, grpc.aio.AioRpcError, OSError) as exc:
            # The registry, the object store or a dependency failed: a retry may succeed.
            result.status = events_pb2.STEP_STATUS_FAILED
            result.error = f"{type(exc).__name__}: {exc}"[:2000]
        except Exception as exc:  # a defect in a step must end as a result, not as a lost task
            # Reported as a failed attempt, so the orchestrator retries and then fails the
            # investigation with the reason, instead of the task bouncing to the dead letters.
            log.exception("step %s raised", task.agent_role, extra={"investigation_id": task.investigation_id})
            result.status = events_pb2.STEP_STATUS_FAILED
            result.error = f"internal error in step {task.agent_role}: {type(exc).__name__}: {exc}"[:2000]
        result.duration_ms = int((time.monotonic() - started) * 1000)
        result.finished_at.FromDatetime(datetime.now(UTC))
        log.info(
            "step %s %s",
            task.agent_role,
            events_pb2.StepStatus.Name(result.status),
            extra={"investigation_id": task.investigation_id, "step_id": task.step_id, "error": result.error},
        )
        return result

    async def _rule_step(
        self,
        task: events_pb2.AgentTask,
        tools: RegistryToolBox,
        states: list[dict[str, Any]],
        inputs: Mapping[str, Any],
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """The rule reasoner's step of the task's role: its state and output."""
        try:
            return await run_role(
                tools, task.agent_role, states, per_iteration=self._per_iteration, sources=self._context(inputs)
            )
        except StepInputError as exc:
            if task.agent_role != "triage" or self._assignment(task) is None:
                raise
            # The rules could not read the alert (a tool of another shape, say): the triage agent,
            # which sees each tool's own schema, reads it and sets the onset itself.
            state = dump_case(Case(problems=[f"triage: {exc}; the triage agent reads the alert itself"]))
            return state, {"alert": {}, "onset": None, "fired_at": None, "rule_error": str(exc)}

    def _assignment(self, task: events_pb2.AgentTask) -> Assignment | None:
        """Who runs the task's role with a model (None: the rule reasoner's step stands)."""
        if self._llm is None or task.reasoner == "rule":
            return None
        return self._llm.assignment(task.model_tier, task.agent_role)

    def _context(self, inputs: Mapping[str, Any]) -> ContextSources:
        """Where this task's GATHER context part looks: the orchestrator names the ticket and channel."""
        given = inputs.get("context")
        if not isinstance(given, Mapping):
            return self._sources
        return replace(
            self._sources, ticket_id=str(given.get("ticket_id") or ""), channel=str(given.get("channel") or "")
        )

    async def _reason(
        self,
        task: events_pb2.AgentTask,
        inputs: Mapping[str, Any],
        tools: RegistryToolBox,
        states: list[dict[str, Any]],
        state: dict[str, Any],
        output: dict[str, Any],
        result: events_pb2.AgentResult,
    ) -> tuple[dict[str, Any], dict[str, Any], list[dict[str, Any]]]:
        """The role's LLM agent on the rule reasoner's state and output, when the task's mode gives
        the LLM this role (pm_worker.llm.modes); otherwise the rule reasoner's step stands. Returns
        (state, output, the model's turns) and fills the result's model and usage."""
        agent = self._assignment(task)
        if agent is None:
            return carry_notes(states, state), output, []
        # The agent's own tool calls are audited as its, not the rule reasoner's.
        tools.speak_as(f"llm:{task.agent_role}")
        step = await run_llm_role(agent, RegistryTools(tools), states, state, output, per_iteration=self._per_iteration)
        if step.result is not None:
            self._record_usage(step.result, result, str(inputs.get("server", "")))
            self._llm_metrics.step(task.agent_role, step.result, step.output)
        return step.state, step.output, step.trace

    def _record_usage(self, loop_result: LoopResult[Any], result: events_pb2.AgentResult, domain: str) -> None:
        """The model's spending onto the step's result and the worker's metrics."""
        usage = loop_result.usage
        result.model = loop_result.model
        result.usage.CopyFrom(
            types_pb2.Usage(
                input_tokens=usage.input_tokens,
                output_tokens=usage.output_tokens,
                cache_creation_input_tokens=usage.cache_creation_input_tokens,
                cache_read_input_tokens=usage.cache_read_input_tokens,
                cost_usd=usage.cost_usd,
                llm_calls=usage.calls,
                tool_calls=len(loop_result.call_ids),
            )
        )
        self._llm_metrics.record(loop_result.usage_by_model, domain)

    async def _read_state(self, uri: str) -> dict[str, Any]:
        key, version = _s3_key(uri, self._store.bucket)
        try:
            stored = await self._store.get(key, version_id=version)
        except NotFound:
            raise StepInputError(f"the previous state {uri} does not exist") from None
        try:
            value = json.loads(stored.data)
        except ValueError:
            raise StepInputError(f"the previous state {uri} is not JSON") from None
        if not isinstance(value, dict):
            raise StepInputError(f"the previous state {uri} is not a JSON object")
        return value

    async def _put_json(self, key: str, value: Mapping[str, Any]) -> Any:
        data = json.dumps(value, sort_keys=True, default=str).encode()
        return await self._store.put(key, data, content_type="application/json")


class WorkerMetrics:
    """pm_worker_steps_running and pm_worker_step_slots: busy over slots is the utilization."""

    def __init__(self, registry: CollectorRegistry | None, slots: int) -> None:
        self.running = Gauge("pm_worker_steps_running", "Agent steps this worker is running now.", registry=registry)
        self.slots = Gauge("pm_worker_step_slots", "Agent steps this worker may run at once.", registry=registry)
        self.slots.set(slots)


class LLMMetrics:
    """pm_llm_tokens_total{model,type}, pm_llm_cost_dollars_total{model,domain}, and per role the
    steps that continued on the fallback provider and the claims the citation checker removed."""

    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.tokens = Counter("pm_llm_tokens", "LLM tokens by model and type.", ["model", "type"], registry=registry)
        self.cost = Counter("pm_llm_cost_dollars", "LLM spend in US dollars.", ["model", "domain"], registry=registry)
        self.fallbacks = Counter(
            "pm_llm_fallback_steps",
            "LLM steps that switched to the fallback provider mid-step.",
            ["role", "provider"],
            registry=registry,
        )
        self.rejected = Counter(
            "pm_llm_rejected_claims",
            "Model claims removed for citing no tool call of the investigation.",
            ["role"],
            registry=registry,
        )

    def step(self, role: str, result: LoopResult[Any], output: Mapping[str, Any]) -> None:
        """What one LLM step did: a switch to the fallback provider, the claims removed."""
        if result.switched_provider:
            self.fallbacks.labels(role, result.provider).inc()
        rejected = output.get("rejected_claims")
        if isinstance(rejected, int) and rejected > 0:
            self.rejected.labels(role).inc(rejected)

    def record(self, usage_by_model: Mapping[str, Any], domain: str) -> None:
        for model, usage in usage_by_model.items():
            for kind, count in (
                ("input", usage.input_tokens),
                ("output", usage.output_tokens),
                ("cache_creation", usage.cache_creation_input_tokens),
                ("cache_read", usage.cache_read_input_tokens),
            ):
                self.tokens.labels(model, kind).inc(count)
            self.cost.labels(model, domain or "none").inc(usage.cost_usd)


def _struct(value: Mapping[str, Any]) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    message.update(json.loads(json.dumps(value, default=str)))
    return message


def new_worker_id() -> str:
    return f"worker-{uuid.uuid4().hex[:8]}"

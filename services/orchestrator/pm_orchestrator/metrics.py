"""The orchestrator's metrics: how investigations end, how long they and their steps take, and
how deep the streams' queues are (read from Redis, so every replica reports the same truth).

Outcomes are counted after the transaction that ended an investigation commits, once per
investigation, by the replica that ended it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from redis.exceptions import RedisError

from pm_streams import StreamBus

log = logging.getLogger(__name__)

# Investigations can run for an hour (the default deadline is 30 minutes).
DURATION_BUCKETS = (1, 5, 10, 30, 60, 120, 300, 600, 900, 1200, 1800, 2700, 3600, 5400, 7200)
STEP_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
CONFIDENCE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
ITERATION_BUCKETS = (1, 2, 3, 4, 5, 10)


def _domain(value: str | None) -> str:
    """A domain as a label value: bounded in length, `none` when unset."""
    return (value or "none")[:63]


class EngineMetrics:
    """pm_investigations_*, pm_verdicts_total, pm_hypothesis_iterations, pm_agent_steps_*."""

    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.started = Counter(
            "pm_investigations_started",
            "Investigations started, by trigger source and domain.",
            ["trigger_source", "domain"],
            registry=registry,
        )
        self.ended = Counter(
            "pm_investigations",
            "Investigations that ended, by status (completed, failed, cancelled), trigger source and domain.",
            ["status", "trigger_source", "domain"],
            registry=registry,
        )
        self.duration = Histogram(
            "pm_investigation_duration_seconds",
            "From start to the end of an investigation, by status.",
            ["status"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.verdicts = Counter(
            "pm_verdicts",
            "How investigations ended: their verdict, or FAILED / CANCELLED.",
            ["verdict"],
            registry=registry,
        )
        self.confidence = Histogram(
            "pm_verdict_confidence", "Confidence of the verdicts.", ["verdict"], buckets=CONFIDENCE_BUCKETS,
            registry=registry,
        )  # fmt: skip
        self.iterations = Histogram(
            "pm_hypothesis_iterations",
            "Hypothesis iterations of the investigations that completed.",
            buckets=ITERATION_BUCKETS,
            registry=registry,
        )
        self.steps = Counter(
            "pm_agent_steps", "Agent step results applied, by agent and status.", ["agent", "status"],
            registry=registry,
        )  # fmt: skip
        self.step_seconds = Histogram(
            "pm_agent_step_duration_seconds", "Duration of agent steps, by agent.", ["agent"], buckets=STEP_BUCKETS,
            registry=registry,
        )  # fmt: skip

    def investigation_started(self, row: Mapping[str, Any]) -> None:
        self.started.labels(row["trigger_source"], _domain(row["domain"])).inc()

    def investigation_ended(self, row: Mapping[str, Any]) -> None:
        status = str(row["status"])
        self.ended.labels(status, row["trigger_source"], _domain(row["domain"])).inc()
        started = row["started_at"] or row["created_at"]
        if row["completed_at"] is not None and started is not None:
            self.duration.labels(status).observe(max((row["completed_at"] - started).total_seconds(), 0.0))
        verdict = str(row["verdict"]) if status == "completed" and row["verdict"] else status.upper()
        self.verdicts.labels(verdict).inc()
        if status == "completed":
            self.confidence.labels(verdict).observe(float(row["confidence"] or 0.0))
            self.iterations.observe(int(row["hypothesis_iteration"]))

    def step(self, agent: str, status: str, seconds: float) -> None:
        self.steps.labels(agent, status).inc()
        self.step_seconds.labels(agent).observe(max(seconds, 0.0))


class QueueMetrics:
    """pm_stream_lag and pm_stream_pending per stream and consumer group, read from Redis
    (XINFO GROUPS) every `interval_seconds`: not counted in-process, so they stay true whichever
    process produced or consumed the messages."""

    def __init__(self, bus: StreamBus, streams: Sequence[str], registry: CollectorRegistry | None) -> None:
        self._bus = bus
        self._streams = tuple(streams)
        self.lag = Gauge(
            "pm_stream_lag",
            "Messages on a stream not yet delivered to a consumer group (the queue depth).",
            ["stream", "group"],
            registry=registry,
        )
        self.pending = Gauge(
            "pm_stream_pending",
            "Messages delivered to a consumer group and not yet acknowledged (in progress or stuck).",
            ["stream", "group"],
            registry=registry,
        )

    async def refresh(self) -> None:
        for stream in self._streams:
            for group, (lag, pending) in (await self._bus.depth(stream)).items():
                self.lag.labels(stream, group).set(lag)
                self.pending.labels(stream, group).set(pending)

    async def run(self, interval_seconds: float = 5.0) -> None:
        while True:
            try:
                await self.refresh()
            except (RedisError, OSError) as exc:
                log.warning("queue metrics: redis: %s", exc)
            await asyncio.sleep(interval_seconds)

"""The outbox relay: publishes committed outbox rows to their streams, highest priority first.

A service commits its state change and the outbox rows announcing it together (intake: an
investigation; the orchestrator: the agent tasks of a phase); the relay publishes after commit.
It wakes when the service commits (`notify`) and otherwise polls, so rows left behind by a Redis
outage or a crash are published as soon as Redis answers again. Rows are locked with FOR UPDATE
SKIP LOCKED, so several replicas relay side by side without publishing a row twice; the outbox
row id is the message id, so a consumer can drop the rare duplicate left by a crash between
publishing and marking.

Trace context: the relay publishes in no request's context, so each message continues the trace
its writer recorded in it at insert time, the message's own `trace_context` map (every message
of pm.events.v1 that announces work has one); the relay's `send` span is a child of that context.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from dataclasses import dataclass

import asyncpg
from google.protobuf import descriptor_pool, message_factory
from google.protobuf.message import DecodeError, Message
from prometheus_client import CollectorRegistry, Counter, Gauge

from pm_errors import Unavailable
from pm_streams.bus import Outgoing, StreamBus

log = logging.getLogger(__name__)

_CLAIM = """
SELECT id, stream, message_type, payload FROM outbox
WHERE published_at IS NULL AND available_at <= now()
ORDER BY priority, available_at, created_at
LIMIT $1
FOR UPDATE SKIP LOCKED
"""

_MARK = """
UPDATE outbox SET published_at = now(), stream_entry_id = p.entry, attempts = attempts + 1
FROM unnest($1::uuid[], $2::text[]) AS p(id, entry)
WHERE outbox.id = p.id
"""

_FAILED = "UPDATE outbox SET attempts = attempts + 1, last_error = $2 WHERE id = ANY($1::uuid[])"

_LAG = "SELECT count(*), extract(epoch FROM now() - min(created_at)) FROM outbox WHERE published_at IS NULL"

MAX_BACKOFF_SECONDS = 3.0

_PURGE = "DELETE FROM outbox WHERE published_at < now() - make_interval(days => $1)"


@dataclass
class _Metrics:
    published: Counter
    failures: Counter
    unpublished: Gauge
    lag: Gauge


class OutboxRelay:
    """Moves outbox rows to Redis streams."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        bus: StreamBus,
        registry: CollectorRegistry,
        *,
        batch_size: int = 200,
        poll_seconds: float = 1.0,
        retention_days: int = 7,
        coalesce_seconds: float = 0.01,
    ) -> None:
        self._pool = pool
        self._bus = bus
        self._batch = batch_size
        self._poll = poll_seconds
        self._retention_days = retention_days
        self._wake = asyncio.Event()
        self._coalesce = coalesce_seconds
        self._observed_at = 0.0
        self._metrics = _Metrics(
            published=Counter(
                "pm_outbox_published", "Outbox rows published to their stream.", ["stream"], registry=registry
            ),
            failures=Counter(
                "pm_outbox_publish_failures", "Failed attempts to publish outbox rows.", registry=registry
            ),
            unpublished=Gauge("pm_outbox_unpublished", "Outbox rows not yet published.", registry=registry),
            lag=Gauge(
                "pm_outbox_lag_seconds", "Age of the oldest unpublished outbox row (0 when none).", registry=registry
            ),
        )

    def notify(self) -> None:
        """Intake committed new rows: publish now rather than at the next poll."""
        self._wake.set()

    async def publish_pending(self) -> int:
        """Publish one batch of due rows; returns how many were published. Raises Unavailable when Redis is down."""
        # Rows are claimed only once Redis answers: a claim held through a long failing publish
        # would let a ticket claimed before an outage go out ahead of alerts that arrived during it.
        await self._bus.ping()
        async with self._pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(_CLAIM, self._batch)
            if not rows:
                return 0
            messages = [
                Outgoing(
                    r["stream"],
                    bytes(r["payload"]),
                    str(r["id"]),
                    r["message_type"],
                    carried_trace_context(r["message_type"], bytes(r["payload"])),
                )
                for r in rows
            ]
            error: Unavailable | None = None
            try:
                entries = await self._bus.publish_batch(messages)
            except Unavailable as exc:
                error = exc
                self._metrics.failures.inc()
                await conn.execute(_FAILED, [r["id"] for r in rows], str(exc)[:500])
            else:
                await conn.execute(_MARK, [r["id"] for r in rows], entries)
        if error is not None:
            raise error
        for row in rows:
            self._metrics.published.labels(row["stream"]).inc()
        return len(rows)

    async def drain(self) -> int:
        """Publish until nothing is due; returns the total published."""
        total = 0
        while True:
            published = await self.publish_pending()
            total += published
            if published < self._batch:
                return total

    async def _observe(self) -> None:
        now = time.monotonic()
        if now - self._observed_at < 1.0:
            return
        self._observed_at = now
        count, age = await self._pool.fetchrow(_LAG)
        self._metrics.unpublished.set(count or 0)
        self._metrics.lag.set(float(age or 0.0))

    async def run(self) -> None:
        """Relay until cancelled; Redis or PostgreSQL outages only delay publishing."""
        failures = 0
        purge_every = max(1, int(3600 / self._poll))
        rounds = 0
        while True:
            try:
                await self.drain()
                await self._observe()
                rounds += 1
                if rounds % purge_every == 0:
                    await self._pool.execute(_PURGE, self._retention_days)
                failures = 0
            except (Unavailable, asyncpg.PostgresError, OSError) as exc:
                failures += 1
                # Back off without listening to new commits, so an outage is not hammered; a
                # restored Redis is noticed within MAX_BACKOFF_SECONDS.
                delay = min(self._poll * 2**failures, MAX_BACKOFF_SECONDS)
                log.warning("outbox relay: %s; retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                self._wake.clear()
                continue
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for drops a cancellation that
            # arrives as the wake-up completes, and this loop would then outlive its shutdown.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._poll):
                    await self._wake.wait()
            # Under load many commits arrive within a few milliseconds: publish them as one batch.
            await asyncio.sleep(self._coalesce)
            self._wake.clear()


@functools.cache
def _message_class(message_type: str) -> type[Message] | None:
    """The generated class of `message_type` when it is known to this process and has a
    `trace_context` field."""
    try:
        descriptor = descriptor_pool.Default().FindMessageTypeByName(message_type)
    except KeyError:
        return None
    if "trace_context" not in descriptor.fields_by_name:
        return None
    cls: type[Message] = message_factory.GetMessageClass(descriptor)
    return cls


def carried_trace_context(message_type: str, payload: bytes) -> dict[str, str]:
    """The trace context a serialized message was written with; {} when it carries none."""
    cls = _message_class(message_type)
    if cls is None:
        return {}
    try:
        message = cls.FromString(payload)
    except DecodeError:
        return {}
    return dict(getattr(message, "trace_context", {}))

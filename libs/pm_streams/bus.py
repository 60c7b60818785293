"""The stream bus: one faststream RedisBroker plus a Redis client for group administration.

Every message is traced: publishing opens a PRODUCER span (`send <stream>`) whose W3C context
goes into the message's headers, and handling opens a CONSUMER span (`process <stream>`) under
the context the message carries (its headers, else the message's own `trace_context` map), with
the message's investigation id bound to every log line written while it is handled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from faststream.redis import RedisBroker, StreamSub
from faststream.redis.annotations import RedisStreamMessage
from google.protobuf.message import DecodeError, Message
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import Span, SpanKind, StatusCode
from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from pm_errors import Unavailable
from pm_streams.names import DEAD_LETTER_SUFFIX
from pm_telemetry import bind_investigation, parent_context, trace_context
from pm_telemetry.tracing import TRACE_CONTEXT_KEYS

log = logging.getLogger(__name__)

M = TypeVar("M", bound=Message)

HEADER_MESSAGE_ID = "pm-message-id"
HEADER_MESSAGE_TYPE = "pm-message-type"
MESSAGING_SYSTEM = "redis"


@dataclass(frozen=True, slots=True)
class Delivery:
    """Facts about one delivery of a message to a handler."""

    stream: str
    entry_id: str
    message_id: str
    delivery_count: int
    trace_context: Mapping[str, str] = field(default_factory=dict)


Handler = Callable[[M, Delivery], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A serialized message to append to a stream (e.g. an outbox row)."""

    stream: str
    data: bytes
    message_id: str
    message_type: str
    # The trace the message continues, captured when it was written (an outbox row is published
    # later, by a relay that runs in no request's context); None: the current span's.
    trace_context: Mapping[str, str] | None = None


@dataclass(frozen=True, slots=True)
class _Subscription(Generic[M]):
    # The stream's name (spans) and its Redis key in this bus's namespace.
    name: str
    stream: str
    group: str
    consumer: str
    message_type: type[M]
    handler: Handler[M]
    reclaim_idle_ms: int
    max_deliveries: int


class StreamBus:
    """Publishes protobuf messages to streams and runs consumer-group subscribers.

    `namespace` prefixes every stream name (tests and side-by-side deployments use it); it is
    empty in production. Call `subscribe` before `start`.
    """

    def __init__(
        self,
        redis_url: str,
        *,
        namespace: str = "",
        maxlen: int = 1_000_000,
        polling_ms: int = 1000,
        tracer_provider: TracerProvider | None = None,
    ) -> None:
        self._namespace = namespace
        self._tracer = trace.get_tracer(__name__, tracer_provider=tracer_provider)
        self._maxlen = maxlen
        self._polling_ms = polling_ms
        self.broker = RedisBroker(redis_url, logger=log)
        self._admin: Redis = Redis.from_url(redis_url, socket_connect_timeout=2, socket_timeout=5)
        self._subscriptions: list[_Subscription[Message]] = []
        self._started = False

    def name(self, stream: str) -> str:
        """The Redis key of a stream in this bus's namespace."""
        return f"{self._namespace}{stream}" if self._namespace else stream

    async def publish(self, stream: str, message: Message, *, message_id: str) -> str:
        """Append `message` to `stream`; returns the stream entry id."""
        return await self.publish_serialized(
            stream, message.SerializeToString(), message_id=message_id, message_type=message.DESCRIPTOR.full_name
        )

    async def publish_serialized(
        self,
        stream: str,
        data: bytes,
        *,
        message_id: str,
        message_type: str,
        trace_context: Mapping[str, str] | None = None,
    ) -> str:
        """Append an already serialized message; returns the stream entry id. It continues the
        trace `trace_context` names (by default the current span's)."""
        outgoing = Outgoing(stream, data, message_id, message_type, trace_context)
        with self._sending(outgoing) as (span, headers):
            try:
                entry = await self.broker.publish(
                    data,
                    stream=self.name(stream),
                    headers=headers,
                    correlation_id=message_id,
                    maxlen=self._maxlen,
                )
            except (RedisError, OSError) as exc:
                raise Unavailable(f"stream {stream} unreachable: {type(exc).__name__}") from exc
            entry_id = entry.decode() if isinstance(entry, bytes) else str(entry)
            span.set_attribute("pm.stream.entry_id", entry_id)
        return entry_id

    async def publish_batch(self, messages: Sequence[Outgoing]) -> list[str]:
        """Append `messages` in one round trip; returns their entry ids in order.

        Either every message is appended or Unavailable is raised (a message may then have been
        appended anyway; its stable id lets consumers drop it).
        """
        if not messages:
            return []
        with contextlib.ExitStack() as sending:
            spans: list[Span] = []
            try:
                async with self._admin.pipeline(transaction=False) as pipe:
                    for message in messages:
                        span, headers = sending.enter_context(self._sending(message))
                        spans.append(span)
                        await self.broker.publish(
                            message.data,
                            stream=self.name(message.stream),
                            headers=headers,
                            correlation_id=message.message_id,
                            maxlen=self._maxlen,
                            pipeline=pipe,
                        )
                    entries = await pipe.execute()
            except (RedisError, OSError) as exc:
                raise Unavailable(f"streams unreachable: {type(exc).__name__}") from exc
            found = [e.decode() if isinstance(e, bytes) else str(e) for e in entries]
            for span, entry_id in zip(spans, found, strict=True):
                span.set_attribute("pm.stream.entry_id", entry_id)
        return found

    @contextlib.contextmanager
    def _sending(self, message: Outgoing) -> Iterator[tuple[Span, dict[str, str]]]:
        """The PRODUCER span of one message and the headers that carry it; the span ends (failed,
        when an exception leaves the block) as the block does. It is not made the current span, so
        the spans of a batch are siblings."""
        parent = parent_context(message.trace_context) if message.trace_context is not None else None
        span = self._tracer.start_span(
            f"send {message.stream}",
            context=parent,
            kind=SpanKind.PRODUCER,
            attributes={
                "messaging.system": MESSAGING_SYSTEM,
                "messaging.operation.type": "send",
                "messaging.destination.name": message.stream,
                "messaging.message.id": message.message_id,
                "pm.message_type": message.message_type,
            },
        )
        headers = {
            **trace_context(trace.set_span_in_context(span)),
            HEADER_MESSAGE_ID: message.message_id,
            HEADER_MESSAGE_TYPE: message.message_type,
        }
        try:
            yield span, headers
        except Exception as exc:
            span.set_status(StatusCode.ERROR, type(exc).__name__)
            raise
        finally:
            span.end()

    def subscribe(
        self,
        stream: str,
        *,
        group: str,
        consumer: str,
        message_type: type[M],
        handler: Handler[M],
        reclaim_idle_ms: int = 60_000,
        max_deliveries: int = 5,
        concurrency: int = 1,
    ) -> None:
        """Consume `stream` in `group` as `consumer`, plus a reaper for abandoned messages;
        `concurrency` messages are handled at the same time."""
        if self._started:
            raise RuntimeError("subscribe before start")
        sub = _Subscription(
            stream, self.name(stream), group, consumer, message_type, handler, reclaim_idle_ms, max_deliveries
        )
        self._subscriptions.append(sub)  # type: ignore[arg-type]
        on_message = self._wrap(sub)
        self.broker.subscriber(
            stream=StreamSub(sub.stream, group=group, consumer=consumer, polling_interval=self._polling_ms),
            max_workers=concurrency,
        )(on_message)
        self.broker.subscriber(
            stream=StreamSub(
                sub.stream,
                group=group,
                consumer=f"{consumer}-reaper",
                min_idle_time=reclaim_idle_ms,
                polling_interval=self._polling_ms,
            )
        )(on_message)

    def _wrap(self, sub: _Subscription[M]) -> Callable[[bytes, RedisStreamMessage], Awaitable[None]]:
        async def on_message(body: bytes, msg: RedisStreamMessage) -> None:
            headers = {str(k): str(v) for k, v in (msg.headers or {}).items()}
            entry_ids = msg.raw_message.get("message_ids") or [b""]
            entry_id = entry_ids[0].decode() if isinstance(entry_ids[0], bytes) else str(entry_ids[0])
            count = await msg.get_delivery_count()
            delivery = Delivery(
                stream=sub.stream,
                entry_id=entry_id,
                message_id=headers.get(HEADER_MESSAGE_ID, msg.correlation_id),
                delivery_count=count,
                trace_context={k: v for k, v in headers.items() if k in TRACE_CONTEXT_KEYS},
            )
            message: M | None = None
            problem = ""
            if count > sub.max_deliveries:
                problem = f"gave up after {count - 1} deliveries"
            else:
                try:
                    message = sub.message_type.FromString(body)
                except DecodeError:
                    problem = f"not a {sub.message_type.DESCRIPTOR.full_name}"
            # A message written before its producer traced it still names its trace in its body.
            carried = delivery.trace_context or dict(getattr(message, "trace_context", None) or {})
            investigation_id = str(getattr(message, "investigation_id", "") or "")
            attributes: dict[str, str | int] = {
                "messaging.system": MESSAGING_SYSTEM,
                "messaging.operation.type": "process",
                "messaging.destination.name": sub.name,
                "messaging.consumer.group.name": sub.group,
                "messaging.message.id": delivery.message_id,
                "pm.stream.entry_id": entry_id,
                "pm.delivery_count": count,
            }
            if investigation_id:
                attributes["pm.investigation_id"] = investigation_id
            with (
                self._tracer.start_as_current_span(
                    f"process {sub.name}",
                    context=parent_context(carried),
                    kind=SpanKind.CONSUMER,
                    attributes=attributes,
                ) as span,
                bind_investigation(investigation_id) if investigation_id else contextlib.nullcontext(),
            ):
                if message is None:
                    span.set_status(StatusCode.ERROR, problem)
                    await self._dead_letter(sub, body, delivery, problem)
                    return
                await sub.handler(message, delivery)

        return on_message

    async def _dead_letter(self, sub: _Subscription[M], body: bytes, delivery: Delivery, reason: str) -> None:
        log.error(
            "dead-lettering message",
            extra={"stream": sub.stream, "group": sub.group, "message_id": delivery.message_id, "reason": reason},
        )
        await self._admin.xadd(
            sub.stream + DEAD_LETTER_SUFFIX,
            {"data": body, "reason": reason, "message_id": delivery.message_id, "group": sub.group},
            maxlen=self._maxlen,
        )

    async def _ensure_groups(self) -> bool:
        """Create the groups that do not exist; returns whether any had to be created."""
        # Created from the start of the stream (id 0), not "$": messages published before the
        # first consumer ever started must still be delivered to it.
        created = False
        for sub in self._subscriptions:
            try:
                await self._admin.xgroup_create(sub.stream, sub.group, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
            else:
                created = True
                if self._started:
                    log.warning("stream group %s on %s was gone and is created again", sub.group, sub.stream)
        return created

    async def _revive(self) -> None:
        """Start again the subscribers faststream stopped when their group vanished (NOGROUP)."""
        for subscriber in self.broker.subscribers:
            if not subscriber.running:
                await subscriber.start()

    async def connect(self) -> None:
        """Prepare to publish (connections open on first use, so Redis may still be down)."""
        await self.broker.connect()

    async def start(self) -> None:
        """Connect, create consumer groups and start every subscriber."""
        await self._ensure_groups()
        await self.broker.start()
        self._started = True

    async def run(self, retry_max_seconds: float = 10.0, groups_check_seconds: float = 5.0) -> None:
        """Start (retrying while Redis is unreachable), consume until cancelled, then close.

        While consuming, the consumer groups are checked every `groups_check_seconds` and created
        again when they are gone (Redis restarted empty or flushed), so consumers resume by
        themselves; what the lost streams held is re-driven from PostgreSQL by the owners.
        """
        delay = 0.5
        try:
            while True:
                try:
                    await self.start()
                    break
                except (RedisError, OSError) as exc:
                    log.warning("stream bus cannot start yet: %s; retrying in %.1fs", exc, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, retry_max_seconds)
            while True:
                await asyncio.sleep(groups_check_seconds)
                try:
                    if await self._ensure_groups():
                        await self._revive()
                except (RedisError, OSError) as exc:
                    log.warning("stream groups not checked: %s", exc)
        finally:
            await self.close()

    async def close(self) -> None:
        """Stop the subscribers (unacknowledged messages stay pending) and disconnect."""
        await self.broker.stop()
        await self._admin.aclose()

    async def ping(self) -> None:
        """Raise Unavailable unless Redis answers PING."""
        try:
            await self._admin.ping()
        except (RedisError, OSError) as exc:
            raise Unavailable(f"redis unreachable: {type(exc).__name__}: {exc}") from exc

    async def pending(self, stream: str, group: str) -> int:
        """How many messages of `group` on `stream` are delivered but not acknowledged."""
        info = await self._admin.xpending(self.name(stream), group)
        return int(info["pending"])

    async def depth(self, stream: str) -> dict[str, tuple[int, int]]:
        """Per consumer group of `stream`: (messages not yet delivered to the group, delivered but
        not acknowledged), as Redis reports them (XINFO GROUPS); {} when the stream does not exist."""
        try:
            groups = await self._admin.xinfo_groups(self.name(stream))
        except ResponseError:
            return {}
        found: dict[str, tuple[int, int]] = {}
        for group in groups:
            name = group["name"].decode() if isinstance(group["name"], bytes) else str(group["name"])
            found[name] = (int(group.get("lag") or 0), int(group.get("pending") or 0))
        return found

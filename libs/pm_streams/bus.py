"""The stream bus: one faststream RedisBroker plus a Redis client for group administration."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from faststream.redis import RedisBroker, StreamSub
from faststream.redis.annotations import RedisStreamMessage
from google.protobuf.message import DecodeError, Message
from opentelemetry import propagate
from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from pm_errors import Unavailable
from pm_streams.names import DEAD_LETTER_SUFFIX

log = logging.getLogger(__name__)

M = TypeVar("M", bound=Message)

HEADER_MESSAGE_ID = "pm-message-id"
HEADER_MESSAGE_TYPE = "pm-message-type"


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
class _Subscription(Generic[M]):
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

    def __init__(self, redis_url: str, *, namespace: str = "", maxlen: int = 1_000_000, polling_ms: int = 1000) -> None:
        self._namespace = namespace
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

    async def publish_serialized(self, stream: str, data: bytes, *, message_id: str, message_type: str) -> str:
        """Append an already serialized message (e.g. from an outbox row); returns the stream entry id."""
        headers: dict[str, str] = {HEADER_MESSAGE_ID: message_id, HEADER_MESSAGE_TYPE: message_type}
        propagate.inject(headers)
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
        return entry.decode() if isinstance(entry, bytes) else str(entry)

    async def publish_batch(self, messages: Sequence[tuple[str, bytes, str, str]]) -> list[str]:
        """Append (stream, serialized message, message id, message type) tuples in one round trip.

        Returns the entry ids in order. Either every message is appended or Unavailable is raised
        (a message may then have been appended anyway; its stable id lets consumers drop it).
        """
        if not messages:
            return []
        headers_base: dict[str, str] = {}
        propagate.inject(headers_base)
        try:
            async with self._admin.pipeline(transaction=False) as pipe:
                for stream, data, message_id, message_type in messages:
                    headers = {**headers_base, HEADER_MESSAGE_ID: message_id, HEADER_MESSAGE_TYPE: message_type}
                    await self.broker.publish(
                        data,
                        stream=self.name(stream),
                        headers=headers,
                        correlation_id=message_id,
                        maxlen=self._maxlen,
                        pipeline=pipe,
                    )
                entries = await pipe.execute()
        except (RedisError, OSError) as exc:
            raise Unavailable(f"streams unreachable: {type(exc).__name__}") from exc
        return [e.decode() if isinstance(e, bytes) else str(e) for e in entries]

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
        sub = _Subscription(self.name(stream), group, consumer, message_type, handler, reclaim_idle_ms, max_deliveries)
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
                trace_context={k: v for k, v in headers.items() if k in ("traceparent", "tracestate")},
            )
            if count > sub.max_deliveries:
                await self._dead_letter(sub, body, delivery, f"gave up after {count - 1} deliveries")
                return
            try:
                message = sub.message_type.FromString(body)
            except DecodeError:
                await self._dead_letter(sub, body, delivery, f"not a {sub.message_type.DESCRIPTOR.full_name}")
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

"""Rate limits per identity and category, shared by every replica through Redis.

A sliding-window log: each allowed request is a member of a sorted set scored by the Redis
server's clock (so replicas with skewed clocks agree); one Lua script drops entries older than
the window, counts, and adds the new one only when under the limit, atomically. Refused requests
are not counted. Keys expire with their window and are named by a digest of the identity, so no
credential ever appears in Redis.

When Redis cannot be reached the limiter fails open (intake must keep taking work during a Redis
outage), logs one warning and does not try Redis again for `fail_open_seconds`.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import RedisError

from pm_errors import RateLimited

log = logging.getLogger(__name__)

CATEGORY_INVESTIGATION = "investigation"
CATEGORY_QUERY = "query"

_SCRIPT = """
local key = KEYS[1]
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
local count = redis.call('ZCARD', key)
if count < limit then
  redis.call('ZADD', key, now, ARGV[3])
  redis.call('PEXPIRE', key, window)
  return {1, limit - count - 1, 0}
end
local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
return {0, 0, tonumber(oldest[2]) + window - now}
"""


@dataclass(frozen=True, slots=True)
class RateLimit:
    """At most `limit` requests per `window_seconds`; a limit of 0 means no limit."""

    limit: int
    window_seconds: int


@dataclass(frozen=True, slots=True)
class RateDecision:
    """Whether one request may proceed, and what a refused caller is told."""

    allowed: bool
    limit: int
    remaining: int
    retry_after_seconds: int
    window_seconds: int
    category: str
    # True when Redis could not be asked and the request was let through.
    degraded: bool = False


def limits_from_settings(investigation_per_minute: int, query_per_minute: int) -> dict[str, RateLimit]:
    """The two categories of the public API, per minute."""
    return {
        CATEGORY_INVESTIGATION: RateLimit(investigation_per_minute, 60),
        CATEGORY_QUERY: RateLimit(query_per_minute, 60),
    }


def rate_limited_error(decision: RateDecision) -> RateLimited:
    """The predecessor's 429 body, with Retry-After."""
    return RateLimited(
        "Rate limit exceeded",
        retry_after_seconds=decision.retry_after_seconds,
        details={
            "limit": decision.limit,
            "window_seconds": decision.window_seconds,
            "category": decision.category,
            "retry_after_seconds": decision.retry_after_seconds,
        },
    )


class RateLimiter:
    """Counts requests per (identity, category) in Redis."""

    def __init__(
        self,
        redis: Redis,
        limits: Mapping[str, RateLimit],
        *,
        prefix: str = "pm:rl:",
        fail_open_seconds: float = 1.0,
    ) -> None:
        self._redis = redis
        self._limits = dict(limits)
        self._prefix = prefix
        self._fail_open_seconds = fail_open_seconds
        self._script = redis.register_script(_SCRIPT)
        self._skip_until = 0.0

    def key(self, identity: str, category: str) -> str:
        """The Redis key of an identity's bucket (a digest: identities may be credentials)."""
        digest = hashlib.sha256(identity.encode("utf-8", "surrogateescape")).hexdigest()[:32]
        return f"{self._prefix}{category}:{digest}"

    async def hit(self, identity: str, category: str) -> RateDecision:
        """Count one request; allowed=False when the identity is over its limit."""
        try:
            rule = self._limits[category]
        except KeyError:
            raise ValueError(f"unknown rate-limit category {category!r}") from None
        unlimited = RateDecision(True, rule.limit, rule.limit, 0, rule.window_seconds, category)
        if rule.limit <= 0:
            return unlimited
        if time.monotonic() < self._skip_until:
            return RateDecision(True, rule.limit, rule.limit, 0, rule.window_seconds, category, degraded=True)
        try:
            allowed, remaining, retry_ms = await self._script(
                keys=[self.key(identity, category)],
                args=[rule.limit, rule.window_seconds * 1000, uuid.uuid4().hex],
            )
        except (RedisError, OSError) as exc:
            self._skip_until = time.monotonic() + self._fail_open_seconds
            log.warning("rate limits not enforced for %.1fs: redis unreachable (%s)", self._fail_open_seconds, exc)
            return RateDecision(True, rule.limit, rule.limit, 0, rule.window_seconds, category, degraded=True)
        retry = max(1, math.ceil(int(retry_ms) / 1000)) if not allowed else 0
        return RateDecision(bool(allowed), rule.limit, int(remaining), retry, rule.window_seconds, category)

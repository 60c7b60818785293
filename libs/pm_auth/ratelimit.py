"""Rate limits per identity and category, shared by every replica through Redis.

A sliding-window log (exact, not the two-counter approximation): each allowed request is a member
of one sorted set per (identity, category), scored in milliseconds by the Redis server's clock
(`TIME`, so replicas with skewed clocks agree). One Lua script, run with EVALSHA (loaded again
automatically after a Redis restart), drops entries that left the window, counts the rest and adds
the new request only when under the limit, so concurrent callers in any number of processes are
admitted exactly `limit` times. Refused requests are not counted. A refused caller is told how
many whole seconds (at least 1) until the oldest entry leaves the window. Keys expire (PEXPIRE)
one window after the last admitted request and are named by a SHA-256 digest of the identity, so
no credential ever appears in a Redis key.

With `timeout_seconds`, one deadline bounds the whole check (connecting included), and running
out of it counts as Redis being unreachable. When Redis cannot be reached the limiter fails open
(intake must keep taking work during a Redis outage): it lets the request through marked
`degraded`, logs one warning without the identity and does not try Redis again for
`fail_open_seconds`, so a dead Redis does not add a connect timeout to every request.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import math
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import NoScriptError, RedisError

from pm_errors import RateLimited

log = logging.getLogger(__name__)

CATEGORY_INVESTIGATION = "investigation"
CATEGORY_QUERY = "query"

# KEYS[1] the bucket; ARGV: limit, window in ms, a unique member for this request.
# Returns {allowed 0/1, remaining, ms until one slot frees (0 when allowed)}.
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

    def __post_init__(self) -> None:
        if self.limit < 0:
            raise ValueError(f"rate limit must be >= 0, got {self.limit}")
        if self.window_seconds < 1:
            raise ValueError(f"rate-limit window must be >= 1 second, got {self.window_seconds}")


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


@functools.lru_cache(maxsize=4096)
def _identity_digest(identity: str) -> str:
    # surrogatepass: any str (even a lone surrogate) hashes, and distinct strings stay distinct.
    return hashlib.sha256(identity.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def _member() -> str:
    """A member unique to one request within its window (random, no system call per request)."""
    return f"{random.getrandbits(128):032x}"


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
        timeout_seconds: float | None = None,
    ) -> None:
        self._redis = redis
        self._timeout = timeout_seconds
        self._limits = dict(limits)
        self._prefix = prefix
        self._fail_open_seconds = fail_open_seconds
        self._sha = hashlib.sha1(_SCRIPT.encode()).hexdigest()
        self._skip_until = 0.0

    def key(self, identity: str, category: str) -> str:
        """The Redis key of an identity's bucket (a digest: identities may be credentials)."""
        return f"{self._prefix}{category}:{_identity_digest(identity)}"

    async def hit(self, identity: str, category: str) -> RateDecision:
        """Count one request; allowed=False (and not counted) when the identity is over its limit.

        Raises ValueError for a category that has no configured limit.
        """
        try:
            rule = self._limits[category]
        except KeyError:
            raise ValueError(f"unknown rate-limit category {category!r}") from None
        if rule.limit == 0:
            return RateDecision(True, 0, 0, 0, rule.window_seconds, category, degraded=False)
        if time.monotonic() < self._skip_until:
            return self._fail_open(rule, category)
        key = self.key(identity, category)
        limit, window_ms = rule.limit, rule.window_seconds * 1000
        try:
            # One deadline for the whole check (asyncio.timeout is cheap); a client-wide
            # socket_timeout would make redis-py send every command from a task of its own.
            async with asyncio.timeout(self._timeout):
                try:
                    # EVALSHA straight through execute_command: redis-py's Script wrapper adds a
                    # layer of argument juggling to every request for a fallback needed once.
                    reply = await self._redis.execute_command(  # type: ignore[no-untyped-call]
                        "EVALSHA", self._sha, 1, key, limit, window_ms, _member()
                    )
                except NoScriptError:
                    # Redis lost its script cache (a restart): EVAL runs the script and caches it again.
                    reply = await self._redis.execute_command(  # type: ignore[no-untyped-call]
                        "EVAL", _SCRIPT, 1, key, limit, window_ms, _member()
                    )
            allowed, remaining, retry_ms = reply
        # OSError covers ConnectionError and TimeoutError (asyncio's included) raised outside redis-py.
        except (RedisError, OSError) as exc:
            self._skip_until = time.monotonic() + self._fail_open_seconds
            # The identity is never logged: it may be an API key.
            log.warning(
                "rate limits not enforced for %.1fs: redis unreachable (%s: %s)",
                self._fail_open_seconds,
                type(exc).__name__,
                exc,
            )
            return self._fail_open(rule, category)
        if allowed:
            return RateDecision(True, rule.limit, int(remaining), 0, rule.window_seconds, category, degraded=False)
        retry = max(1, math.ceil(int(retry_ms) / 1000))
        return RateDecision(False, rule.limit, 0, retry, rule.window_seconds, category, degraded=False)

    @staticmethod
    def _fail_open(rule: RateLimit, category: str) -> RateDecision:
        return RateDecision(True, rule.limit, rule.limit, 0, rule.window_seconds, category, degraded=True)

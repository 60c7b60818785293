"""The shared rate limiter against the real Redis of the test stack."""

from __future__ import annotations

import asyncio
import time

import pytest
from redis.asyncio import Redis

from pm_auth import RateLimit, RateLimiter, rate_limited_error
from pm_testing import stack_env, unique_name

LIMITS = {"investigation": RateLimit(3, 60), "query": RateLimit(5, 60), "off": RateLimit(0, 60)}


async def _redis() -> Redis:
    return Redis.from_url(stack_env().redis_url)


async def test_concurrent_hits_allow_exactly_the_limit() -> None:
    redis = await _redis()
    try:
        limiter = RateLimiter(redis, LIMITS, prefix=unique_name("rl") + ":")
        decisions = await asyncio.gather(*[limiter.hit("key:abc", "investigation") for _ in range(9)])
        assert sum(d.allowed for d in decisions) == 3
        refused = [d for d in decisions if not d.allowed]
        assert all(1 <= d.retry_after_seconds <= 60 for d in refused)
        assert sorted(d.remaining for d in decisions if d.allowed) == [0, 1, 2]
    finally:
        await redis.aclose()


async def test_replicas_share_one_budget_and_categories_and_identities_are_separate() -> None:
    prefix = unique_name("rl") + ":"
    first, second = await _redis(), await _redis()
    try:
        a, b = RateLimiter(first, LIMITS, prefix=prefix), RateLimiter(second, LIMITS, prefix=prefix)
        assert (await a.hit("key:abc", "investigation")).allowed
        assert (await b.hit("key:abc", "investigation")).allowed
        assert (await a.hit("key:abc", "investigation")).allowed
        assert not (await b.hit("key:abc", "investigation")).allowed
        assert (await b.hit("key:abc", "query")).allowed
        assert (await b.hit("key:other", "investigation")).allowed
    finally:
        await first.aclose()
        await second.aclose()


async def test_refused_hits_are_not_counted_and_the_window_slides() -> None:
    redis = await _redis()
    try:
        limiter = RateLimiter(redis, {"investigation": RateLimit(2, 1)}, prefix=unique_name("rl") + ":")
        assert (await limiter.hit("jwt:alice", "investigation")).allowed
        assert (await limiter.hit("jwt:alice", "investigation")).allowed
        for _ in range(5):
            assert not (await limiter.hit("jwt:alice", "investigation")).allowed
        await asyncio.sleep(1.1)
        # Had the refused hits counted, the window would still be full.
        assert (await limiter.hit("jwt:alice", "investigation")).allowed
    finally:
        await redis.aclose()


async def test_keys_expire_and_never_contain_the_identity() -> None:
    redis = await _redis()
    prefix = unique_name("rl") + ":"
    try:
        limiter = RateLimiter(redis, LIMITS, prefix=prefix)
        await limiter.hit("raw-api-key-value", "query")
        keys = await redis.keys(prefix + "*")
        assert len(keys) == 1
        assert b"raw-api-key-value" not in keys[0]
        assert 0 < await redis.pttl(keys[0]) <= 60_000
    finally:
        await redis.aclose()


async def test_unreachable_redis_fails_open_and_is_not_retried_at_once() -> None:
    redis = Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)
    try:
        limiter = RateLimiter(redis, LIMITS, fail_open_seconds=30)
        first = await limiter.hit("key:abc", "investigation")
        assert first.allowed
        assert first.degraded
        started = time.monotonic()
        second = await limiter.hit("key:abc", "investigation")
        assert second.degraded
        assert time.monotonic() - started < 0.05
    finally:
        await redis.aclose()


async def test_unlimited_and_unknown_categories() -> None:
    redis = Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)
    try:
        limiter = RateLimiter(redis, LIMITS)
        decision = await limiter.hit("key:abc", "off")
        assert decision.allowed
        assert not decision.degraded  # Redis was never asked
        with pytest.raises(ValueError, match="unknown rate-limit category"):
            await limiter.hit("key:abc", "nope")
    finally:
        await redis.aclose()


async def test_the_429_body_is_the_predecessors() -> None:
    redis = await _redis()
    try:
        limiter = RateLimiter(redis, {"investigation": RateLimit(1, 60)}, prefix=unique_name("rl") + ":")
        await limiter.hit("key:abc", "investigation")
        refused = await limiter.hit("key:abc", "investigation")
        err = rate_limited_error(refused)
        assert err.body() == {
            "error": "Rate limit exceeded",
            "limit": 1,
            "window_seconds": 60,
            "category": "investigation",
            "retry_after_seconds": refused.retry_after_seconds,
        }
        assert err.retry_after_seconds == refused.retry_after_seconds
    finally:
        await redis.aclose()

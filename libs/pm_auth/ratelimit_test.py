"""The shared rate limiter against the real Redis of the test stack (no fakes)."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from redis.asyncio import Redis

from pm_auth import (
    CATEGORY_INVESTIGATION,
    CATEGORY_QUERY,
    RateDecision,
    RateLimit,
    RateLimiter,
    limits_from_settings,
    rate_limited_error,
)
from pm_errors import RateLimited, http_status
from pm_testing import stack_env, unique_name

LIMITS = {"investigation": RateLimit(3, 60), "query": RateLimit(5, 60), "off": RateLimit(0, 60)}
UNREACHABLE = "redis://127.0.0.1:1/0"


def _redis() -> Redis:
    return Redis.from_url(stack_env().redis_url)


def _unreachable() -> Redis:
    return Redis.from_url(UNREACHABLE, socket_connect_timeout=0.2)


def _count_commands(redis: Redis, monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Record every command the limiter sends through `redis` (the script goes out as EVALSHA)."""
    sent: list[object] = []
    original: Callable[..., Awaitable[Any]] = redis.execute_command

    async def counting(*args: Any, **options: Any) -> Any:
        sent.append(args[0])
        return await original(*args, **options)

    monkeypatch.setattr(redis, "execute_command", counting)
    return sent


async def test_concurrent_hits_allow_exactly_the_limit() -> None:
    redis = _redis()
    try:
        limiter = RateLimiter(redis, LIMITS, prefix=unique_name("rl") + ":")
        decisions = await asyncio.gather(*[limiter.hit("key:abc", "investigation") for _ in range(9)])
        allowed = [d for d in decisions if d.allowed]
        refused = [d for d in decisions if not d.allowed]
        assert len(allowed) == 3
        assert sorted(d.remaining for d in allowed) == [0, 1, 2]
        assert len(refused) == 6
        assert all(1 <= d.retry_after_seconds <= 60 for d in refused)
        assert all(d.remaining == 0 and not d.degraded for d in refused)
    finally:
        await redis.aclose()


async def test_concurrent_hits_from_two_replicas_allow_exactly_the_limit() -> None:
    prefix = unique_name("rl") + ":"
    first, second = _redis(), _redis()
    try:
        replicas = [RateLimiter(first, LIMITS, prefix=prefix), RateLimiter(second, LIMITS, prefix=prefix)]
        decisions = await asyncio.gather(*[replicas[i % 2].hit("key:abc", "query") for i in range(15)])
        assert sum(d.allowed for d in decisions) == 5
    finally:
        await first.aclose()
        await second.aclose()


async def test_remaining_decrements_and_replicas_share_one_budget() -> None:
    prefix = unique_name("rl") + ":"
    first, second = _redis(), _redis()
    try:
        a, b = RateLimiter(first, LIMITS, prefix=prefix), RateLimiter(second, LIMITS, prefix=prefix)
        seen = [await (a if i % 2 else b).hit("key:abc", "investigation") for i in range(3)]
        assert [(d.allowed, d.remaining) for d in seen] == [(True, 2), (True, 1), (True, 0)]
        refused = await b.hit("key:abc", "investigation")
        assert not refused.allowed
        assert refused == RateDecision(
            allowed=False,
            limit=3,
            remaining=0,
            retry_after_seconds=refused.retry_after_seconds,
            window_seconds=60,
            category="investigation",
            degraded=False,
        )
        assert 59 <= refused.retry_after_seconds <= 60
    finally:
        await first.aclose()
        await second.aclose()


async def test_categories_and_identities_are_independent() -> None:
    redis = _redis()
    try:
        limiter = RateLimiter(redis, LIMITS, prefix=unique_name("rl") + ":")
        for _ in range(3):
            assert (await limiter.hit("key:abc", "investigation")).allowed
        assert not (await limiter.hit("key:abc", "investigation")).allowed
        query = await limiter.hit("key:abc", "query")
        assert (query.allowed, query.remaining) == (True, 4)
        other = await limiter.hit("key:other", "investigation")
        assert (other.allowed, other.remaining) == (True, 2)
    finally:
        await redis.aclose()


async def test_refused_hits_are_not_counted_and_the_window_slides() -> None:
    redis = _redis()
    try:
        limiter = RateLimiter(redis, {"investigation": RateLimit(2, 1)}, prefix=unique_name("rl") + ":")
        assert (await limiter.hit("jwt:alice", "investigation")).allowed
        assert (await limiter.hit("jwt:alice", "investigation")).allowed
        for _ in range(5):
            refused = await limiter.hit("jwt:alice", "investigation")
            assert not refused.allowed
            assert refused.retry_after_seconds == 1  # whole seconds, rounded up, never 0
        await asyncio.sleep(1.1)
        # Had the refused hits been counted, the window would still be full.
        again = await limiter.hit("jwt:alice", "investigation")
        assert (again.allowed, again.remaining) == (True, 1)
    finally:
        await redis.aclose()


async def test_keys_expire_and_never_contain_the_identity() -> None:
    redis = _redis()
    prefix = unique_name("rl") + ":"
    identities = ["raw-api-key-value", "key with spaces:and\ncontrol\x00chars", "ключ-🔑", "lone\ud800surrogate"]
    try:
        limiter = RateLimiter(redis, LIMITS, prefix=prefix)
        for identity in identities:
            assert (await limiter.hit(identity, "query")).allowed
        keys = sorted(await redis.keys(prefix + "*"))
        assert len(keys) == len(identities)
        for key in keys:
            assert 0 < await redis.pttl(key) <= 60_000
            for identity in identities:
                assert identity.encode("utf-8", "surrogatepass") not in key
        digest = hashlib.sha256(b"raw-api-key-value").hexdigest()[:32]
        assert f"{prefix}query:{digest}".encode() in keys
    finally:
        await redis.aclose()


async def test_unreachable_redis_fails_open_then_is_skipped_then_retried(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    redis = _unreachable()
    try:
        sent = _count_commands(redis, monkeypatch)
        limiter = RateLimiter(redis, LIMITS, fail_open_seconds=0.5)
        with caplog.at_level(logging.WARNING, logger="pm_auth.ratelimit"):
            first = await limiter.hit("secret-api-key", "investigation")
            started = time.monotonic()
            second = await limiter.hit("secret-api-key", "investigation")
            second_took = time.monotonic() - started
        expected = RateDecision(True, 3, 3, 0, 60, "investigation", degraded=True)
        assert first == expected
        assert second == expected
        assert len(sent) == 1  # the second call did not try Redis at all
        assert second_took < 0.05
        warnings = [r for r in caplog.records if r.name == "pm_auth.ratelimit"]
        assert len(warnings) == 1
        assert warnings[0].levelno == logging.WARNING
        assert "secret-api-key" not in warnings[0].getMessage()

        await asyncio.sleep(0.6)
        third = await limiter.hit("secret-api-key", "investigation")
        assert third == expected
        assert len(sent) == 2  # after fail_open_seconds Redis is tried again
    finally:
        await redis.aclose()


async def test_limit_zero_is_unlimited_without_asking_redis(monkeypatch: pytest.MonkeyPatch) -> None:
    redis = _unreachable()
    try:
        sent = _count_commands(redis, monkeypatch)
        limiter = RateLimiter(redis, LIMITS)
        decisions = [await limiter.hit("key:abc", "off") for _ in range(50)]
        assert all(d.allowed and not d.degraded for d in decisions)
        assert sent == []
    finally:
        await redis.aclose()


async def test_unknown_category_is_a_value_error() -> None:
    redis = _unreachable()
    try:
        limiter = RateLimiter(redis, LIMITS)
        with pytest.raises(ValueError, match="unknown rate-limit category 'nope'"):
            await limiter.hit("key:abc", "nope")
    finally:
        await redis.aclose()


def test_rate_limit_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match=">= 0"):
        RateLimit(-1, 60)
    with pytest.raises(ValueError, match=">= 1 second"):
        RateLimit(10, 0)


def test_limits_from_settings() -> None:
    assert (CATEGORY_INVESTIGATION, CATEGORY_QUERY) == ("investigation", "query")
    assert limits_from_settings(10, 100) == {
        "investigation": RateLimit(10, 60),
        "query": RateLimit(100, 60),
    }


async def test_the_429_body_is_the_predecessors() -> None:
    redis = _redis()
    try:
        limiter = RateLimiter(redis, {"investigation": RateLimit(1, 60)}, prefix=unique_name("rl") + ":")
        assert (await limiter.hit("key:abc", "investigation")).allowed
        refused = await limiter.hit("key:abc", "investigation")
        assert not refused.allowed
        err = rate_limited_error(refused)
        assert isinstance(err, RateLimited)
        assert http_status(err.code) == 429
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


def test_the_429_of_a_given_decision() -> None:
    err = rate_limited_error(RateDecision(False, 10, 0, 17, 60, "query", degraded=False))
    assert err.message == "Rate limit exceeded"
    assert err.body() == {
        "error": "Rate limit exceeded",
        "limit": 10,
        "window_seconds": 60,
        "category": "query",
        "retry_after_seconds": 17,
    }
    assert err.retry_after_seconds == 17

"""The public API's access control, assembled the same way by every service that serves it."""

from __future__ import annotations

from contextlib import AsyncExitStack
from dataclasses import dataclass

from redis.asyncio import Redis

from pm_auth.provider import AuthProvider, CachedSecrets
from pm_auth.ratelimit import RateLimiter, limits_from_settings
from pm_secrets import SecretSource
from pm_settings import ApiAuthSettings


@dataclass(frozen=True, slots=True)
class ApiAccess:
    """Secrets re-read every SECRETS_REFRESH_SECONDS, the authenticator and the shared rate limiter."""

    secrets: CachedSecrets
    auth: AuthProvider
    limiter: RateLimiter


async def open_api_access(
    stack: AsyncExitStack, settings: ApiAuthSettings, source: SecretSource, redis_url: str, namespace: str
) -> ApiAccess:
    """Build the API's access control; its Redis client closes with `stack`."""
    secrets = CachedSecrets(source, settings.secrets_refresh_seconds)
    auth = AuthProvider(
        secrets,
        jwt_algorithm=settings.jwt_algorithm,
        jwt_issuer=settings.jwt_issuer,
        jwt_audience=settings.jwt_audience,
    )
    # Rate limiting must never hold a request up for long: short timeouts, fail open. The limiter
    # bounds each check as a whole rather than through a per-socket-operation timeout, which
    # redis-py implements with a task per command.
    redis = Redis.from_url(redis_url, socket_connect_timeout=0.25)
    stack.push_async_callback(redis.aclose)
    limiter = RateLimiter(
        redis,
        limits_from_settings(settings.rate_limit_investigation_per_minute, settings.rate_limit_query_per_minute),
        prefix=f"{namespace}pm:rl:",
        timeout_seconds=0.5,
    )
    return ApiAccess(secrets, auth, limiter)

"""Who is calling, and how often: API keys and JWTs, rate limits; shared by ingest and the
orchestrator's API.

`AuthProvider.authenticate(headers)` returns the caller's `Identity` or raises `Unauthenticated`
with the predecessor's messages. API keys (secret `api-keys`) are kept only as SHA-256 digests
and compared in constant time; JWTs (secret `jwt-secret`) are verified with a pinned algorithm
(HS256 by default), `exp` and `nbf` enforced, `iss` and `aud` when configured; `alg: none` and
algorithm switching are rejected. `RateLimiter` counts requests per identity and category in
Redis, so every replica shares one budget.
"""

from pm_auth.access import ApiAccess, open_api_access
from pm_auth.authn import ApiKeyVerifier, Authenticator, Identity, JwtVerifier
from pm_auth.provider import SECRET_API_KEYS, SECRET_JWT, AuthProvider, CachedSecrets
from pm_auth.ratelimit import (
    CATEGORY_INVESTIGATION,
    CATEGORY_QUERY,
    RateDecision,
    RateLimit,
    RateLimiter,
    limits_from_settings,
    rate_limited_error,
)

__all__ = [
    "CATEGORY_INVESTIGATION",
    "CATEGORY_QUERY",
    "SECRET_API_KEYS",
    "SECRET_JWT",
    "ApiAccess",
    "ApiKeyVerifier",
    "AuthProvider",
    "Authenticator",
    "CachedSecrets",
    "Identity",
    "JwtVerifier",
    "RateDecision",
    "RateLimit",
    "RateLimiter",
    "limits_from_settings",
    "open_api_access",
    "rate_limited_error",
]

"""Credentials read from the secret source (Vault, then the environment), refreshed periodically."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping

from pm_auth.authn import ApiKeyVerifier, Authenticator, Identity, JwtVerifier
from pm_secrets import SecretSource

SECRET_API_KEYS = "api-keys"
SECRET_JWT = "jwt-secret"


class CachedSecrets:
    """Secret values by name, each reused for `refresh_seconds` (so rotation needs no restart)."""

    def __init__(self, source: SecretSource, refresh_seconds: float = 30.0) -> None:
        self._source = source
        self._refresh = refresh_seconds
        self._values: dict[str, tuple[float, str | None]] = {}
        self._lock = asyncio.Lock()

    async def get(self, name: str) -> str | None:
        """The secret's value, or None when no source holds it. Raises Unavailable if Vault is down."""
        now = time.monotonic()
        hit = self._values.get(name)
        if hit is not None and hit[0] > now:
            return hit[1]
        async with self._lock:
            hit = self._values.get(name)
            if hit is not None and hit[0] > now:
                return hit[1]
            secret = await self._source.get(name)
            value = secret.get_secret_value() if secret is not None else None
            self._values[name] = (now + self._refresh, value)
            return value


class AuthProvider:
    """Authenticates requests with API keys (`api-keys`) and JWTs (`jwt-secret`) from the secret source."""

    def __init__(
        self,
        secrets: CachedSecrets,
        *,
        jwt_algorithm: str = "HS256",
        jwt_issuer: str | None = None,
        jwt_audience: str | None = None,
    ) -> None:
        self._secrets = secrets
        self._algorithm = jwt_algorithm
        self._issuer = jwt_issuer
        self._audience = jwt_audience
        self._built: tuple[tuple[str | None, str | None], Authenticator] | None = None

    async def _authenticator(self) -> Authenticator:
        keys = await self._secrets.get(SECRET_API_KEYS)
        jwt_secret = await self._secrets.get(SECRET_JWT)
        if self._built is not None and self._built[0] == (keys, jwt_secret):
            return self._built[1]
        verifier = (
            JwtVerifier(jwt_secret, algorithm=self._algorithm, issuer=self._issuer, audience=self._audience)
            if jwt_secret
            else None
        )
        authenticator = Authenticator(ApiKeyVerifier.from_list(keys or ""), verifier)
        self._built = ((keys, jwt_secret), authenticator)
        return authenticator

    async def authenticate(self, headers: Mapping[str, str]) -> Identity:
        """The caller's identity from lower-cased request headers; raises Unauthenticated."""
        return (await self._authenticator()).authenticate(headers)

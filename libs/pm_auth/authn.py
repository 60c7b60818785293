"""API-key and JWT verification."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

import jwt

from pm_errors import Unauthenticated

AuthMethod = Literal["api_key", "jwt"]

MSG_INVALID_KEY = "Invalid API key"
MSG_INVALID_JWT = "Invalid or expired JWT"
MSG_JWT_NOT_CONFIGURED = "JWT authentication not configured"
MSG_REQUIRED = "Authentication required. Provide x-api-key header or Bearer token."


@dataclass(frozen=True, slots=True)
class Identity:
    """An authenticated caller. `subject` is safe to log and store: it never contains a secret."""

    subject: str
    method: AuthMethod


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode()).digest()


class ApiKeyVerifier:
    """Holds API keys as SHA-256 digests and checks a presented key against all of them."""

    def __init__(self, keys: Iterable[str]) -> None:
        self._digests = tuple({_digest(k.strip()) for k in keys if k.strip()})

    @classmethod
    def from_list(cls, comma_separated: str) -> ApiKeyVerifier:
        """From API_KEYS' format: `key1,key2,key3`."""
        return cls(comma_separated.split(","))

    def __len__(self) -> int:
        return len(self._digests)

    def verify(self, presented: str) -> Identity | None:
        """The identity for a valid key, None otherwise; the time taken does not depend on which key matched."""
        candidate = _digest(presented)
        matched: bytes | None = None
        for digest in self._digests:
            if hmac.compare_digest(candidate, digest):
                matched = digest
        if matched is None:
            return None
        # A digest prefix names the key in logs and audit rows without revealing any of it.
        return Identity(subject=f"key:{matched.hex()[:12]}", method="api_key")


class JwtVerifier:
    """Verifies HMAC-signed JWTs with one pinned algorithm."""

    def __init__(
        self,
        secret: str,
        *,
        algorithm: str = "HS256",
        issuer: str | None = None,
        audience: str | None = None,
        leeway_seconds: float = 30.0,
    ) -> None:
        if algorithm not in ("HS256", "HS384", "HS512"):
            raise ValueError(f"unsupported JWT algorithm {algorithm!r}; use HS256, HS384 or HS512")
        if not secret:
            raise ValueError("a JWT secret is required")
        self._secret = secret
        self._algorithm = algorithm
        self._issuer = issuer
        self._audience = audience
        self._leeway = leeway_seconds

    def verify(self, token: str) -> Identity:
        """The token's subject, or Unauthenticated for anything not exactly as configured."""
        try:
            header = jwt.get_unverified_header(token)
            if header.get("alg") != self._algorithm:
                raise Unauthenticated(MSG_INVALID_JWT)
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=[self._algorithm],
                issuer=self._issuer,
                audience=self._audience,
                leeway=self._leeway,
                options={
                    "require": ["exp"],
                    "verify_aud": self._audience is not None,
                    "verify_iss": self._issuer is not None,
                },
            )
        except jwt.PyJWTError as exc:
            raise Unauthenticated(MSG_INVALID_JWT) from exc
        subject = claims.get("sub")
        return Identity(
            subject=f"jwt:{subject}" if isinstance(subject, str) and subject else "jwt:unknown", method="jwt"
        )


class Authenticator:
    """Checks `x-api-key` first, then `Authorization: Bearer <JWT>`."""

    def __init__(self, api_keys: ApiKeyVerifier, jwt_verifier: JwtVerifier | None) -> None:
        self._api_keys = api_keys
        self._jwt = jwt_verifier

    def authenticate(self, headers: Mapping[str, str]) -> Identity:
        """The caller's identity from lower-cased request headers; raises Unauthenticated."""
        key = headers.get("x-api-key")
        if key is not None:
            # A present but wrong key is refused outright; there is no fallback to a JWT.
            identity = self._api_keys.verify(key)
            if identity is None:
                raise Unauthenticated(MSG_INVALID_KEY)
            return identity
        authorization = headers.get("authorization", "")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            if self._jwt is None:
                raise Unauthenticated(MSG_JWT_NOT_CONFIGURED)
            return self._jwt.verify(token.strip())
        raise Unauthenticated(MSG_REQUIRED)

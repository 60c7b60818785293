"""Who is calling: API keys and JWTs, shared by ingest and the orchestrator's API.

`Authenticator.authenticate(headers)` returns the caller's `Identity` or raises
`Unauthenticated` with the predecessor's messages. API keys are kept only as SHA-256 digests and
compared in constant time; JWTs are verified with a pinned algorithm (HS256 by default), `exp`
and `nbf` enforced, `iss` and `aud` when configured; `alg: none` and algorithm switching are
rejected.
"""

from pm_auth.authn import ApiKeyVerifier, Authenticator, Identity, JwtVerifier

__all__ = ["ApiKeyVerifier", "Authenticator", "Identity", "JwtVerifier"]

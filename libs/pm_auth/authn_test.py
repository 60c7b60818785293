"""Tests of API-key and JWT authentication."""

from __future__ import annotations

import base64
import json
import time

import jwt
import pytest

from pm_auth import ApiKeyVerifier, Authenticator, JwtVerifier
from pm_errors import Unauthenticated

SECRET = "a-secret-for-tests-only-long-enough-for-hs512-0123456789abcdef0123"
KEYS = ApiKeyVerifier.from_list(" key-one-123456 , key-two-abcdef ,,")


def _token(claims: dict[str, object], *, secret: str = SECRET, algorithm: str = "HS256") -> str:
    return jwt.encode(claims, secret, algorithm=algorithm)


def _auth(**jwt_options: str) -> Authenticator:
    return Authenticator(KEYS, JwtVerifier(SECRET, **jwt_options))  # type: ignore[arg-type]


def _soon() -> int:
    return int(time.time()) + 300


def test_configured_keys_are_trimmed_and_empty_ones_dropped() -> None:
    assert len(KEYS) == 2


def test_valid_api_key_gives_an_identity_that_reveals_nothing_of_the_key() -> None:
    identity = _auth().authenticate({"x-api-key": "key-two-abcdef"})
    assert identity.method == "api_key"
    assert identity.subject.startswith("key:")
    assert "abcdef" not in identity.subject
    assert "key-two" not in identity.subject
    assert identity != _auth().authenticate({"x-api-key": "key-one-123456"})


def test_wrong_api_key_is_refused_without_falling_back_to_a_jwt() -> None:
    headers = {"x-api-key": "key-two-abcdeX", "authorization": f"Bearer {_token({'sub': 'a', 'exp': _soon()})}"}
    with pytest.raises(Unauthenticated, match="^Invalid API key$"):
        _auth().authenticate(headers)


def test_valid_jwt_gives_its_subject() -> None:
    identity = _auth().authenticate({"authorization": f"Bearer {_token({'sub': 'alice', 'exp': _soon()})}"})
    assert identity.subject == "jwt:alice"
    assert identity.method == "jwt"


@pytest.mark.parametrize(
    "claims",
    [
        {"sub": "a", "exp": int(time.time()) - 120},
        {"sub": "a", "exp": _soon(), "nbf": int(time.time()) + 120},
        {"sub": "a"},
    ],
    ids=["expired", "not-yet-valid", "no-exp"],
)
def test_jwt_time_claims_are_enforced(claims: dict[str, object]) -> None:
    with pytest.raises(Unauthenticated, match="^Invalid or expired JWT$"):
        _auth().authenticate({"authorization": f"Bearer {_token(claims)}"})


def test_jwt_signed_with_another_secret_is_refused() -> None:
    other = "another-secret-for-tests-long-enough-for-any-hmac-0123456789abcd"
    token = _token({"sub": "a", "exp": _soon()}, secret=other)
    with pytest.raises(Unauthenticated):
        _auth().authenticate({"authorization": f"Bearer {token}"})


def test_alg_none_is_refused() -> None:
    header = base64.urlsafe_b64encode(json.dumps({"alg": "none", "typ": "JWT"}).encode()).rstrip(b"=").decode()
    body = base64.urlsafe_b64encode(json.dumps({"sub": "a", "exp": _soon()}).encode()).rstrip(b"=").decode()
    with pytest.raises(Unauthenticated):
        _auth().authenticate({"authorization": f"Bearer {header}.{body}."})


def test_switching_to_another_algorithm_is_refused() -> None:
    token = _token({"sub": "a", "exp": _soon()}, algorithm="HS512")
    with pytest.raises(Unauthenticated):
        _auth().authenticate({"authorization": f"Bearer {token}"})


def test_issuer_and_audience_are_checked_when_configured() -> None:
    good = _token({"sub": "a", "exp": _soon(), "iss": "idp", "aud": "pm"})
    assert _auth(issuer="idp", audience="pm").authenticate({"authorization": f"Bearer {good}"}).subject == "jwt:a"
    for claims in ({"iss": "evil", "aud": "pm"}, {"iss": "idp", "aud": "other"}, {}):
        token = _token({"sub": "a", "exp": _soon(), **claims})
        with pytest.raises(Unauthenticated):
            _auth(issuer="idp", audience="pm").authenticate({"authorization": f"Bearer {token}"})


def test_missing_credentials_and_unconfigured_jwt_have_clear_messages() -> None:
    with pytest.raises(Unauthenticated, match="^Authentication required"):
        _auth().authenticate({})
    with pytest.raises(Unauthenticated, match="^Authentication required"):
        _auth().authenticate({"authorization": "Basic dXNlcjpwYXNz"})
    with pytest.raises(Unauthenticated, match="^JWT authentication not configured$"):
        Authenticator(KEYS, None).authenticate({"authorization": "Bearer abc.def.ghi"})


def test_unsupported_algorithm_is_a_configuration_error() -> None:
    with pytest.raises(ValueError, match="unsupported JWT algorithm"):
        JwtVerifier(SECRET, algorithm="none")

"""Webhook signature verification over the exact raw body bytes received.

Every scheme is an HMAC-SHA256 keyed with the source's shared secret, except the bearer token:

- Jira (``X-Hub-Signature``): signs the body; hex digest, optionally prefixed ``sha256=``.
- GitHub-style deploy hooks (``X-Hub-Signature-256``): signs the body; ``sha256=<hex>``, prefix required.
- Slack (``X-Slack-Signature`` with ``X-Slack-Request-Timestamp``): signs ``v0:<timestamp>:<body>``;
  ``v0=<hex>``.
- PagerDuty V3 (``X-PagerDuty-Signature``): signs the body; a comma-separated list of ``v1=<hex>``,
  one per active secret while secrets rotate, any of which may match. Other versions are ignored.
- Grafana alerting contact point: signs ``<timestamp>:<body>`` when the timestamp header is sent and
  the body alone otherwise; plain hex.
- Grafana with a static token instead: ``Authorization: Bearer <token>``; nothing is signed.

Timestamps are unix seconds and must lie within the tolerance of ``now``, in the past or the future;
they are checked before the signature. Digests are compared in constant time as raw bytes, so the
case of the hex digits does not matter.

Every failure raises ``SignatureRejected``, whatever the header values (missing, empty, huge,
non-ASCII, wrong length); its reason is a stable code and its message is safe to return to the
client. Neither ever carries a secret or a computed signature.
"""

from __future__ import annotations

import hashlib
import hmac

REASON_MISSING_HEADER = "missing_header"
REASON_MALFORMED = "malformed"
REASON_MISMATCH = "mismatch"
REASON_STALE = "stale_timestamp"

MAX_HEADER_LENGTH = 8192
"""Longer header values are rejected as malformed before any parsing."""

_DIGEST_HEX_LENGTH = 2 * hashlib.sha256().digest_size
_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")
_MAX_TIMESTAMP_DIGITS = 12


class SignatureRejected(Exception):
    """A webhook request whose signature or token does not verify.

    ``reason`` is a short stable code used as a metric label and in logs; ``message`` is safe to
    show a client. ``str()`` of the exception is the message.
    """

    reason: str
    message: str

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def hmac_sha256_hex(secret: bytes, message: bytes) -> str:
    """The lowercase hex HMAC-SHA256 of ``message`` keyed with ``secret``."""
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def verify_hex_signature(
    secret: bytes,
    body: bytes,
    header_value: str | None,
    *,
    prefix: str = "sha256=",
    prefix_required: bool = False,
) -> None:
    """Verify a hex HMAC-SHA256 of the body (Jira, GitHub-style deploy hooks).

    The ``prefix`` is matched case-insensitively and is optional unless ``prefix_required``.
    """
    value = _required(header_value)
    if value[: len(prefix)].lower() == prefix.lower():
        value = value[len(prefix) :]
    elif prefix_required:
        raise _malformed()
    _check(_hmac(secret, body), [_digest(value)])


def verify_slack(
    secret: bytes,
    body: bytes,
    timestamp_header: str | None,
    signature_header: str | None,
    *,
    now: float,
    tolerance_seconds: int = 300,
) -> None:
    """Verify Slack's v0 signature of ``v0:<timestamp>:<body>``, after checking the timestamp is recent."""
    timestamp = _required(timestamp_header)
    signature = _required(signature_header)
    _check_recent(timestamp, now, tolerance_seconds)
    if signature[:3].lower() != "v0=":
        raise _malformed()
    _check(_hmac(secret, b"v0:" + timestamp.encode("ascii") + b":" + body), [_digest(signature[3:])])


def verify_pagerduty(secret: bytes, body: bytes, header_value: str | None) -> None:
    """Verify PagerDuty V3 signatures: any ``v1=<hex>`` entry of the comma-separated list may match.

    Blank entries and other versions are ignored; a header without a well-formed ``v1`` entry is
    malformed. Every ``v1`` entry is compared, each in constant time.
    """
    value = _required(header_value)
    entries = (item.strip() for item in value.split(","))
    v1_hex = [entry[3:] for entry in entries if entry[:3].lower() == "v1="]
    candidates = [bytes.fromhex(text) for text in v1_hex if _is_digest_hex(text)]
    if not candidates:
        raise _malformed()
    _check(_hmac(secret, body), candidates)


def verify_grafana_hmac(
    secret: bytes,
    body: bytes,
    signature_header: str | None,
    timestamp_header: str | None,
    *,
    now: float,
    tolerance_seconds: int = 300,
) -> None:
    """Verify a Grafana webhook contact point's hex HMAC-SHA256.

    With a (non-blank) timestamp header the signed message is ``<timestamp>:<body>`` and the
    timestamp must be recent; without one it is the body alone.
    """
    signature = _required(signature_header)
    timestamp = _optional(timestamp_header)
    message = body
    if timestamp is not None:
        _check_recent(timestamp, now, tolerance_seconds)
        message = timestamp.encode("ascii") + b":" + body
    _check(_hmac(secret, message), [_digest(signature)])


def verify_bearer_token(expected: str, authorization_header: str | None) -> None:
    """Verify ``Authorization: Bearer <token>`` (scheme case-insensitive) against the expected token.

    The SHA-256 digests of the two tokens are compared, so the time taken reveals nothing about the
    token's length or content.
    """
    value = _required(authorization_header, missing_message="Missing authorization header")
    parts = value.split(None, 1)
    if len(parts) != 2 or parts[0].lower() != "bearer":
        raise SignatureRejected(REASON_MALFORMED, "Malformed authorization header")
    presented = hashlib.sha256(parts[1].encode("utf-8", "surrogatepass")).digest()
    wanted = hashlib.sha256(expected.encode("utf-8", "surrogatepass")).digest()
    if not hmac.compare_digest(presented, wanted):
        raise SignatureRejected(REASON_MISMATCH, "Invalid bearer token")


def _malformed() -> SignatureRejected:
    return SignatureRejected(REASON_MALFORMED, "Malformed signature")


def _required(value: object, *, missing_message: str = "Missing signature header") -> str:
    """The stripped header value; missing when absent or blank, malformed when not a sane string."""
    if value is None:
        raise SignatureRejected(REASON_MISSING_HEADER, missing_message)
    if not isinstance(value, str) or len(value) > MAX_HEADER_LENGTH:
        raise _malformed()
    stripped = value.strip()
    if not stripped:
        raise SignatureRejected(REASON_MISSING_HEADER, missing_message)
    return stripped


def _optional(value: object) -> str | None:
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    return _required(value)


def _is_digest_hex(text: str) -> bool:
    return len(text) == _DIGEST_HEX_LENGTH and _HEX_DIGITS.issuperset(text)


def _digest(text: str) -> bytes:
    """The raw bytes of a presented hex SHA-256 digest (either case)."""
    if not _is_digest_hex(text):
        raise _malformed()
    return bytes.fromhex(text)


def _hmac(secret: bytes, message: bytes) -> bytes:
    return hmac.new(secret, message, hashlib.sha256).digest()


def _check(expected: bytes, candidates: list[bytes]) -> None:
    """Compare the expected digest with every candidate in constant time; mismatch unless one equals it."""
    matched = False
    for candidate in candidates:
        matched |= hmac.compare_digest(expected, candidate)
    if not matched:
        raise SignatureRejected(REASON_MISMATCH, "Invalid webhook signature")


def _check_recent(timestamp: str, now: float, tolerance_seconds: int) -> None:
    """A unix-seconds timestamp made of ASCII digits, within the tolerance of ``now`` either way."""
    if not (timestamp.isascii() and timestamp.isdigit() and len(timestamp) <= _MAX_TIMESTAMP_DIGITS):
        raise SignatureRejected(REASON_MALFORMED, "Malformed request timestamp")
    if not abs(now - int(timestamp)) <= tolerance_seconds:
        raise SignatureRejected(REASON_STALE, "Request timestamp outside the allowed window")

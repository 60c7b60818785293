"""Webhook signatures: valid ones pass, everything else is a SignatureRejected with a specific reason."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from typing import NamedTuple, cast

import pytest

from pm_ingest.signatures import (
    MAX_HEADER_LENGTH,
    REASON_MALFORMED,
    REASON_MISMATCH,
    REASON_MISSING_HEADER,
    REASON_STALE,
    SignatureRejected,
    hmac_sha256_hex,
    verify_bearer_token,
    verify_grafana_hmac,
    verify_hex_signature,
    verify_pagerduty,
    verify_slack,
)

SECRET = b"whsec-0123-very-secret"
OTHER_SECRET = b"whsec-9999-rotated-out"
TOKEN = "grafana-token-abcdef"
BODY = b'{"webhookEvent":"jira:issue_created","issue":{"key":"PAY-1"}}'
NOW = 1_700_000_000.0
TS = str(int(NOW))


def _hex(message: bytes, secret: bytes = SECRET) -> str:
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def _one_byte_changed(body: bytes) -> bytes:
    return body[:-1] + bytes([body[-1] ^ 0x01])


def _assert_no_leak(err: SignatureRejected, *computed: str) -> None:
    texts = [str(err), repr(err), err.message, err.reason, *map(str, err.args)]
    for text in texts:
        assert SECRET.decode() not in text
        assert TOKEN not in text
        for digest in computed:
            assert digest.lower() not in text.lower()


def _rejected(call: Callable[[], None]) -> SignatureRejected:
    with pytest.raises(SignatureRejected) as info:
        call()
    return info.value


def _reason(call: Callable[[], None]) -> str:
    err = _rejected(call)
    _assert_no_leak(err)
    return err.reason


class Scheme(NamedTuple):
    """How one HMAC scheme wraps a hex digest into its header, and what it signs."""

    wrap: Callable[[str], str]
    signed: Callable[[bytes], bytes]
    verify: Callable[[bytes, bytes, str | None], None]

    def header(self, body: bytes = BODY, secret: bytes = SECRET) -> str:
        return self.wrap(_hex(self.signed(body), secret))


SCHEMES = {
    "jira-bare": Scheme(lambda h: h, lambda b: b, lambda s, b, h: verify_hex_signature(s, b, h)),
    "jira-prefixed": Scheme(lambda h: "sha256=" + h, lambda b: b, lambda s, b, h: verify_hex_signature(s, b, h)),
    "deploy": Scheme(
        lambda h: "sha256=" + h,
        lambda b: b,
        lambda s, b, h: verify_hex_signature(s, b, h, prefix_required=True),
    ),
    "slack": Scheme(
        lambda h: "v0=" + h,
        lambda b: b"v0:" + TS.encode() + b":" + b,
        lambda s, b, h: verify_slack(s, b, TS, h, now=NOW),
    ),
    "pagerduty": Scheme(lambda h: "v1=" + h, lambda b: b, lambda s, b, h: verify_pagerduty(s, b, h)),
    "grafana": Scheme(lambda h: h, lambda b: b, lambda s, b, h: verify_grafana_hmac(s, b, h, None, now=NOW)),
    "grafana-timestamped": Scheme(
        lambda h: h,
        lambda b: TS.encode() + b":" + b,
        lambda s, b, h: verify_grafana_hmac(s, b, h, TS, now=NOW),
    ),
}
each_scheme = pytest.mark.parametrize("scheme", list(SCHEMES.values()), ids=list(SCHEMES))

MALFORMED_HEX = {
    "not-hex": "zz" * 32,
    "odd-length": "a" * 63,
    "too-short": "ab" * 16,
    "too-long": "ab" * 33,
    "non-ascii": "é" * 64,
    "fullwidth-digits": "\uff10" * 64,
    "lone-surrogate": "\ud800" * 64,
    "inner-space": "ab" * 16 + " " + "ab" * 16,
    "nul": "\x00" * 64,
    "huge": "a" * (MAX_HEADER_LENGTH + 1),
}

GARBAGE_HEADERS = {
    "bare-prefix": "sha256=",
    "bare-slack-version": "v0=",
    "bare-pagerduty-version": "v1=",
    "commas": ",,,",
    "equals": "=",
    "bearer-word": "Bearer",
    "lone-surrogate": "\ud800",
    "control-chars": "\x00\x01\x02",
    "non-ascii": "€" * 100,
    "megabyte": "x" * 1_000_000,
    "bytes": cast(str, b"sha256=" + _hex(BODY).encode()),
    "int": cast(str, 12345),
}
garbage_header = pytest.mark.parametrize("header", list(GARBAGE_HEADERS.values()), ids=list(GARBAGE_HEADERS))


def test_hmac_sha256_hex_matches_rfc_4231() -> None:
    expected = "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    assert hmac_sha256_hex(b"Jefe", b"what do ya want for nothing?") == expected


def test_rejection_carries_reason_and_client_message() -> None:
    err = SignatureRejected(REASON_MISMATCH, "Invalid webhook signature")
    assert (err.reason, err.message, str(err)) == (REASON_MISMATCH, "Invalid webhook signature", err.message)


@each_scheme
def test_valid_signature_passes(scheme: Scheme) -> None:
    scheme.verify(SECRET, BODY, scheme.header())


@each_scheme
def test_uppercase_hex_passes(scheme: Scheme) -> None:
    scheme.verify(SECRET, BODY, scheme.wrap(_hex(scheme.signed(BODY)).upper()))


@each_scheme
def test_body_changed_by_one_byte_is_a_mismatch(scheme: Scheme) -> None:
    header = scheme.header()
    assert _reason(lambda: scheme.verify(SECRET, _one_byte_changed(BODY), header)) == REASON_MISMATCH


@each_scheme
def test_wrong_secret_is_a_mismatch(scheme: Scheme) -> None:
    header = scheme.header(secret=OTHER_SECRET)
    assert _reason(lambda: scheme.verify(SECRET, BODY, header)) == REASON_MISMATCH


@each_scheme
@pytest.mark.parametrize("header", [None, "", "   "])
def test_missing_signature_header(scheme: Scheme, header: str | None) -> None:
    assert _reason(lambda: scheme.verify(SECRET, BODY, header)) == REASON_MISSING_HEADER


@each_scheme
@pytest.mark.parametrize("bad_hex", list(MALFORMED_HEX.values()), ids=list(MALFORMED_HEX))
def test_malformed_signature(scheme: Scheme, bad_hex: str) -> None:
    header = scheme.wrap(bad_hex)
    assert _reason(lambda: scheme.verify(SECRET, BODY, header)) == REASON_MALFORMED


@each_scheme
@garbage_header
def test_garbage_is_only_ever_a_signature_rejection(scheme: Scheme, header: str) -> None:
    assert _reason(lambda: scheme.verify(SECRET, BODY, header)) in {REASON_MALFORMED, REASON_MISSING_HEADER}


@each_scheme
def test_oversized_header_is_malformed_even_when_it_holds_a_valid_signature(scheme: Scheme) -> None:
    header = " " * MAX_HEADER_LENGTH + scheme.header()
    assert _reason(lambda: scheme.verify(SECRET, BODY, header)) == REASON_MALFORMED


def test_pagerduty_caps_the_number_of_signatures_compared() -> None:
    wrong = f"v1={_hex(BODY, OTHER_SECRET)},"
    header = wrong * (MAX_HEADER_LENGTH // len(wrong)) + f"v1={_hex(BODY)}"
    assert _reason(lambda: verify_pagerduty(SECRET, BODY, header)) == REASON_MALFORMED


def test_jira_accepts_a_prefix_in_any_case() -> None:
    verify_hex_signature(SECRET, BODY, "SHA256=" + _hex(BODY).upper())
    verify_hex_signature(SECRET, BODY, "  sha256=" + _hex(BODY) + "  ")


def test_deploy_with_prefix_required_rejects_bare_hex() -> None:
    assert _reason(lambda: verify_hex_signature(SECRET, BODY, _hex(BODY), prefix_required=True)) == REASON_MALFORMED


def test_custom_prefix() -> None:
    verify_hex_signature(SECRET, BODY, "hmac-sha256=" + _hex(BODY), prefix="hmac-sha256=", prefix_required=True)
    header = "sha256=" + _hex(BODY)
    reason = _reason(lambda: verify_hex_signature(SECRET, BODY, header, prefix="hmac-sha256=", prefix_required=True))
    assert reason == REASON_MALFORMED


def _slack_signature(ts: str, body: bytes = BODY) -> str:
    return "v0=" + _hex(b"v0:" + ts.encode() + b":" + body)


@pytest.mark.parametrize("age", [0, 240, -240, 300, -300])
def test_slack_inside_the_window_passes(age: int) -> None:
    ts = str(int(NOW) - age)
    verify_slack(SECRET, BODY, ts, _slack_signature(ts), now=NOW)


@pytest.mark.parametrize("age", [360, -360, 301, -301, 10**9])
def test_slack_outside_the_window_is_stale_even_when_validly_signed(age: int) -> None:
    ts = str(int(NOW) - age)
    assert _reason(lambda: verify_slack(SECRET, BODY, ts, _slack_signature(ts), now=NOW)) == REASON_STALE


def test_slack_checks_the_timestamp_before_the_signature() -> None:
    ts = str(int(NOW) - 360)
    assert _reason(lambda: verify_slack(SECRET, BODY, ts, "v0=garbage", now=NOW)) == REASON_STALE


def test_slack_tolerance_is_configurable() -> None:
    ts = str(int(NOW) - 240)
    signature = _slack_signature(ts)
    assert _reason(lambda: verify_slack(SECRET, BODY, ts, signature, now=NOW, tolerance_seconds=60)) == REASON_STALE


@pytest.mark.parametrize(
    "ts", ["soon", "-100", "+1700000000", "1700000000.5", "1e9", "\u0661\u0667" + "\u0660" * 8, "9" * 40, "\ud800"]
)
def test_slack_non_numeric_timestamp_is_malformed(ts: str) -> None:
    assert _reason(lambda: verify_slack(SECRET, BODY, ts, _slack_signature(TS), now=NOW)) == REASON_MALFORMED


@pytest.mark.parametrize("ts", [None, "", " "])
def test_slack_missing_timestamp(ts: str | None) -> None:
    assert _reason(lambda: verify_slack(SECRET, BODY, ts, _slack_signature(TS), now=NOW)) == REASON_MISSING_HEADER


def test_slack_signature_is_bound_to_its_timestamp() -> None:
    signed_earlier = _slack_signature(str(int(NOW) - 10))
    assert _reason(lambda: verify_slack(SECRET, BODY, TS, signed_earlier, now=NOW)) == REASON_MISMATCH


def test_slack_other_signature_version_is_malformed() -> None:
    header = "v1=" + _slack_signature(TS)[3:]
    assert _reason(lambda: verify_slack(SECRET, BODY, TS, header, now=NOW)) == REASON_MALFORMED


def test_slack_unusable_clock_is_stale() -> None:
    assert _reason(lambda: verify_slack(SECRET, BODY, TS, _slack_signature(TS), now=float("nan"))) == REASON_STALE


def test_pagerduty_passes_when_only_the_second_signature_matches() -> None:
    verify_pagerduty(SECRET, BODY, f"v1={_hex(BODY, OTHER_SECRET)},v1={_hex(BODY)}")


def test_pagerduty_tolerates_whitespace_empty_items_and_other_versions() -> None:
    verify_pagerduty(SECRET, BODY, f" , v2=whatever,, v1={_hex(BODY, OTHER_SECRET)} ,\tv1={_hex(BODY)} ,")


def test_pagerduty_skips_a_malformed_v1_entry_next_to_a_valid_one() -> None:
    verify_pagerduty(SECRET, BODY, f"v1=nothex,v1={_hex(BODY)}")


@pytest.mark.parametrize(
    "header",
    ["v0=" + _hex(BODY), "v2=" + _hex(BODY), _hex(BODY), "v1=" + _hex(BODY)[:-1], ",,", "v1="],
)
def test_pagerduty_without_a_well_formed_v1_entry_is_malformed(header: str) -> None:
    assert _reason(lambda: verify_pagerduty(SECRET, BODY, header)) == REASON_MALFORMED


def test_pagerduty_all_entries_wrong_is_a_mismatch() -> None:
    header = f"v1={_hex(BODY, OTHER_SECRET)}, v1={_hex(BODY, b'another')}, v0={_hex(BODY)}"
    assert _reason(lambda: verify_pagerduty(SECRET, BODY, header)) == REASON_MISMATCH


def _grafana_signature(ts: str) -> str:
    return _hex(ts.encode() + b":" + BODY)


def test_grafana_with_and_without_a_timestamp() -> None:
    verify_grafana_hmac(SECRET, BODY, _hex(BODY), None, now=NOW)
    verify_grafana_hmac(SECRET, BODY, _hex(BODY), "  ", now=NOW)
    verify_grafana_hmac(SECRET, BODY, _grafana_signature(TS), TS, now=NOW)


def test_grafana_timestamp_changes_what_is_signed() -> None:
    assert _reason(lambda: verify_grafana_hmac(SECRET, BODY, _hex(BODY), TS, now=NOW)) == REASON_MISMATCH
    signed_with_ts = _grafana_signature(TS)
    assert _reason(lambda: verify_grafana_hmac(SECRET, BODY, signed_with_ts, None, now=NOW)) == REASON_MISMATCH


@pytest.mark.parametrize("age", [360, -360, 3600])
def test_grafana_stale_timestamp(age: int) -> None:
    ts = str(int(NOW) - age)
    signature = _grafana_signature(ts)
    assert _reason(lambda: verify_grafana_hmac(SECRET, BODY, signature, ts, now=NOW)) == REASON_STALE


@pytest.mark.parametrize(
    "ts",
    ["yesterday", "1.7e9", "-5", "9" * 40, "x" * (MAX_HEADER_LENGTH + 1)],
    ids=["word", "float", "negative", "long", "huge"],
)
def test_grafana_malformed_timestamp(ts: str) -> None:
    signature = _grafana_signature(TS)
    assert _reason(lambda: verify_grafana_hmac(SECRET, BODY, signature, ts, now=NOW)) == REASON_MALFORMED


@pytest.mark.parametrize("header", [f"Bearer {TOKEN}", f"bearer {TOKEN}", f"BEARER  {TOKEN} "])
def test_bearer_token_passes(header: str) -> None:
    verify_bearer_token(TOKEN, header)


@pytest.mark.parametrize("token", [TOKEN + "x", TOKEN[:-1], TOKEN.upper(), "\ud800", "é" * 10])
def test_bearer_wrong_token_is_a_mismatch(token: str) -> None:
    assert _reason(lambda: verify_bearer_token(TOKEN, f"Bearer {token}")) == REASON_MISMATCH


@pytest.mark.parametrize("header", [f"Basic {TOKEN}", f"Token {TOKEN}", TOKEN, "Bearer", "Bearer   ", f"Bearer{TOKEN}"])
def test_bearer_wrong_scheme_or_no_token_is_malformed(header: str) -> None:
    assert _reason(lambda: verify_bearer_token(TOKEN, header)) == REASON_MALFORMED


@pytest.mark.parametrize("header", [None, "", "  "])
def test_bearer_missing_header(header: str | None) -> None:
    assert _reason(lambda: verify_bearer_token(TOKEN, header)) == REASON_MISSING_HEADER


@garbage_header
def test_bearer_garbage_is_only_ever_a_rejection(header: str) -> None:
    assert _reason(lambda: verify_bearer_token(TOKEN, header)) in {REASON_MALFORMED, REASON_MISMATCH}


def _every_kind_of_rejection() -> list[Callable[[], None]]:
    right = _hex(BODY)
    stale = str(int(NOW) - 3600)
    return [
        lambda: verify_hex_signature(SECRET, BODY, None),
        lambda: verify_hex_signature(SECRET, BODY, "nothex"),
        lambda: verify_hex_signature(SECRET, _one_byte_changed(BODY), right),
        lambda: verify_hex_signature(SECRET, BODY, right, prefix_required=True),
        lambda: verify_slack(SECRET, BODY, TS, "v0=" + right, now=NOW),
        lambda: verify_slack(SECRET, BODY, stale, _slack_signature(stale), now=NOW),
        lambda: verify_slack(SECRET, BODY, "soon", _slack_signature(TS), now=NOW),
        lambda: verify_pagerduty(SECRET, _one_byte_changed(BODY), "v1=" + right),
        lambda: verify_pagerduty(SECRET, BODY, "v0=" + right),
        lambda: verify_grafana_hmac(SECRET, _one_byte_changed(BODY), right, None, now=NOW),
        lambda: verify_grafana_hmac(SECRET, BODY, _grafana_signature(stale), stale, now=NOW),
        lambda: verify_bearer_token(TOKEN, "Bearer wrong"),
        lambda: verify_bearer_token(TOKEN, f"Basic {TOKEN}"),
    ]


@pytest.mark.parametrize("call", _every_kind_of_rejection())
def test_no_rejection_reveals_the_secret_or_a_computed_signature(call: Callable[[], None]) -> None:
    err = _rejected(call)
    computed = [
        _hex(BODY),
        _hex(_one_byte_changed(BODY)),
        _hex(b"v0:" + TS.encode() + b":" + BODY),
        hashlib.sha256(TOKEN.encode()).hexdigest(),
    ]
    _assert_no_leak(err, *computed)
    assert err.message == str(err)
    assert err.args == (err.message,)

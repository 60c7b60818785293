"""Tests of the error hierarchy and its HTTP mapping."""

from pm_errors import ErrorCode, NotFound, PmError, RateLimited, http_status


def test_every_code_has_an_http_status() -> None:
    for code in ErrorCode:
        assert 400 <= http_status(code) <= 599


def test_body_carries_message_and_details() -> None:
    err = NotFound("Investigation not found", details={"investigation_id": "x"})
    assert err.body() == {"error": "Investigation not found", "investigation_id": "x"}
    assert http_status(err.code) == 404


def test_rate_limited_keeps_retry_after() -> None:
    err = RateLimited("Rate limit exceeded", retry_after_seconds=60)
    assert isinstance(err, PmError)
    assert err.retry_after_seconds == 60
    assert http_status(err.code) == 429

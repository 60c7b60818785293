"""Strict parsing of API bodies: each problem is named, nothing is coerced."""

from __future__ import annotations

import pytest

from pm_errors import InvalidArgument, UnsupportedMediaType
from pm_ingest.bodies import InvestigateBatchBody, InvestigateBody, parse_body, parse_json_object


def _problems(data: object, model: type = InvestigateBody) -> list[dict[str, object]]:
    with pytest.raises(InvalidArgument) as err:
        parse_body(model, data)  # type: ignore[arg-type]
    assert err.value.message == "Validation failed"
    details = err.value.details["details"]
    assert isinstance(details, list)
    return details


def test_defaults_apply_and_values_are_kept() -> None:
    body = parse_body(InvestigateBody, {"ticket_id": "PAY-1"})
    assert (body.ticket_id, body.mode, body.domain, body.callback_url) == ("PAY-1", "balanced", None, None)


def test_types_are_not_coerced() -> None:
    assert _problems({"ticket_id": 12})[0]["path"] == ["ticket_id"]
    assert _problems({"ticket_id": "A-1", "mode": 1})[0]["path"] == ["mode"]


def test_unknown_and_missing_fields_are_named() -> None:
    assert _problems({"ticket_id": "A-1", "extra": True}) == [
        {"path": ["extra"], "message": "Unknown field", "code": "extra_forbidden"}
    ]
    assert _problems({}) == [{"path": ["ticket_id"], "message": "Required", "code": "missing"}]


@pytest.mark.parametrize(
    "url", ["ftp://h/x", "https://user:pw@h/x", "/relative", "https://", "http://" + "a" * 2100 + ".example"]
)
def test_bad_callback_urls_are_refused(url: str) -> None:
    problem = _problems({"ticket_id": "A-1", "callback_url": url})[0]
    assert problem["path"] == ["callback_url"]
    assert "callback_url" in str(problem["message"])


def test_batch_limits_have_the_predecessor_messages() -> None:
    assert _problems({"ticket_ids": []}, InvestigateBatchBody)[0]["message"] == "At least one ticket_id is required"
    too_many = {"ticket_ids": [f"T-{i}" for i in range(21)]}
    assert _problems(too_many, InvestigateBatchBody)[0]["message"] == "Maximum 20 tickets per batch"
    assert "more than once" in str(_problems({"ticket_ids": ["T-1", "T-1"]}, InvestigateBatchBody)[0]["message"])


def test_json_problems() -> None:
    with pytest.raises(InvalidArgument) as err:
        parse_json_object(b'{"a": 1, "a": 2}', "application/json")
    assert "duplicate key" in str(err.value.details["details"])
    with pytest.raises(InvalidArgument) as err:
        parse_json_object(b"{", "application/json")
    assert err.value.message == "Malformed JSON body"
    with pytest.raises(InvalidArgument):
        parse_json_object(b"[]", "application/json")
    with pytest.raises(UnsupportedMediaType):
        parse_json_object(b"{}", "text/plain")
    assert parse_json_object(b'{"a": 1}', "application/vnd.api+json; charset=utf-8") == {"a": 1}
    assert parse_json_object(b'{"a": 1}', "") == {"a": 1}


def test_a_budget_is_checked_and_stored_under_the_orchestrator_names() -> None:
    body = parse_body(InvestigateBody, {"ticket_id": "A-1", "budget": {"deadline_seconds": 90, "max_cost_usd": 0.25}})
    assert body.budget is not None
    assert body.budget.limits() == {"wall_seconds": 90, "max_cost_usd": 0.25}
    assert parse_body(InvestigateBody, {"ticket_id": "A-1", "budget": {}}).budget.limits() == {}  # type: ignore[union-attr]
    assert _problems({"ticket_id": "A-1", "budget": {"deadline_seconds": 0}})[0]["path"] == [
        "budget",
        "deadline_seconds",
    ]
    assert _problems({"ticket_id": "A-1", "budget": {"max_tool_calls": 2.5}})[0]["path"] == ["budget", "max_tool_calls"]
    assert _problems({"ticket_id": "A-1", "budget": {"max_cost_usd": -1}})[0]["path"] == ["budget", "max_cost_usd"]
    assert _problems({"ticket_ids": ["A-1"], "budget": {"x": 1}}, InvestigateBatchBody)[0]["path"] == ["budget", "x"]

"""The structured output: its tool schema and its compatibility with the rule reasoner's findings, and
the hypothesis and verification agents' answers."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from pm_worker.llm.schemas import SUBMIT_TOOL, Findings, Hypotheses, Verification, submit_tool
from pm_worker.rules.reasoner import Case, RuleReasoner


def valid(**overrides: Any) -> dict[str, Any]:
    value: dict[str, Any] = {
        "verdict": "PROBABLE_CAUSE",
        "confidence": 0.6,
        "summary": "Flag checkout_v2 turned on a path with no timeout.",
        "culprit": {"kind": "flag", "ref": "checkout_v2", "service": "checkout"},
        "remediation": {"class": "config-revert", "steps": ["Turn checkout_v2 off."]},
        "hypotheses": [
            {
                "kind": "flag",
                "ref": "checkout_v2",
                "service": "checkout",
                "statement": "The new path waits on the ledger without a timeout.",
                "status": "supported",
                "confidence": 0.6,
                "checks": [{"name": "timing", "passed": True, "detail": "on at 10:00Z", "call_ids": ["c-1"]}],
            }
        ],
        "evidence": [{"claim": "checkout_v2 turned on at 10:00Z", "call_ids": ["c-1"]}],
        "timeline": [{"at": "2026-03-01T10:00:00Z", "event": "checkout_v2 turned on"}],
    }
    value.update(overrides)
    return value


def test_the_submit_tool_schema_is_self_contained_and_requires_citations() -> None:
    spec = submit_tool(Findings)
    schema = spec.input_schema

    assert spec.name == SUBMIT_TOOL
    assert "$ref" not in json.dumps(schema)
    assert "$defs" not in schema
    assert schema["properties"]["remediation"]["required"] == ["class", "steps"]
    evidence_item = schema["properties"]["evidence"]["items"]
    assert evidence_item["properties"]["call_ids"]["minItems"] == 1
    assert set(schema["required"]) == {"verdict", "confidence", "summary", "remediation"}


def test_evidence_must_cite_at_least_one_call() -> None:
    with pytest.raises(ValidationError, match="call_ids"):
        Findings.model_validate(valid(evidence=[{"claim": "it broke", "call_ids": []}]))


def test_the_culprit_must_match_the_verdict() -> None:
    with pytest.raises(ValidationError, match="needs a culprit"):
        Findings.model_validate(valid(culprit=None))
    with pytest.raises(ValidationError, match="names no culprit"):
        Findings.model_validate(valid(verdict="INCONCLUSIVE"))


def test_unknown_fields_are_rejected_rather_than_ignored() -> None:
    with pytest.raises(ValidationError, match="root_cause"):
        Findings.model_validate(valid(root_cause="abc"))


def test_the_report_form_uses_the_rule_reasoners_field_names() -> None:
    report = Findings.model_validate(valid()).to_report()
    rule = RuleReasoner(tools=None).conclude(Case())  # type: ignore[arg-type]

    assert set(report) <= set(rule)
    assert set(report["remediation"]) == set(rule["remediation"]) == {"class", "steps"}
    assert report["root_cause_commit"] == "none"
    hypothesis = report["hypotheses"][0]
    # What the report renderer reads from a hypothesis.
    assert {"kind", "ref", "service", "title", "score", "status", "rejected_because", "checks"} <= set(hypothesis)
    assert hypothesis["title"] == "The new path waits on the ledger without a timeout."
    assert set(hypothesis["checks"][0]) == {"name", "passed", "detail", "call_ids"}
    assert set(report["evidence"][0]) == {"claim", "call_ids"}


def test_a_commit_culprit_is_the_root_cause_commit() -> None:
    culprit = {"kind": "commit", "ref": "abc123", "service": "payments", "title": "Shrink the pool"}

    report = Findings.model_validate(
        valid(verdict="ROOT_CAUSE", culprit=culprit, remediation={"class": "rollback", "steps": ["Roll back."]})
    ).to_report()

    assert report["root_cause_commit"] == "abc123"
    assert report["culprit"] == {**culprit, "at": ""}


def hypotheses(**overrides: Any) -> dict[str, Any]:
    value: dict[str, Any] = {
        "hypotheses": [
            {
                "kind": "commit",
                "ref": "857e069f",
                "service": "payments",
                "mechanism": "Six immediate retries on ABORTED pile writers onto the ledger's row lock.",
                "evidence": [{"claim": "payments logs ledger ABORTED retries", "call_ids": ["c-1"]}],
                "falsified_by": ["the diff leaves max_attempts and the backoff unchanged"],
                "plausibility": 0.8,
            }
        ]
    }
    value.update(overrides)
    return value


def verification(**overrides: Any) -> dict[str, Any]:
    value: dict[str, Any] = {
        "hypotheses": [
            {
                "kind": "commit",
                "ref": "857e069f",
                "checklist": [
                    {"check": "signature", "outcome": "pass", "detail": "max_attempts 2 -> 6", "call_ids": ["c-9"]}
                ],
                "status": "verified",
                "reason": "The diff raises the retries the errors show.",
            }
        ],
        "converged": True,
        "again": False,
        "summary": "857e069f explains the retry storm.",
    }
    value.update(overrides)
    return value


def test_every_hypothesis_cites_evidence_and_says_what_would_falsify_it() -> None:
    assert Hypotheses.model_validate(hypotheses()).hypotheses[0].plausibility == 0.8
    item = hypotheses()["hypotheses"][0]
    with pytest.raises(ValidationError, match="evidence"):
        Hypotheses.model_validate(hypotheses(hypotheses=[{**item, "evidence": []}]))
    with pytest.raises(ValidationError, match="falsified_by"):
        Hypotheses.model_validate(hypotheses(hypotheses=[{**item, "falsified_by": []}]))
    with pytest.raises(ValidationError, match="call_ids"):
        Hypotheses.model_validate(
            hypotheses(hypotheses=[{**item, "evidence": [{"claim": "it broke", "call_ids": []}]}])
        )


def test_a_new_failure_order_must_be_cited() -> None:
    with pytest.raises(ValidationError, match="failure_order_evidence"):
        Hypotheses.model_validate(hypotheses(first_failing_service="ledger"))
    cited = [{"claim": "ledger errors start at 09:40", "call_ids": ["c-2"]}]
    assert (
        Hypotheses.model_validate(
            hypotheses(first_failing_service="ledger", failure_order_evidence=cited)
        ).first_failing_service
        == "ledger"
    )


def test_a_verification_converges_only_on_a_verified_hypothesis_and_then_asks_for_no_more() -> None:
    assert Verification.model_validate(verification()).converged
    (item,) = verification()["hypotheses"]
    with pytest.raises(ValidationError, match="converged needs a hypothesis with status verified"):
        Verification.model_validate(verification(hypotheses=[{**item, "status": "unverified"}]))
    with pytest.raises(ValidationError, match="again must be false"):
        Verification.model_validate(verification(again=True))
    with pytest.raises(ValidationError, match="outcome"):
        Verification.model_validate(
            verification(hypotheses=[{**item, "checklist": [{**item["checklist"][0], "outcome": "maybe"}]}])
        )


@pytest.mark.parametrize("model", [Hypotheses, Verification])
def test_the_role_schemas_are_self_contained_submit_tools(model: type[Hypotheses | Verification]) -> None:
    schema = submit_tool(model).input_schema

    assert "$ref" not in json.dumps(schema)
    assert "$defs" not in schema
    assert schema["additionalProperties"] is False

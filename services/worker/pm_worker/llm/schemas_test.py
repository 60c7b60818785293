"""The structured output: its tool schema and its compatibility with the rule reasoner's findings."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from pm_worker.llm.schemas import SUBMIT_TOOL, Findings, submit_tool
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

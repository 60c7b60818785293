"""The citation checker: claims must rest on tool calls this investigation made."""

from __future__ import annotations

from typing import Any

from pm_worker.llm.citations import check_citations
from pm_worker.llm.schemas import Findings

KNOWN = {"call-1", "call-2", "call-3"}


def findings(**overrides: Any) -> Findings:
    value: dict[str, Any] = {
        "verdict": "ROOT_CAUSE",
        "confidence": 0.85,
        "summary": "Commit abc123 shrank the payments connection pool.",
        "first_failing_service": "payments",
        "culprit": {"kind": "commit", "ref": "abc123", "service": "payments", "title": "Shrink the pool"},
        "remediation": {"class": "rollback", "steps": ["Roll payments back to the build before abc123."]},
        "hypotheses": [
            {
                "kind": "commit",
                "ref": "abc123",
                "service": "payments",
                "statement": "The smaller pool exhausts under normal load.",
                "status": "confirmed",
                "confidence": 0.85,
                "checks": [
                    {"name": "timing", "passed": True, "detail": "deployed 10:01Z", "call_ids": ["call-2"]},
                    {"name": "signature", "passed": True, "detail": "pool size 5 in the diff", "call_ids": []},
                    {"name": "mechanism", "passed": True, "detail": "pool errors", "call_ids": ["call-9"]},
                ],
            }
        ],
        "evidence": [
            {"claim": "payments logs 'pool exhausted' from 10:03Z", "call_ids": ["call-1"]},
            {"claim": "abc123 sets max_pool_size to 5", "call_ids": ["call-3", "call-77"]},
            {"claim": "the on-call engineer blamed the network", "call_ids": ["ticket-1"]},
        ],
    }
    value.update(overrides)
    return Findings.model_validate(value)


def test_claims_citing_nothing_or_unknown_calls_are_dropped_and_counted() -> None:
    review = check_citations(findings(), KNOWN)

    assert [e.claim for e in review.findings.evidence] == ["payments logs 'pool exhausted' from 10:03Z"]
    assert [c.name for c in review.findings.hypotheses[0].checks] == ["timing"]
    # Two evidence items (one invented id among real ones, one invented outright) and two checks.
    assert review.rejected == 4
    assert len(review.rejected_claims) == 4
    assert review.findings.verdict == "ROOT_CAUSE"
    assert review.downgraded_from == ""


def test_fully_supported_findings_pass_unchanged() -> None:
    supported = findings(
        evidence=[{"claim": "payments logs 'pool exhausted'", "call_ids": ["call-1", "call-2"]}], hypotheses=[]
    )

    review = check_citations(supported, KNOWN)

    assert review.rejected == 0
    assert review.findings == supported


def test_a_culprit_verdict_left_without_evidence_is_downgraded_to_inconclusive() -> None:
    unsupported = findings(evidence=[{"claim": "abc123 broke it", "call_ids": ["call-42"]}])

    review = check_citations(unsupported, KNOWN)

    result = review.findings
    assert result.verdict == "INCONCLUSIVE"
    assert result.culprit is None
    assert result.confidence <= 0.3
    assert result.summary.startswith("Downgraded to INCONCLUSIVE: the ROOT_CAUSE verdict naming commit abc123")
    assert "Commit abc123 shrank the payments connection pool." in result.summary
    assert result.remediation.class_ == "investigate"
    assert review.downgraded_from == "ROOT_CAUSE"
    assert review.rejected == 3


def test_an_inconclusive_verdict_without_evidence_is_left_as_it_is() -> None:
    inconclusive = findings(
        verdict="INCONCLUSIVE",
        confidence=0.3,
        summary="No change explains this.",
        culprit=None,
        remediation={"class": "investigate", "steps": ["Widen the window."]},
        hypotheses=[],
        evidence=[],
    )

    review = check_citations(inconclusive, KNOWN)

    assert review.findings == inconclusive
    assert (review.rejected, review.downgraded_from) == (0, "")

"""The citation checker: claims must rest on tool calls this investigation made (findings,
hypotheses and verification checklists alike)."""

from __future__ import annotations

from typing import Any

from pm_worker.llm.citations import check_citations, review_hypotheses, review_verification
from pm_worker.llm.schemas import Findings, Hypotheses, Verification

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


def ranked(ref: str, *call_ids: str) -> dict[str, Any]:
    return {
        "kind": "commit",
        "ref": ref,
        "mechanism": "a smaller pool exhausts under normal load",
        "evidence": [{"claim": f"{ref} shipped before the onset", "call_ids": list(call_ids)}],
        "falsified_by": ["the pool size is unchanged"],
        "plausibility": 0.5,
    }


def test_a_hypothesis_resting_only_on_invented_calls_is_dropped_and_counted() -> None:
    answer = Hypotheses.model_validate(
        {
            "hypotheses": [
                ranked("abc123", "call-1"),
                ranked("def456", "call-404"),
                ranked("0a0b0c", "call-2", "call-3"),
            ],
            "first_failing_service": "ledger",
            "blast_radius": ["payments"],
            "failure_order_evidence": [{"claim": "ledger failed first", "call_ids": ["call-3", "call-99"]}],
        }
    )

    review = review_hypotheses(answer, KNOWN)

    assert [h.ref for h in review.answer.hypotheses] == ["abc123", "0a0b0c"]
    assert review.dropped == ("commit def456",)
    # The invented hypothesis evidence and the failure order citing an unknown id among real ones.
    assert review.rejected == 2
    # A failure order left without support is ignored: the context's stands.
    assert (review.answer.first_failing_service, review.answer.blast_radius) == ("", [])


def checked(status: str, *items: tuple[str, str, list[str]]) -> dict[str, Any]:
    return {
        "kind": "commit",
        "ref": "abc123",
        "checklist": [{"check": c, "outcome": o, "detail": f"{c} compared", "call_ids": ids} for c, o, ids in items],
        "status": status,
        "reason": "the checks say so",
    }


def test_checks_citing_nothing_real_are_dropped_and_what_they_supported_is_demoted() -> None:
    answer = Verification.model_validate(
        {
            "hypotheses": [
                checked(
                    "verified",
                    ("signature", "pass", []),
                    ("mechanism", "pass", ["call-7"]),
                    ("timing", "unknown", []),
                    ("location", "fail", ["call-1"]),
                ),
                {**checked("rejected", ("timing", "fail", ["call-8"])), "ref": "def456"},
            ],
            "converged": True,
            "again": False,
            "summary": "abc123 did it",
        }
    )

    review = review_verification(answer, KNOWN)

    first, *rest = review.answer.hypotheses
    # An unknown outcome claims nothing and may cite nothing; pass and fail must cite real calls.
    assert [(i.check, i.outcome) for i in first.checklist] == [("timing", "unknown"), ("location", "fail")]
    assert first.status == "unverified"
    assert first.reason.startswith("No passing check of it cited a call")
    assert review.downgraded == ("commit abc123",)
    # A hypothesis left with no check at all is dropped.
    assert rest == []
    assert review.dropped == ("commit def456",)
    assert review.rejected == 3
    # Nothing verified is left, so the question is not settled.
    assert review.answer.converged is False


def test_a_fully_cited_verification_passes_unchanged() -> None:
    answer = Verification.model_validate(
        {
            "hypotheses": [checked("verified", ("signature", "pass", ["call-1"]), ("timing", "pass", ["call-2"]))],
            "converged": True,
            "again": False,
            "summary": "abc123 did it",
        }
    )

    review = review_verification(answer, KNOWN)

    assert (review.rejected, review.answer) == (0, answer)

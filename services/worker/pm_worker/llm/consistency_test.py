"""RECOMMEND's verdict against the investigation's candidates and their verification."""

from __future__ import annotations

from typing import Any

import pytest

from pm_worker.llm.consistency import PROBABLE_CONFIDENCE, reconcile
from pm_worker.llm.schemas import Findings
from pm_worker.rules.reasoner import Candidate, Case, Check
from pm_worker.rules.signals import parse_time

PASSED = "a" * 40  # verified by the rules, every check passed
FAILED = "b" * 40  # verified by the rules, one check failed
NEVER_SEEN = "c" * 40


def _case() -> Case:
    at = parse_time("2026-03-17T09:38:20Z")

    def candidate(kind: str, ref: str, checks: list[Check]) -> Candidate:
        return Candidate(kind=kind, ref=ref, service="payments", at=at, title=ref, checks=checks, proposed_in=1)

    return Case(
        candidates=[
            candidate(
                "commit", PASSED, [Check("timing", True, "before", ["c-1"]), Check("signature", True, "", ["c-2"])]
            ),
            candidate("commit", FAILED, [Check("timing", True, "before", ["c-1"]), Check("signature", False, "", [])]),
            candidate("flag", "express_pay", []),
        ]
    )


def _findings(verdict: str, kind: str, ref: str, confidence: float = 0.9) -> Findings:
    return Findings.model_validate(
        {
            "verdict": verdict,
            "confidence": confidence,
            "summary": f"{ref} did it.",
            "culprit": {"kind": kind, "ref": ref, "service": "payments"},
            "remediation": {"class": "rollback", "steps": ["roll back"]},
            "evidence": [{"claim": "it shipped before the onset", "call_ids": ["c-1"]}],
        }
    )


def _verified(kind: str, ref: str, status: str, reason: str = "") -> dict[str, Any]:
    return {"verification": {f"{kind}:{ref}": {"status": status, "reason": reason}}}


@pytest.mark.parametrize(
    ("verdict", "kind", "ref", "notes"),
    [
        ("ROOT_CAUSE", "commit", PASSED, {}),  # the rules verified it, every check passed
        ("ROOT_CAUSE", "commit", PASSED[:12], {}),  # a unique sha prefix names it too
        ("ROOT_CAUSE", "commit", FAILED, _verified("commit", FAILED, "verified")),  # the verifier of record
        ("CONTRIBUTING_FACTOR", "commit", FAILED, {}),  # only ROOT_CAUSE needs a passed verification
        ("PROBABLE_CAUSE", "flag", "express_pay", {}),
        ("ROOT_CAUSE", "config", "ledger.retry.max_attempts", {}),  # a key: the citation checker's
    ],
)
def test_a_verdict_the_investigation_supports_stands(verdict: str, kind: str, ref: str, notes: dict[str, Any]) -> None:
    findings = _findings(verdict, kind, ref)
    checked = reconcile(findings, _case(), notes)
    assert checked.findings == findings
    assert checked.problem == ""


@pytest.mark.parametrize(
    ("kind", "ref", "notes", "state"),
    [
        ("commit", FAILED, {}, "checks failed"),
        ("flag", "express_pay", {}, "never verified"),
        ("commit", PASSED, _verified("commit", PASSED, "unverified"), "unverified"),
    ],
)
def test_root_cause_on_a_change_that_did_not_pass_verification_becomes_probable_cause(
    kind: str, ref: str, notes: dict[str, Any], state: str
) -> None:
    checked = reconcile(_findings("ROOT_CAUSE", kind, ref, confidence=0.95), _case(), notes)
    assert checked.findings.verdict == "PROBABLE_CAUSE"
    assert checked.findings.confidence == PROBABLE_CONFIDENCE
    assert checked.findings.culprit is not None
    assert checked.findings.culprit.ref == ref
    assert checked.problem == (
        f"recommend: ROOT_CAUSE lowered to PROBABLE_CAUSE: {kind} {ref} did not pass verification ({state})"
    )


def test_a_culprit_the_verification_rejected_or_the_investigation_never_found_is_inconclusive() -> None:
    notes = _verified("commit", PASSED, "rejected", "the diff only renames a log field")
    rejected = reconcile(_findings("ROOT_CAUSE", "commit", PASSED), _case(), notes)
    assert (rejected.findings.verdict, rejected.findings.culprit) == ("INCONCLUSIVE", None)
    assert rejected.findings.confidence <= 0.3
    assert "the verification rejected: the diff only renames a log field" in rejected.findings.summary
    assert rejected.findings.summary.endswith(f"The model had said: {PASSED} did it.")
    assert rejected.findings.remediation.class_ == "investigate"
    assert rejected.problem == f"recommend: the verification rejected commit {PASSED}; INCONCLUSIVE"

    unknown = reconcile(_findings("PROBABLE_CAUSE", "commit", NEVER_SEEN), _case(), {})
    assert (unknown.findings.verdict, unknown.findings.culprit) == ("INCONCLUSIVE", None)
    assert "did not find reaching production" in unknown.findings.summary
    assert unknown.problem.startswith(f"recommend: commit {NEVER_SEEN} is not a change this investigation found")

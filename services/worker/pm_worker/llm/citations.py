"""The citation checker: findings keep only the claims that rest on tool calls this investigation
actually made.

An evidence item or a check is dropped when it cites nothing or cites any id that is not among
the investigation's calls (one invented id discredits the claim: the model may have invented the
fact with it). A verdict naming a culprit with no evidence left is downgraded to INCONCLUSIVE,
and the summary says why.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from pm_worker.llm.schemas import CULPRIT_VERDICTS, Check, Evidence, Findings, Remediation

DOWNGRADED_CONFIDENCE = 0.3


@dataclass(frozen=True, slots=True)
class CitationReview:
    """The findings with unsupported claims removed, and what was removed."""

    findings: Findings
    rejected: int
    rejected_claims: tuple[str, ...] = ()
    downgraded_from: str = ""


def _supported(call_ids: Collection[str], known: Collection[str]) -> bool:
    return bool(call_ids) and all(call_id in known for call_id in call_ids)


def check_citations(findings: Findings, known_call_ids: Collection[str]) -> CitationReview:
    """Drop evidence and checks citing nothing or unknown call ids; downgrade an unsupported verdict."""
    known = frozenset(known_call_ids)
    rejected: list[str] = []

    evidence: list[Evidence] = []
    for item in findings.evidence:
        if _supported(item.call_ids, known):
            evidence.append(item)
        else:
            rejected.append(f"evidence: {item.claim}")

    hypotheses = []
    for hypothesis in findings.hypotheses:
        checks: list[Check] = []
        for check in hypothesis.checks:
            if _supported(check.call_ids, known):
                checks.append(check)
            else:
                rejected.append(f"check {check.name} of {hypothesis.ref}: {check.detail}")
        hypotheses.append(hypothesis.model_copy(update={"checks": checks}))

    cleaned = findings.model_copy(update={"evidence": evidence, "hypotheses": hypotheses})
    downgraded_from = ""
    if findings.verdict in CULPRIT_VERDICTS and not evidence:
        downgraded_from = findings.verdict
        cleaned = _downgrade(cleaned, findings, len(rejected))
    # Rebuilding through validation proves the cleaned findings still satisfy the schema.
    cleaned = Findings.model_validate(cleaned.model_dump(by_alias=True))
    return CitationReview(
        findings=cleaned, rejected=len(rejected), rejected_claims=tuple(rejected), downgraded_from=downgraded_from
    )


def _downgrade(cleaned: Findings, original: Findings, rejected: int) -> Findings:
    culprit = original.culprit
    named = f" naming {culprit.kind} {culprit.ref} on {culprit.service}" if culprit is not None else ""
    summary = (
        f"Downgraded to INCONCLUSIVE: the {original.verdict} verdict{named} cited no tool call this"
        f" investigation made ({rejected} unsupported claim(s) removed). The model had said: {original.summary}"
    )
    steps = [f"Check by hand whether {culprit.kind} {culprit.ref} caused this before acting on it."] if culprit else []
    return cleaned.model_copy(
        update={
            "verdict": "INCONCLUSIVE",
            "confidence": min(original.confidence, DOWNGRADED_CONFIDENCE),
            "culprit": None,
            "summary": summary,
            "remediation": Remediation.model_validate(
                {"class": "investigate", "steps": steps or ["Investigate by hand: the verdict had no support."]}
            ),
        }
    )

"""The citation checker: findings keep only the claims that rest on tool calls this investigation
actually made.

An evidence item or a check is dropped when it cites nothing or cites any id that is not among
the investigation's calls (one invented id discredits the claim: the model may have invented the
fact with it). A verdict naming a culprit with no evidence left is downgraded to INCONCLUSIVE,
and the summary says why. TRIAGE: a first failing service or an onset left without evidence is
ignored. The same rule holds for HYPOTHESIZE (a hypothesis left without
evidence is dropped; a changed failure order left without evidence is ignored) and VERIFY (a
pass or fail citing nothing real is dropped; an `unknown` may cite nothing; a hypothesis left
without checks is dropped, a `verified` one left without a passing check becomes `unverified`,
and `converged` without a verified hypothesis becomes false). GATHER's context: a fact citing
nothing real is dropped.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from pm_worker.llm.schemas import (
    CULPRIT_VERDICTS,
    Check,
    ChecklistItem,
    Context,
    Evidence,
    Findings,
    Hypotheses,
    RankedHypothesis,
    Remediation,
    Triage,
    Verification,
    VerifiedHypothesis,
)

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
        why = f"cited no tool call this investigation made ({len(rejected)} unsupported claim(s) removed)"
        cleaned = downgrade(cleaned, findings, why)
    # Rebuilding through validation proves the cleaned findings still satisfy the schema.
    cleaned = Findings.model_validate(cleaned.model_dump(by_alias=True))
    return CitationReview(
        findings=cleaned, rejected=len(rejected), rejected_claims=tuple(rejected), downgraded_from=downgraded_from
    )


def downgrade(cleaned: Findings, original: Findings, why: str) -> Findings:
    """`cleaned` as INCONCLUSIVE with no culprit: `original`'s verdict failed a check (`why`), so
    its culprit becomes something to check by hand."""
    culprit = original.culprit
    named = f" naming {culprit.kind} {culprit.ref} on {culprit.service}" if culprit is not None else ""
    summary = (
        f"Downgraded to INCONCLUSIVE: the {original.verdict} verdict{named} {why}. The model had said:"
        f" {original.summary}"
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


def _cites(evidence: list[Evidence], known: frozenset[str], rejected: list[str], label: str) -> list[Evidence]:
    kept = []
    for item in evidence:
        if _supported(item.call_ids, known):
            kept.append(item)
        else:
            rejected.append(f"{label}: {item.claim}")
    return kept


@dataclass(frozen=True, slots=True)
class HypothesesReview:
    """HYPOTHESIZE's answer with unsupported claims removed, and what was removed."""

    answer: Hypotheses
    rejected: int
    rejected_claims: tuple[str, ...] = ()
    # Hypotheses (kind ref) left without any supported evidence, so dropped from the ranking.
    dropped: tuple[str, ...] = ()


def review_hypotheses(answer: Hypotheses, known_call_ids: Collection[str]) -> HypothesesReview:
    """Drop evidence citing nothing or unknown calls; drop hypotheses and a failure order left unsupported."""
    known = frozenset(known_call_ids)
    rejected: list[str] = []
    kept: list[RankedHypothesis] = []
    dropped: list[str] = []
    for hypothesis in answer.hypotheses:
        evidence = _cites(hypothesis.evidence, known, rejected, f"hypothesis {hypothesis.kind} {hypothesis.ref}")
        if evidence:
            kept.append(hypothesis.model_copy(update={"evidence": evidence}))
        else:
            dropped.append(f"{hypothesis.kind} {hypothesis.ref}")
    order = _cites(answer.failure_order_evidence, known, rejected, "failure order")
    update: dict[str, object] = {"hypotheses": kept, "failure_order_evidence": order}
    if not order:
        update.update(first_failing_service="", blast_radius=[])
    cleaned = Hypotheses.model_validate(answer.model_copy(update=update).model_dump())
    return HypothesesReview(cleaned, len(rejected), tuple(rejected), tuple(dropped))


@dataclass(frozen=True, slots=True)
class VerificationReview:
    """VERIFY's answer with unsupported checks removed, and what that changed."""

    answer: Verification
    rejected: int
    rejected_claims: tuple[str, ...] = ()
    # Hypotheses (kind ref) left without any check, so dropped.
    dropped: tuple[str, ...] = ()
    # Hypotheses (kind ref) claimed verified with no supported passing check left: now unverified.
    downgraded: tuple[str, ...] = ()


def _item_supported(item: ChecklistItem, known: frozenset[str]) -> bool:
    if item.outcome == "unknown":
        return all(call_id in known for call_id in item.call_ids)  # claims nothing, but invents nothing either
    return _supported(item.call_ids, known)


def review_verification(answer: Verification, known_call_ids: Collection[str]) -> VerificationReview:
    """Drop checks citing nothing or unknown calls; demote what they no longer support."""
    known = frozenset(known_call_ids)
    rejected: list[str] = []
    dropped: list[str] = []
    downgraded: list[str] = []
    kept: list[VerifiedHypothesis] = []
    for hypothesis in answer.hypotheses:
        name = f"{hypothesis.kind} {hypothesis.ref}"
        checklist = []
        for item in hypothesis.checklist:
            if _item_supported(item, known):
                checklist.append(item)
            else:
                rejected.append(f"check {item.check} of {name}: {item.detail}")
        if not checklist:
            dropped.append(name)
            continue
        update: dict[str, object] = {"checklist": checklist}
        if hypothesis.status == "verified" and not any(i.outcome == "pass" for i in checklist):
            downgraded.append(name)
            update.update(
                status="unverified",
                reason=f"No passing check of it cited a call this investigation made. The model had said: "
                f"{hypothesis.reason}",
            )
        kept.append(hypothesis.model_copy(update=update))
    converged = answer.converged and any(h.status == "verified" for h in kept)
    cleaned = Verification.model_validate(
        answer.model_copy(update={"hypotheses": kept, "converged": converged}).model_dump()
    )
    return VerificationReview(cleaned, len(rejected), tuple(rejected), tuple(dropped), tuple(downgraded))


@dataclass(frozen=True, slots=True)
class TriageReview:
    """TRIAGE's answer with unsupported claims removed, and what was removed."""

    answer: Triage
    rejected: int
    rejected_claims: tuple[str, ...] = ()
    # What the answer changed but no supported evidence is left for: "first failing service", "onset".
    ignored: tuple[str, ...] = ()


def review_triage(answer: Triage, known_call_ids: Collection[str]) -> TriageReview:
    """Drop evidence citing nothing or unknown calls; ignore a first failing service or onset left unsupported."""
    known = frozenset(known_call_ids)
    rejected: list[str] = []
    ignored: list[str] = []
    symptom = _cites(answer.symptom_evidence, known, rejected, "symptom")
    first = _cites(answer.first_failing_evidence, known, rejected, "first failing service")
    onset = _cites(answer.onset_evidence, known, rejected, "onset")
    update: dict[str, object] = {"symptom_evidence": symptom, "first_failing_evidence": first, "onset_evidence": onset}
    if answer.first_failing_service and not first:
        ignored.append(f"first failing service {answer.first_failing_service}")
        update["first_failing_service"] = ""
    if answer.onset is not None and not onset:
        ignored.append(f"onset {answer.onset.isoformat()}")
        update["onset"] = None
    cleaned = Triage.model_validate(answer.model_copy(update=update).model_dump())
    return TriageReview(cleaned, len(rejected), tuple(rejected), tuple(ignored))


@dataclass(frozen=True, slots=True)
class ContextReview:
    """GATHER's context answer with the facts that cite nothing real removed."""

    answer: Context
    rejected: int
    rejected_claims: tuple[str, ...] = ()


def review_context(answer: Context, known_call_ids: Collection[str]) -> ContextReview:
    """Drop every fact citing no call or a call this investigation did not make."""
    known = frozenset(known_call_ids)
    kept = [fact for fact in answer.facts if _supported(fact.call_ids, known)]
    rejected = [f"context: {fact.claim}" for fact in answer.facts if fact not in kept]
    cleaned = Context.model_validate(answer.model_copy(update={"facts": kept}).model_dump())
    return ContextReview(cleaned, len(rejected), tuple(rejected))

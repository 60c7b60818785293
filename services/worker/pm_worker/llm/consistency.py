"""RECOMMEND's verdict held against what this investigation found and verified.

The citation checker makes every claim rest on real tool calls; this makes the verdict agree with
the investigation's own state, so the concluding model cannot be more certain than the work
behind it:

- a culprit that is not among the changes the investigation found reaching production (a commit
  or flag it never saw, or one never deployed) cannot be the cause: INCONCLUSIVE;
- a culprit the verification agent rejected, with cited checks, cannot be the cause either:
  INCONCLUSIVE (the report keeps the model's summary and says why);
- ROOT_CAUSE needs a culprit that passed verification (the verification agent's `verified`, or,
  where the rules verified, every check passed): otherwise it is lowered to PROBABLE_CAUSE with at
  most PROBABLE_CONFIDENCE.

A config culprit (a key, not a change the gathered deploys list) is left to the citation checker.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pm_worker.llm.case_view import find_candidate, key_of
from pm_worker.llm.citations import downgrade
from pm_worker.llm.schemas import CULPRIT_VERDICTS, Findings
from pm_worker.rules.reasoner import Case

PROBABLE_CONFIDENCE = 0.6


@dataclass(frozen=True, slots=True)
class Consistency:
    """The findings as they may stand, and what was changed and why ("" when nothing was)."""

    findings: Findings
    problem: str = ""


def reconcile(findings: Findings, case: Case, notes: Mapping[str, Any]) -> Consistency:
    """`findings` made consistent with the case's candidates and their verification."""
    culprit = findings.culprit
    if findings.verdict not in CULPRIT_VERDICTS or culprit is None or culprit.kind == "config":
        return Consistency(findings)
    label = f"{culprit.kind} {culprit.ref}"
    candidate = find_candidate(case, culprit.kind, culprit.ref)
    if candidate is None:
        why = "named a change this investigation did not find reaching production in the window"
        problem = f"recommend: {label} is not a change this investigation found reaching production; INCONCLUSIVE"
        return Consistency(downgrade(findings, findings, why), problem)
    verification = notes.get("verification", {})
    entry = verification.get(key_of(candidate.kind, candidate.ref), {}) if isinstance(verification, Mapping) else {}
    status = entry.get("status") if isinstance(entry, Mapping) else None
    if status == "rejected":
        reason = str(entry.get("reason", "")).strip()
        why = f"named a change the verification rejected{': ' + reason if reason else ''}"
        problem = f"recommend: the verification rejected {label}; INCONCLUSIVE"
        return Consistency(downgrade(findings, findings, why), problem)
    passed = status == "verified" if status else bool(candidate.checks) and all(c.passed for c in candidate.checks)
    if findings.verdict == "ROOT_CAUSE" and not passed:
        lowered = findings.model_copy(
            update={"verdict": "PROBABLE_CAUSE", "confidence": min(findings.confidence, PROBABLE_CONFIDENCE)}
        )
        state = status or ("checks failed" if candidate.checks else "never verified")
        return Consistency(
            lowered, f"recommend: ROOT_CAUSE lowered to PROBABLE_CAUSE: {label} did not pass verification ({state})"
        )
    return Consistency(findings)

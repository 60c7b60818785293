"""VERIFY by a model: a checklist per hypothesis (each check passed, failed or unknown, citing
the calls it read), a status per hypothesis, and whether the question is settled.

The rule reasoner's verify has already read the proposed candidates' diffs and run its checks;
the model gets those diffs (their changed lines), the rule checks as a second opinion, and the
hypothesis agent's mechanism and falsifiers, and may read more through the role's tools. Its
checklist becomes the candidate's checks (replacing the rule checks of the same name), its status
moves the candidate's score, so the ranking, the report and a rule-run RECOMMEND read it like the
rule reasoner's own. An operational cause it verifies becomes an operational signal.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pm_worker.llm.case_view import (
    add_candidate,
    apply_checks,
    background,
    candidate_view,
    check_view,
    find_candidate,
    key_of,
    other_changes,
    sort_candidates,
)
from pm_worker.llm.citations import VerificationReview
from pm_worker.rules.reasoner import Candidate, Case, Check, Evidence

DIFF_LINES = 80
DIFF_LINE_CHARS = 240


def to_verify(case: Case) -> list[Candidate]:
    """The candidates this iteration proposed."""
    return [c for c in case.candidates if c.proposed_in and c.proposed_in == case.iteration]


def operational_hypotheses(notes: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The operational causes the hypothesis agent put forward for this iteration."""
    ranked = notes.get("hypotheses", {}).get("ranked", [])
    return [h for h in ranked if h.get("kind") == "operational" and h.get("proposed")]


# The rule reasoner's score and checks of a candidate (by id()), before any model's checklist.
Baseline = dict[int, tuple[float, list[Check]]]


def restore(case: Case, notes: Mapping[str, Any]) -> Baseline:
    """Re-apply what the model verified in earlier iterations (the rule reasoner's verify has just
    re-checked every proposed candidate, its own way); returns the rule reasoner's checks, so a
    candidate verified again starts from them."""
    baseline = {id(c): (c.score, list(c.checks)) for c in case.candidates}
    for key, verified in notes.get("verification", {}).items():
        kind, _, ref = str(key).partition(":")
        candidate = find_candidate(case, kind, ref)
        if candidate is not None and verified.get("checklist"):
            apply_checks(candidate, str(verified["status"]), verified["checklist"])
    sort_candidates(case)
    return baseline


def _diff_view(candidate: Candidate, diff_calls: set[str]) -> dict[str, Any]:
    facts = candidate.facts
    if facts is None:
        return {}
    cut = [line[:DIFF_LINE_CHARS] for line in facts.added[:DIFF_LINES]]
    gone = [line[:DIFF_LINE_CHARS] for line in facts.removed[:DIFF_LINES]]
    return {
        "diff_call_id": next((c for c in reversed(candidate.call_ids) if c in diff_calls), None),
        "added_lines": cut,
        "removed_lines": gone,
        "diff_shown_in_full": len(facts.added) <= DIFF_LINES and len(facts.removed) <= DIFF_LINES,
    }


def context(case: Case, notes: Mapping[str, Any]) -> str:
    """The investigation as the verification agent reads it."""
    ranked = {str(h.get("candidate")): h for h in notes.get("hypotheses", {}).get("ranked", []) if h.get("candidate")}
    verification = notes.get("verification", {})
    diff_calls = set(case.calls.get("diffs", []))
    current = to_verify(case)
    data = {
        **background(case),
        "hypothesis_iteration": case.iteration,
        "to_verify": [
            {
                **candidate_view(c, checks=False),
                **_diff_view(c, diff_calls),
                "hypothesis": {k: ranked[c.ref][k] for k in ("mechanism", "evidence", "falsified_by", "plausibility")}
                if c.ref in ranked
                else None,
                "rule_checks": [check_view(k) for k in c.checks],
                "rule_score": c.score,
            }
            for c in current
        ],
        "operational_hypotheses": operational_hypotheses(notes),
        "verified_earlier": [
            {
                **candidate_view(c, checks=True),
                "status": verification.get(key_of(c.kind, c.ref), {}).get("status", "checked by the rule reasoner"),
            }
            for c in case.candidates
            if c.verified and not any(c is x for x in current)
        ],
        "waiting_candidates": len(case.unproposed),
        "changes": other_changes(case),
    }
    return (
        "The investigation so far, as JSON. Verify every hypothesis in `to_verify` and"
        " `operational_hypotheses`; `rule_checks` are the rule reasoner's mechanical checks, a second"
        " opinion to confirm or overturn. `waiting_candidates` were not proposed yet.\n\n"
        + json.dumps(data, indent=1, default=str)
    )


@dataclass(frozen=True, slots=True)
class Applied:
    """What the model's verification changed in the case."""

    verified: dict[str, dict[str, Any]]
    unmatched: list[str]
    not_addressed: list[str]


def apply(case: Case, review: VerificationReview, baseline: Baseline) -> Applied:
    """Put the reviewed checklists into the case; returns the notes' verification entries."""
    entries: dict[str, dict[str, Any]] = {}
    unmatched: list[str] = []
    addressed: list[Candidate] = []
    for hypothesis in review.answer.hypotheses:
        entry = {**hypothesis.model_dump(mode="json"), "iteration": case.iteration}
        if hypothesis.kind == "operational":
            entries[key_of("operational", hypothesis.ref)] = entry
            if hypothesis.status == "verified":
                cited = sorted({c for item in hypothesis.checklist if item.outcome == "pass" for c in item.call_ids})
                claim = f"{hypothesis.ref}: {hypothesis.reason}"
                if all(e.claim != claim for e in case.operational):
                    case.operational.append(Evidence(claim, cited))
            continue
        candidate = find_candidate(case, hypothesis.kind, hypothesis.ref) or add_candidate(
            case, hypothesis.kind, hypothesis.ref, hypothesis.service
        )
        if candidate is None:
            unmatched.append(f"{hypothesis.kind} {hypothesis.ref}")
            continue
        if any(candidate is a for a in addressed):
            continue  # the first checklist of a candidate named twice stands
        if id(candidate) in baseline:
            candidate.score, candidate.checks = baseline[id(candidate)][0], list(baseline[id(candidate)][1])
        candidate.proposed_in = candidate.proposed_in or max(case.iteration, 1)
        apply_checks(candidate, hypothesis.status, entry["checklist"])
        entries[key_of(candidate.kind, candidate.ref)] = {**entry, "ref": candidate.ref}
        addressed.append(candidate)
    not_addressed = [c.ref for c in to_verify(case) if not any(c is a for a in addressed)]
    sort_candidates(case)
    return Applied(verified=entries, unmatched=unmatched, not_addressed=not_addressed)

"""HYPOTHESIZE by a model: it ranks the candidate causes the rule reasoner listed (and any change
or operational cause the gathered facts show that the rules missed), each with its mechanism,
its cited evidence and what would falsify it.

The rule reasoner has already found the first failing service, the blast radius and the
candidates, and proposed the first few; the model's ranking replaces that proposal: its top
candidates (as many as an iteration verifies) are the ones VERIFY reads next. A hypothesis
whose evidence cites nothing this investigation read is dropped and counted; a change the
gathered facts do not hold, or that never reached production, cannot be verified and is noted.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pm_worker.llm import gather_context
from pm_worker.llm.case_view import (
    MAX_CANDIDATES,
    add_candidate,
    background,
    candidate_view,
    check_view,
    find_candidate,
    key_of,
    other_changes,
)
from pm_worker.llm.citations import HypothesesReview
from pm_worker.llm.triage import triage_notes
from pm_worker.rules.reasoner import Candidate, Case, Evidence


def context(
    case: Case,
    notes: Mapping[str, Any],
    per_iteration: int,
    similar: Sequence[Mapping[str, Any]] = (),
    known: Sequence[Mapping[str, Any]] = (),
) -> str:
    """The investigation as the hypothesis agent reads it (with the similar past incidents the
    orchestrator found and the known issues of its services, if any: leads, not evidence of this
    investigation)."""
    verification = notes.get("verification", {})
    proposed = [c for c in case.candidates if c.proposed_in == case.iteration and not c.verified]
    waiting = [c for c in case.candidates if not c.verified and c.proposed_in != case.iteration]
    data = {
        **background(case),
        "hypothesis_iteration": max(case.iteration, 1),
        "verified_per_iteration": per_iteration,
        "candidates": [
            {**candidate_view(c, checks=False), "rule_proposed": i < len(proposed)}
            for i, c in enumerate([*proposed, *waiting][:MAX_CANDIDATES])
        ],
        "verified_earlier": [
            {
                **candidate_view(c, checks=False),
                "checks": [check_view(k) for k in c.checks],
                "status": verification.get(key_of(c.kind, c.ref), {}).get("status", "checked by the rule reasoner"),
            }
            for c in case.candidates
            if c.verified
        ],
        "other_changes": other_changes(case),
        **({"triage_agent": triage} if (triage := triage_notes(notes)) else {}),
        **({"reported_context": said} if (said := gather_context.reported(case, notes)) else {}),
        **({"similar_past_incidents": list(similar)} if similar else {}),
        **({"known_issues": list(known)} if known else {}),
    }
    return (
        "The investigation so far, as JSON. `candidates` are the changes the rule reasoner found in the"
        " window, those it would verify next first (`rule_proposed`); `other_changes` are the remaining"
        " deploys, commits and flag changes; `triage_agent`, when present, is what the triage agent saw"
        " first (its first failing service is a candidate the gathered facts may overturn);"
        " `reported_context`, when present, is what the ticket and chat say (people's reports,"
        " suspicions and actions: leads to check against the telemetry, never evidence by themselves);"
        " `similar_past_incidents`, when present, are earlier incidents and their verdicts, and"
        " `known_issues`, when present, are what people confirmed about these services (both leads,"
        " never evidence: they cite no call of this investigation). Rank the causes yourself;"
        " verification comes next.\n\n" + json.dumps(data, indent=1, default=str)
    )


@dataclass(frozen=True, slots=True)
class Applied:
    """What the model's hypotheses changed in the case."""

    ranked: list[dict[str, Any]]
    proposed: list[Candidate]
    unmatched: list[str]
    failure_order_changed: bool


def apply(case: Case, review: HypothesesReview, per_iteration: int) -> Applied:
    """Put the reviewed hypotheses into the case: the failure order (when the model showed another),
    the candidates it named, and the proposal for this iteration's verification."""
    answer = review.answer
    changed = bool(answer.first_failing_service) and answer.first_failing_service != case.first_failing
    if changed:
        case.first_failing = answer.first_failing_service
        case.blast_radius = [s for s in answer.blast_radius if s != case.first_failing]
        case.evidence.extend(Evidence(e.claim, list(e.call_ids)) for e in answer.failure_order_evidence)
    ranked: list[dict[str, Any]] = []
    chosen: list[Candidate] = []
    unmatched: list[str] = []
    for hypothesis in answer.hypotheses:
        candidate: Candidate | None = None
        if hypothesis.kind != "operational":
            candidate = find_candidate(case, hypothesis.kind, hypothesis.ref) or add_candidate(
                case, hypothesis.kind, hypothesis.ref, hypothesis.service
            )
            if candidate is None:
                unmatched.append(f"{hypothesis.kind} {hypothesis.ref}")
            elif not candidate.verified and not _among(candidate, chosen) and len(chosen) < per_iteration:
                chosen.append(candidate)
        ranked.append(
            {
                **hypothesis.model_dump(mode="json"),
                "candidate": candidate.ref if candidate is not None else None,
                # Operational causes need no diff: VERIFY checks them along with the proposed changes.
                "proposed": _among(candidate, chosen) if candidate is not None else hypothesis.kind == "operational",
            }
        )
    if chosen:
        # The model's proposal replaces the rule reasoner's for this iteration.
        for candidate in case.candidates:
            if candidate.proposed_in == case.iteration and not candidate.verified and not _among(candidate, chosen):
                candidate.proposed_in = 0
        case.iteration = max(case.iteration, 1)
        for candidate in chosen:
            candidate.proposed_in = case.iteration
    return Applied(ranked=ranked, proposed=chosen, unmatched=unmatched, failure_order_changed=changed)


def _among(candidate: Candidate, candidates: list[Candidate]) -> bool:
    return any(candidate is c for c in candidates)

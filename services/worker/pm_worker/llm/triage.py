"""TRIAGE by a model: what is failing, where it started, since when, and where to look next.

The rule reasoner's triage has already read the alert and the alerted metric (both cited) and put
the onset where that metric left its baseline. The model reads that state, may query the alert
and metrics again through the role's tools (other services' metrics, a wider window), and submits
`Triage`. Its answer goes back into the same state GATHER reads:

- a different onset, only with cited evidence and within `MAX_ONSET_LEAD` before the alert fired
  (GATHER's search window is anchored on it); when the rules could not read the alert (a tool of
  another shape), the agent reads it with the tool's own arguments and its cited onset, not in
  the future, anchors the window;
- a first failing service candidate and the affected services (blast radius), only with cited
  evidence; the rule HYPOTHESIZE recomputes the failure order from everything gathered and keeps
  the candidate where the gathered facts tie (or show no departure at all), and says so where
  they overturn it; the candidate also rides along in the notes for the hypothesis agent;
- the symptom, severity and the services to gather for, in the notes and the step output;
- the cited evidence, in the state's evidence.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from pm_worker.llm.citations import TriageReview
from pm_worker.rules.reasoner import LOOKBACK, Case, Evidence
from pm_worker.rules.signals import iso

# How far before the alert fired a model may move the onset: GATHER searches LOOKBACK before it.
MAX_ONSET_LEAD = timedelta(hours=24)
SERIES_POINTS = 180


def context(case: Case) -> str:
    """The rule reasoner's triage as the triage agent reads it."""
    onset = case.alert_onset
    anchor = case.fired_at or case.onset
    end = anchor + timedelta(minutes=15) if anchor is not None else None
    data = {
        "alert": case.alert,
        "alert_call_ids": case.calls.get("alert", []),
        "fired_at": iso(case.fired_at) if case.fired_at else None,
        "onset": iso(case.onset) if case.onset else None,
        "onset_call_ids": case.calls.get("alert_metric", []),
        "onset_rule": (
            {"baseline": onset.baseline, "peak": onset.peak, "direction": onset.direction}
            if onset is not None
            else "the alerted metric showed no departure; the onset is five minutes before the alert fired"
            if case.onset is not None
            else "no onset: the alert has no time"
        ),
        "alert_metric_series": {
            f"{service} {metric}": [[iso(at), value] for at, value in points[-SERIES_POINTS:]]
            for (service, metric), points in sorted(case.series.items())
        },
        "gather_window": (
            {"start": iso(case.onset - LOOKBACK), "end": iso(end)}
            if case.onset is not None and end is not None
            else None
        ),
        "evidence": [{"claim": e.claim, "call_ids": e.call_ids} for e in case.evidence],
        "problems": case.problems,
    }
    return (
        "The investigation so far, as JSON: the alert the rule reasoner read, its onset (where the alerted"
        " metric left its baseline) and the alerted metric's series. The next steps search logs, traces,"
        " metrics and changes in `gather_window`, which moves with the onset.\n\n"
        + json.dumps(data, indent=1, default=str)
    )


@dataclass(frozen=True, slots=True)
class Applied:
    """What the model's triage changed in the case, and the notes it leaves for later steps."""

    triage: dict[str, Any]
    onset_changed: bool
    first_failing_changed: bool
    refused: list[str]


def apply(case: Case, review: TriageReview) -> Applied:
    """Put the reviewed triage into the case."""
    answer = review.answer
    refused: list[str] = []
    rule_onset = case.onset
    onset_changed = False
    if answer.onset is not None:
        at = answer.onset.astimezone(UTC)
        anchor = case.fired_at or case.onset
        if anchor is not None and not anchor - MAX_ONSET_LEAD <= at <= anchor:
            refused.append(
                f"onset {iso(at)}: not within {MAX_ONSET_LEAD} before the alert fired ({iso(anchor)}), so the"
                " rule reasoner's onset stands"
            )
        elif anchor is None and at > datetime.now(UTC):
            refused.append(f"onset {iso(at)}: in the future")
        elif at != case.onset:
            case.onset = at
            onset_changed = True
            _add(case, answer.onset_evidence)
    if answer.first_failing_service:  # cited: review_triage cleared an uncited one
        case.triage_first_failing = answer.first_failing_service
    first_changed = bool(answer.first_failing_service) and answer.first_failing_service != case.first_failing
    if first_changed:
        case.first_failing = answer.first_failing_service
        case.blast_radius = [s for s in dict.fromkeys(answer.affected_services) if s != case.first_failing]
        _add(case, answer.first_failing_evidence)
    _add(case, answer.symptom_evidence)
    notes = {
        "symptom": answer.symptom,
        "severity": answer.severity,
        "affected_services": list(answer.affected_services),
        "first_failing_service": answer.first_failing_service,
        "first_failing_evidence": [e.model_dump(mode="json") for e in answer.first_failing_evidence],
        "onset": iso(case.onset) if case.onset else None,
        "rule_onset": iso(rule_onset) if rule_onset else None,
        "gather_services": list(answer.gather_services),
    }
    return Applied(triage=notes, onset_changed=onset_changed, first_failing_changed=first_changed, refused=refused)


def _add(case: Case, evidence: Any) -> None:
    for item in evidence:
        claim = Evidence(item.claim, list(item.call_ids))
        if claim not in case.evidence:
            case.evidence.append(claim)


def triage_notes(notes: Mapping[str, Any]) -> dict[str, Any] | None:
    """The triage agent's notes, for the later agents' context (None when no model triaged)."""
    found = notes.get("triage")
    return dict(found) if isinstance(found, Mapping) else None

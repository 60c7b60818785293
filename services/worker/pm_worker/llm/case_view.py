"""The rule reasoner's case as the LLM roles read it, and the pieces their answers change.

The models reason over the state the rule reasoner gathered (every fact with its call ids) instead
of collecting it again. Their answers come back into the same state (`rules.steps.dump_case`), so
the next step, whichever reasoner runs it, and the report read them like the rule reasoner's own.
What the state has no field for (the model's mechanisms, falsifiers, verification statuses) rides
along under the state's `llm` key ("notes"), which every later step carries forward.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from pm_worker.rules.reasoner import LOOKBACK, Candidate, Case, Check
from pm_worker.rules.signals import iso, parse_time

NOTES_KEY = "llm"
MAX_ERRORS = 20
MAX_CANDIDATES = 40
MAX_CHANGES = 30
MAX_FILES = 15
# A commit sha given by its prefix must be at least this long to be matched.
MIN_SHA_PREFIX = 7
SERIOUS = ("ERROR", "FATAL", "CRITICAL")
# How a verification status moves a candidate's rule score: the model is the verifier of record
# in the modes that run it, so its status decides the order; the rule score breaks ties.
STATUS_WEIGHT = {"verified": 10.0, "unverified": 0.0, "rejected": -10.0}


def notes_of(states: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """The LLM notes the input states carry (the triage, the ticket and chat context, verifications
    joined, the latest hypotheses)."""
    notes: dict[str, Any] = {}
    for state in states:
        found = state.get(NOTES_KEY)
        if not isinstance(found, Mapping):
            continue
        if isinstance(found.get("triage"), Mapping):
            notes["triage"] = dict(found["triage"])
        if isinstance(found.get("context"), Mapping):
            notes["context"] = dict(found["context"])
        if isinstance(found.get("hypotheses"), Mapping):
            notes["hypotheses"] = dict(found["hypotheses"])
        if isinstance(found.get("verification"), Mapping):
            notes["verification"] = {**notes.get("verification", {}), **found["verification"]}
    return notes


def carry_notes(states: Sequence[Mapping[str, Any]], state: dict[str, Any]) -> dict[str, Any]:
    """`state` with the notes of its input states, so a step the rule reasoner ran keeps what an
    earlier LLM step found for a later one."""
    notes = notes_of(states)
    return {**state, NOTES_KEY: notes} if notes else state


def errors(case: Case, limit: int = MAX_ERRORS) -> list[dict[str, Any]]:
    """The first serious error records, compact."""
    return [
        {k: e.get(k) for k in ("timestamp", "service", "severity_text", "msg", "message", "stack") if e.get(k)}
        for e in case.errors
        if str(e.get("severity_text", "")).upper() in SERIOUS
    ][:limit]


def candidate_view(candidate: Candidate, *, checks: bool = True) -> dict[str, Any]:
    """One candidate change as a model reads it."""
    view: dict[str, Any] = {
        "kind": candidate.kind,
        "ref": candidate.ref,
        "service": candidate.service,
        "reached_production": iso(candidate.at),
        "title": candidate.title,
        "files": list(candidate.files[:MAX_FILES]),
        "call_ids": sorted({c for c in candidate.call_ids if c}),
    }
    if checks and candidate.checks:
        view["checks"] = [check_view(k) for k in candidate.checks]
        view["score"] = candidate.score
    return view


def check_view(check: Check) -> dict[str, Any]:
    """One check as a model reads it."""
    return {"name": check.name, "passed": check.passed, "detail": check.detail, "call_ids": check.call_ids}


def background(case: Case) -> dict[str, Any]:
    """What every role reads first: the symptom, its onset, where it started, the errors, the evidence."""
    return {
        "alert": case.alert,
        "alert_call_ids": case.calls.get("alert", []),
        "fired_at": iso(case.fired_at) if case.fired_at else None,
        "onset": iso(case.onset) if case.onset else None,
        "onset_call_ids": case.calls.get("alert_metric", []),
        "first_failing_service": case.first_failing,
        "blast_radius": case.blast_radius,
        "service_departures": {
            service: sorted(({"metric": metric, "at": iso(at)} for at, metric, _ in found), key=lambda d: str(d["at"]))[
                :6
            ]
            for service, found in sorted(case.departures.items())
        },
        "error_onsets": {service: iso(at) for service, at in sorted(case.error_onsets.items())},
        "error_log_call_ids": case.calls.get("errors", [])[:5],
        "errors": errors(case),
        "growing_log_patterns": [
            {k: p.get(k) for k in ("signature", "service", "count", "delta_vs_baseline") if p.get(k) is not None}
            for p in case.patterns
            if str(p.get("delta_vs_baseline", "")).startswith("+")
        ][:10],
        "pattern_call_ids": case.calls.get("patterns", []),
        "evidence": [{"claim": e.claim, "call_ids": e.call_ids} for e in case.evidence],
        "problems": case.problems,
    }


def key_of(kind: str, ref: str) -> str:
    """How notes name a hypothesis."""
    return f"{kind}:{ref}"


def find_candidate(case: Case, kind: str, ref: str) -> Candidate | None:
    """The candidate a model's (kind, ref) names: a commit by its sha or a unique prefix of it, a
    flag by its name; None when no candidate matches."""
    ref = ref.strip()
    if kind in ("commit", "config"):
        exact = [c for c in case.candidates if c.kind == "commit" and c.ref == ref]
        if exact:
            return exact[0]
        if len(ref) >= MIN_SHA_PREFIX:
            prefixed = [c for c in case.candidates if c.kind == "commit" and c.ref.startswith(ref.lower())]
            if len(prefixed) == 1:
                return prefixed[0]
        return None
    if kind == "flag":
        named = [c for c in case.candidates if c.kind == "flag" and c.ref.lower() == ref.lower()]
        return named[0] if named else None
    return None


def add_candidate(case: Case, kind: str, ref: str, service: str) -> Candidate | None:
    """A new candidate for a change the gathered changes hold but the rules did not list (a commit
    outside their heuristics, a flag outside the window); None when the change is not there, or
    never reached production as far as the deploys show."""
    ref = ref.strip()
    if kind in ("commit", "config"):
        commits = [
            c
            for c in case.commits
            if str(c.get("sha", "")) == ref
            or (len(ref) >= MIN_SHA_PREFIX and str(c.get("sha", "")).startswith(ref.lower()))
        ]
        if len(commits) != 1:
            return None
        commit = commits[0]
        sha = str(commit.get("sha", ""))
        deployed = _deploy_of(case, commit, service)
        if deployed is None:
            return None
        at, deploy_service = deployed
        candidate = Candidate(
            kind="commit",
            ref=sha,
            service=deploy_service,
            at=at,
            title=str(commit.get("message", "")).splitlines()[0] if commit.get("message") else "",
            files=tuple(commit.get("files_changed", ()) or ()),
            call_ids=[*case.calls.get("deploys", []), *case.calls.get("commits", [])],
        )
    elif kind == "flag":
        flags = [f for f in case.flags if str(f.get("flag", f.get("name", ""))).lower() == ref.lower()]
        if not flags:
            return None
        flag = flags[-1]
        name = str(flag.get("flag", flag.get("name", "")))
        candidate = Candidate(
            kind="flag",
            ref=name,
            service=str(flag.get("service", "")) or service,
            at=parse_time(str(flag.get("timestamp"))),
            title=f"flag {name} {flag.get('change', '')}".strip(),
            call_ids=list(case.calls.get("flags", [])),
        )
    else:
        return None
    case.candidates.append(candidate)
    return candidate


def _deploy_of(case: Case, commit: Mapping[str, Any], service: str) -> tuple[datetime, str] | None:
    """When and with which service `commit` reached production: the deploy naming it, else the
    first deploy of `service` after it (before the alert)."""
    sha = str(commit.get("sha", ""))
    committed = parse_time(str(commit.get("timestamp")))
    horizon = (case.fired_at or case.onset or committed) + timedelta(minutes=15)
    for deploy in case.deploys:
        at = parse_time(str(deploy.get("timestamp")))
        if deploy.get("commit_sha") == sha and at <= horizon:
            return at, str(deploy.get("service", ""))
    for deploy in case.deploys:
        at = parse_time(str(deploy.get("timestamp")))
        if service and deploy.get("service") == service and committed <= at <= horizon:
            return at, service
    return None


def other_changes(case: Case) -> dict[str, Any]:
    """The gathered changes the candidates do not already cover: commits and flags in the window,
    and the deploys (for what shipped when, and rollbacks)."""
    listed = {c.ref for c in case.candidates}
    start = (case.onset - LOOKBACK) if case.onset else None
    end = (case.fired_at or case.onset) + timedelta(minutes=15) if case.onset else None

    def within(value: Any) -> bool:
        if start is None or end is None or not value:
            return True
        return start <= parse_time(str(value)) <= end

    return {
        "deploys": [
            {k: d.get(k) for k in ("timestamp", "service", "commit_sha", "version") if d.get(k) is not None}
            for d in case.deploys
            if within(d.get("timestamp"))
        ][:MAX_CHANGES],
        "deploy_call_ids": case.calls.get("deploys", []),
        "commits": [
            {
                "sha": c.get("sha"),
                "timestamp": c.get("timestamp"),
                "author": c.get("author"),
                "message": str(c.get("message", "")).splitlines()[0] if c.get("message") else "",
                "files": list(c.get("files_changed", ()) or ())[:MAX_FILES],
            }
            for c in case.commits
            if c.get("sha") not in listed and within(c.get("timestamp"))
        ][:MAX_CHANGES],
        "commit_call_ids": case.calls.get("commits", []),
        "flags": [f for f in case.flags if str(f.get("flag", f.get("name", ""))) not in listed][:MAX_CHANGES],
        "flag_call_ids": case.calls.get("flags", []),
    }


def apply_checks(candidate: Candidate, status: str, checklist: Sequence[Mapping[str, Any]]) -> None:
    """Make a model's checklist the candidate's checks: its checks replace the rule reasoner's of
    the same name (the others stay), `unknown` counts as not passed, and its status moves the
    rule score (STATUS_WEIGHT)."""
    mine = [
        Check(
            str(item["check"]),
            item["outcome"] == "pass",
            str(item["detail"]) if item["outcome"] != "unknown" else f"unknown: {item['detail']}",
            list(item.get("call_ids") or []),
        )
        for item in checklist
    ]
    names = {c.name for c in mine}
    candidate.checks = [*mine, *(c for c in candidate.checks if c.name not in names)]
    candidate.score = round(candidate.score + STATUS_WEIGHT[status], 3)


def sort_candidates(case: Case) -> None:
    """Verified candidates first, best first (as the rule reasoner's verify leaves them)."""
    case.candidates.sort(key=lambda c: (not c.verified, -c.score, c.at))

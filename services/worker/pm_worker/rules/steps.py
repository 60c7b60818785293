"""The rule reasoner one step at a time: each agent role runs one phase on a JSON state.

The orchestrator dispatches these roles as agent steps; a step's input names the state the
previous phase left (one or several, for the parallel gather steps), and its output is the new
state plus a short summary for the investigation row. States are plain JSON, so they can be
stored in S3 and read back by another worker.

| role | phase | needs |
|---|---|---|
| `triage` | TRIAGE | nothing |
| `gather.logs`, `gather.metrics`, `gather.traces`, `gather.changes`, `gather.context` | GATHER | the triage state |
| `hypothesize` | HYPOTHESIZE | the gather states (merged); in later iterations, the last verify state |
| `verify` | VERIFY | the hypothesize state; its output says `again: true` when another iteration could settle it |
| `recommend` | RECOMMEND | the verify state; its output holds the findings |

RECOMMEND also accepts earlier states (several gather states, or a hypothesize state) when the
orchestrator concludes a partial investigation after a step kept failing: what was not analysed
yet and needs no tools (HYPOTHESIZE) is done on the spot, and unverified candidates are reported
as untested.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import fields
from datetime import datetime
from typing import Any

from pm_worker.rules.reasoner import (
    CANDIDATES_PER_ITERATION,
    GATHER_PARTS,
    Candidate,
    Case,
    Check,
    ContextSources,
    Evidence,
    NoAlert,
    RuleReasoner,
)
from pm_worker.rules.signals import DiffFacts, NumberChange, Onset, iso, parse_time
from pm_worker.rules.toolbox import ToolBox

ROLES = ("triage", *(f"gather.{part}" for part in GATHER_PARTS), "hypothesize", "verify", "recommend")
# The capabilities each role's tool calls need: what a registry's roles section must allow.
ROLE_CAPABILITIES = {
    "triage": ("alerts.get", "metrics.query"),
    "gather.logs": ("logs.search", "logs.patterns"),
    "gather.metrics": ("metrics.query",),
    "gather.traces": ("traces.search",),
    "gather.changes": ("changes.deploys", "changes.commits", "flags.changes"),
    # Optional sources: without a server offering them the report names the gap.
    "gather.context": ("tickets.get", "comms.search"),
    # The LLM's HYPOTHESIZE may look up what the gathered state lacks (the rule reasoner's calls none).
    "hypothesize": (
        "logs.search",
        "metrics.query",
        "traces.search",
        "changes.deploys",
        "changes.commits",
        "flags.changes",
    ),
    # The rule reasoner's verify reads diffs; the LLM's may also check them against the telemetry.
    "verify": (
        "changes.diff",
        "changes.deploys",
        "changes.commits",
        "logs.search",
        "metrics.query",
        "traces.search",
    ),
    # The LLM's RECOMMEND may confirm what the state lacks (the rule reasoner's calls none).
    "recommend": (
        "logs.search",
        "metrics.query",
        "traces.search",
        "changes.deploys",
        "changes.commits",
        "changes.diff",
        "flags.changes",
    ),
}
STATE_VERSION = 2


class StepInputError(ValueError):
    """A step's input cannot be used (unknown role, missing or malformed state)."""


def _time(value: datetime | None) -> str | None:
    return iso(value) if value is not None else None


def _onset(value: Onset | None) -> dict[str, Any] | None:
    if value is None:
        return None
    return {"at": iso(value.at), "baseline": value.baseline, "peak": value.peak, "direction": value.direction}


def _load_onset(value: Mapping[str, Any] | None) -> Onset | None:
    if not value:
        return None
    return Onset(parse_time(value["at"]), float(value["baseline"]), float(value["peak"]), int(value["direction"]))


def _facts(value: DiffFacts | None) -> dict[str, Any] | None:
    if value is None:
        return None
    return {
        "added": list(value.added),
        "removed": list(value.removed),
        "files": list(value.files),
        "numbers": [[n.context, n.old, n.new] for n in value.numbers],
        "vocabulary": sorted(value.vocabulary),
        "names": sorted(value.names),
        "cosmetic": value.cosmetic,
    }


def _load_facts(value: Mapping[str, Any] | None) -> DiffFacts | None:
    if not value:
        return None
    return DiffFacts(
        added=tuple(value["added"]),
        removed=tuple(value["removed"]),
        files=tuple(value["files"]),
        numbers=tuple(NumberChange(*n) for n in value["numbers"]),
        vocabulary=frozenset(value["vocabulary"]),
        names=frozenset(value["names"]),
        cosmetic=bool(value["cosmetic"]),
    )


def dump_case(case: Case) -> dict[str, Any]:
    """The case as JSON-ready data."""
    return {
        "version": STATE_VERSION,
        "iteration": case.iteration,
        "alert": case.alert,
        "fired_at": _time(case.fired_at),
        "onset": _time(case.onset),
        "alert_onset": _onset(case.alert_onset),
        "errors": case.errors,
        "patterns": case.patterns,
        "series": [
            {"service": service, "metric": metric, "points": [[iso(at), value] for at, value in points]}
            for (service, metric), points in case.series.items()
        ],
        "departures": {
            service: [{"metric": metric, "onset": _onset(found)} for _, metric, found in items]
            for service, items in case.departures.items()
        },
        "error_onsets": {service: iso(at) for service, at in case.error_onsets.items()},
        "traces": case.traces,
        "deploys": case.deploys,
        "commits": case.commits,
        "flags": case.flags,
        "tickets": case.tickets,
        "messages": case.messages,
        "first_failing": case.first_failing,
        "triage_first_failing": case.triage_first_failing,
        "blast_radius": case.blast_radius,
        "candidates": [
            {
                "kind": c.kind,
                "ref": c.ref,
                "service": c.service,
                "at": iso(c.at),
                "title": c.title,
                "files": list(c.files),
                "call_ids": c.call_ids,
                "checks": [
                    {"name": k.name, "passed": k.passed, "detail": k.detail, "call_ids": k.call_ids} for k in c.checks
                ],
                "score": c.score,
                "proposed_in": c.proposed_in,
                "facts": _facts(c.facts),
            }
            for c in case.candidates
        ],
        "operational": [{"claim": e.claim, "call_ids": e.call_ids} for e in case.operational],
        "evidence": [{"claim": e.claim, "call_ids": e.call_ids} for e in case.evidence],
        "calls": case.calls,
        "problems": case.problems,
    }


def load_case(data: Mapping[str, Any]) -> Case:
    """A case from `dump_case` data; StepInputError when it is not one."""
    if not isinstance(data, Mapping) or data.get("version") != STATE_VERSION:
        raise StepInputError(f"not a rule-reasoner state of version {STATE_VERSION}")
    try:
        case = Case(
            alert=dict(data.get("alert") or {}),
            fired_at=parse_time(data["fired_at"]) if data.get("fired_at") else None,
            onset=parse_time(data["onset"]) if data.get("onset") else None,
            alert_onset=_load_onset(data.get("alert_onset")),
            errors=list(data.get("errors") or []),
            patterns=list(data.get("patterns") or []),
            series={
                (s["service"], s["metric"]): [(parse_time(at), float(v)) for at, v in s["points"]]
                for s in data.get("series") or []
            },
            error_onsets={k: parse_time(v) for k, v in (data.get("error_onsets") or {}).items()},
            traces=list(data.get("traces") or []),
            deploys=list(data.get("deploys") or []),
            commits=list(data.get("commits") or []),
            flags=list(data.get("flags") or []),
            tickets=list(data.get("tickets") or []),
            messages=list(data.get("messages") or []),
            first_failing=str(data.get("first_failing") or ""),
            triage_first_failing=str(data.get("triage_first_failing") or ""),
            blast_radius=list(data.get("blast_radius") or []),
            operational=[Evidence(e["claim"], list(e["call_ids"])) for e in data.get("operational") or []],
            evidence=[Evidence(e["claim"], list(e["call_ids"])) for e in data.get("evidence") or []],
            calls={k: list(v) for k, v in (data.get("calls") or {}).items()},
            problems=list(data.get("problems") or []),
            iteration=int(data.get("iteration") or 0),
        )
        for service, items in (data.get("departures") or {}).items():
            for item in items:
                found = _load_onset(item["onset"])
                if found is not None:
                    case.departures.setdefault(service, []).append((found.at, item["metric"], found))
        for c in data.get("candidates") or []:
            case.candidates.append(
                Candidate(
                    kind=c["kind"],
                    ref=c["ref"],
                    service=c["service"],
                    at=parse_time(c["at"]),
                    title=c["title"],
                    files=tuple(c["files"]),
                    call_ids=list(c["call_ids"]),
                    checks=[Check(k["name"], bool(k["passed"]), k["detail"], list(k["call_ids"])) for k in c["checks"]],
                    score=float(c["score"]),
                    proposed_in=int(c.get("proposed_in") or 0),
                    facts=_load_facts(c.get("facts")),
                )
            )
    except (KeyError, TypeError, ValueError) as exc:
        raise StepInputError(f"malformed rule-reasoner state: {type(exc).__name__}: {exc}") from None
    return case


def merge(cases: Sequence[Case]) -> Case:
    """The parallel gather states as one: each part filled its own fields; call ids are joined."""
    if not cases:
        raise StepInputError("nothing to merge: the gather states are missing")
    merged = cases[0]
    for other in cases[1:]:
        for spec in fields(Case):
            mine, theirs = getattr(merged, spec.name), getattr(other, spec.name)
            if spec.name == "calls":
                for topic, ids in theirs.items():
                    merged.calls[topic] = sorted({*mine.get(topic, []), *ids})
            elif spec.name == "series":  # triage read the alerted metric; the metrics part read them all
                merged.series = {**mine, **theirs} if len(theirs) >= len(mine) else {**theirs, **mine}
            elif spec.name == "iteration":
                merged.iteration = max(mine, theirs)
            elif spec.name in ("problems", "evidence"):
                setattr(merged, spec.name, [*mine, *[x for x in theirs if x not in mine]])
            elif not mine and theirs:
                setattr(merged, spec.name, theirs)
    return merged


async def run_role(
    tools: ToolBox,
    role: str,
    states: Sequence[Mapping[str, Any]],
    *,
    per_iteration: int = CANDIDATES_PER_ITERATION,
    sources: ContextSources | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run one role on the previous state(s); returns (new state, summary output). `sources`: where
    `gather.context` looks (the investigation's ticket and chat)."""
    if role not in ROLES:
        raise StepInputError(f"unknown rule-reasoner role {role!r}; expected one of {', '.join(ROLES)}")
    reasoner = RuleReasoner(tools, per_iteration=per_iteration, sources=sources)
    summary: dict[str, Any]
    if role == "triage":
        case = Case()
        try:
            await reasoner.triage(case)
        except NoAlert as exc:
            raise StepInputError(str(exc)) from None
        summary = {"alert": case.alert, "onset": _time(case.onset), "fired_at": _time(case.fired_at)}
    elif role.startswith("gather."):
        case = load_case(_one(states, role))
        part = role.removeprefix("gather.")
        await reasoner.gather_part(case, part)
        summary = {"part": part, "calls": sum(len(v) for v in case.calls.values()), "problems": case.problems}
        if part == "context":
            summary |= {"tickets": [t.get("key", "") for t in case.tickets], "messages": len(case.messages)}
    elif role == "hypothesize":
        case = merge([load_case(s) for s in states])
        if case.iteration:  # a later iteration: the previous verify state
            reasoner.propose(case)
        else:
            await reasoner.hypothesize(case)
        summary = {
            "iteration": case.iteration,
            "first_failing_service": case.first_failing,
            "blast_radius": case.blast_radius,
            "proposed": [
                {"kind": c.kind, "ref": c.ref, "service": c.service, "title": c.title}
                for c in case.candidates
                if c.proposed_in == case.iteration
            ],
            "waiting": len(case.unproposed),
        }
    elif role == "verify":
        case = load_case(_one(states, role))
        await reasoner.verify(case)
        summary = {
            "iteration": case.iteration,
            "converged": case.converged,
            "unverified": len(case.unproposed),
            # Another HYPOTHESIZE ⇄ VERIFY iteration could settle it (the orchestrator bounds them).
            "again": not case.converged and bool(case.unproposed),
            "ranking": [{"ref": c.ref, "score": c.score, "title": c.title} for c in case.candidates if c.verified][:8],
        }
    else:
        case = merge([load_case(s) for s in states])
        if not case.iteration and case.onset is not None:
            await reasoner.hypothesize(case)  # a partial investigation: analysis needing no tools
        summary = reasoner.conclude(case)
    return dump_case(case), summary


def _one(states: Sequence[Mapping[str, Any]], role: str) -> Mapping[str, Any]:
    if len(states) != 1:
        raise StepInputError(f"{role} needs exactly one previous state, got {len(states)}")
    return states[0]

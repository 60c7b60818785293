"""The rule reasoner: deterministic playbooks over the same tools the LLM agents use.

Phases (each a method, so the orchestrator can run them as separate steps):

- triage: read the alert; find when the alerted signal left its baseline (the onset).
- gather: error logs and log patterns, every metric of every service, error traces, deploys,
  commits and flag changes around the onset; and what people said: the investigation's ticket
  (when its id is an issue key) and chat messages naming the alerted service in that window.
- hypothesize: the first failing service (earliest sustained departure; the alerted service on
  a tie), the blast radius (services departing after it), and candidate changes: every commit
  that went out with a deploy before the onset (a deploy ships the commits since that service's
  previous deploy that touch the service or shared code) plus flag changes.
- hypothesize also ranks the candidates (a failing stack frame in a changed file, then the
  location, then closeness to the onset) and proposes the first few for verification; when
  verification does not settle it, the next HYPOTHESIZE proposes the next few (one iteration
  each; the orchestrator bounds the iterations by mode, 1/3/5 for fast/balanced/deep).
- verify: per proposed candidate, checks with evidence — timing, location, fault signature (names, paths
  and numbers from the errors found in the change), mechanism (the kind of change matches the
  kind of symptom), substance (not only styles, tests, docs or comments), still deployed.
- conclude: ROOT_CAUSE only when every check of the best candidate passes and it clearly beats
  the rest; PROBABLE_CAUSE or CONTRIBUTING_FACTOR when partly supported; otherwise
  INCONCLUSIVE, saying that no change explains the symptom and naming the operational signal
  found (traffic surge, certificate expiry, disk full, saturation, upstream failure).

Every claim keeps the call ids of the tool calls it rests on.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from pm_errors import Unavailable
from pm_worker.rules.signals import (
    COSMETIC_FILES as _COSMETIC_FILES,
)
from pm_worker.rules.signals import (
    DiffFacts,
    Onset,
    analyse_diff,
    error_onsets,
    identifiers,
    iso,
    mechanisms,
    onset,
    parse_time,
    paths,
    words,
)
from pm_worker.rules.toolbox import Answer, ToolBox

LOOKBACK = timedelta(hours=6)
TIE = timedelta(seconds=90)
# How far the best candidate's score must lead the next one's to be called clearly better.
CLEAR_MARGIN = 1.5
# Metrics come in one-minute buckets: a departure dated at a bucket's start may begin up to a
# minute later, so a change up to one step after that date can still be its cause.
STEP = timedelta(seconds=60)
PAGE = 200  # records per page of a paged query
# Candidates verified per hypothesis iteration (each commit costs one diff): the rest wait for
# the next iteration.
CANDIDATES_PER_ITERATION = 4
GATHER_PARTS = ("logs", "metrics", "traces", "changes", "context")
MAX_MESSAGES = 50  # chat messages kept
# An issue tracker key (Jira and the like): only such ticket ids are looked up.
_ISSUE_KEY = re.compile(r"^[A-Z][A-Z0-9_]*-[0-9]+$")
MAX_RECORDS = 5000  # records read per query at most
_SHARED_DIRS = re.compile(r"^(pkg|lib|libs|shared|common|internal|platform|vendor)/")
_CONFIG_FILE = re.compile(r"\.(ya?ml|json|toml|ini|env|properties|conf|cfg|tf|hcl)$")
_TRAFFIC = re.compile(r"(request|rps|qps|throughput|traffic|arrival|sessions|users)", re.IGNORECASE)
_SATURATION = re.compile(r"(cpu|memory|mem_|heap|disk_used|saturation|utili[sz]ation|load)", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class ContextSources:
    """Where GATHER's context part looks: the investigation's ticket and chat, and the arguments
    of the `tickets.get` and `comms.search` tools as templates ({ticket_id}; {service}, {channel})."""

    ticket_id: str = ""
    channel: str = ""  # the chat channel the investigation was asked from, if any
    ticket_arguments: Mapping[str, str] = field(default_factory=lambda: {"issue_key": "{ticket_id}"})
    chat_arguments: Mapping[str, str] = field(default_factory=lambda: {"query": "{service}"})


class NoAlert(ValueError):
    """The investigation has no readable alert to start from."""


@dataclass
class Evidence:
    """A fact and the tool calls it comes from."""

    claim: str
    call_ids: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"claim": self.claim, "call_ids": sorted({c for c in self.call_ids if c})}


@dataclass
class Check:
    name: str
    passed: bool
    detail: str
    call_ids: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "passed": self.passed, "detail": self.detail, "call_ids": sorted(set(self.call_ids))}


@dataclass
class Candidate:
    """A change that might explain the symptom."""

    kind: str  # "commit" | "flag"
    ref: str  # sha or flag name
    service: str
    at: datetime  # when it reached production
    title: str
    files: tuple[str, ...] = ()
    facts: DiffFacts | None = None
    call_ids: list[str] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    score: float = 0.0
    # The hypothesis iteration that proposed it for verification (0: not proposed yet).
    proposed_in: int = 0

    @property
    def verified(self) -> bool:
        return bool(self.checks)

    def passed(self, name: str) -> bool:
        return any(c.name == name and c.passed for c in self.checks)


@dataclass
class Case:
    """What the reasoner knows about one investigation, phase by phase."""

    alert: dict[str, Any] = field(default_factory=dict)
    fired_at: datetime | None = None
    onset: datetime | None = None
    alert_onset: Onset | None = None
    errors: list[dict[str, Any]] = field(default_factory=list)
    patterns: list[dict[str, Any]] = field(default_factory=list)
    series: dict[tuple[str, str], list[tuple[datetime, float]]] = field(default_factory=dict)
    departures: dict[str, list[tuple[datetime, str, Onset]]] = field(default_factory=dict)
    error_onsets: dict[str, datetime] = field(default_factory=dict)
    traces: list[dict[str, Any]] = field(default_factory=list)
    deploys: list[dict[str, Any]] = field(default_factory=list)
    commits: list[dict[str, Any]] = field(default_factory=list)
    flags: list[dict[str, Any]] = field(default_factory=list)
    tickets: list[dict[str, Any]] = field(default_factory=list)
    messages: list[dict[str, Any]] = field(default_factory=list)
    first_failing: str = ""
    # The triage agent's first failing service, when it cited evidence for one: HYPOTHESIZE's
    # pick within a tie, and when nothing departs; the gathered facts overturn it otherwise.
    triage_first_failing: str = ""
    blast_radius: list[str] = field(default_factory=list)
    candidates: list[Candidate] = field(default_factory=list)
    operational: list[Evidence] = field(default_factory=list)
    evidence: list[Evidence] = field(default_factory=list)
    calls: dict[str, list[str]] = field(default_factory=dict)  # topic -> call ids
    problems: list[str] = field(default_factory=list)
    iteration: int = 0  # hypothesis iterations so far

    @property
    def unproposed(self) -> list[Candidate]:
        return [c for c in self.candidates if not c.proposed_in]

    @property
    def converged(self) -> bool:
        """The best verified candidate passes every check and clearly beats the next one."""
        verified = [c for c in self.candidates if c.verified]
        if not verified:
            return False
        runner_up = verified[1].score if len(verified) > 1 else 0.0
        return all(c.passed for c in verified[0].checks) and verified[0].score >= runner_up + CLEAR_MARGIN

    def cite(self, topic: str, answer: Answer) -> None:
        if answer.call_id:
            self.calls.setdefault(topic, []).append(answer.call_id)
        if answer.error:
            self.problems.append(f"{answer.capability}: {answer.error}")


class RuleReasoner:
    """Runs the playbooks against a ToolBox."""

    def __init__(
        self,
        tools: ToolBox,
        *,
        per_iteration: int = CANDIDATES_PER_ITERATION,
        sources: ContextSources | None = None,
    ) -> None:
        if per_iteration < 1:
            raise ValueError(f"per_iteration must be >= 1, got {per_iteration}")
        self._tools = tools
        self._per_iteration = per_iteration
        self._sources = sources or ContextSources()

    async def investigate(self, max_iterations: int = 3) -> dict[str, Any]:
        """All phases, HYPOTHESIZE ⇄ VERIFY at most `max_iterations` times; returns the findings
        (see `conclude`)."""
        case = Case()
        await self.triage(case)
        await self.gather(case)
        await self.hypothesize(case)
        await self.verify(case)
        while not case.converged and case.unproposed and case.iteration < max_iterations:
            self.propose(case)
            await self.verify(case)
        return self.conclude(case)

    # -- triage -----------------------------------------------------------------------------

    async def triage(self, case: Case) -> None:
        answer = await self._tools.call("alerts.get", {})
        case.cite("alert", answer)
        if not answer.ok:
            raise NoAlert(f"the alert could not be read: {answer.error}")
        case.alert = answer.data
        case.evidence.append(
            Evidence(
                f"alert: {case.alert.get('service', '?')} {case.alert.get('metric', '?')} observed"
                f" {case.alert.get('observed', '?')} against a threshold of {case.alert.get('threshold', '?')}"
                f" at {case.alert.get('fired_at', '?')}",
                list(case.calls.get("alert", [])),
            )
        )
        fired = case.alert.get("fired_at")
        case.fired_at = parse_time(str(fired)) if fired else None
        service, metric = case.alert.get("service"), case.alert.get("metric")
        if metric:
            series = await self._series(case, str(metric), str(service) if service else None, topic="alert_metric")
            points = series.get(str(service), []) if service else []
            case.alert_onset = onset(points, before=case.fired_at)
        if case.alert_onset is not None:
            case.onset = case.alert_onset.at
            case.evidence.append(
                Evidence(
                    f"{service} {metric} left its baseline ({case.alert_onset.baseline:.4g}) at {iso(case.onset)},"
                    f" reaching {case.alert_onset.peak:.4g}",
                    list(case.calls.get("alert_metric", [])),
                )
            )
        elif case.fired_at is not None:
            case.onset = case.fired_at - timedelta(minutes=5)

    # -- gather -----------------------------------------------------------------------------

    async def gather(self, case: Case) -> None:
        """Every gathering part (the orchestrator runs them as parallel steps instead)."""
        for part in GATHER_PARTS:
            await self.gather_part(case, part)

    async def gather_part(self, case: Case, part: str) -> None:
        """One of GATHER_PARTS; each fills its own fields of `case`, so parts merge by union."""
        if case.onset is None:
            case.problems.append(f"gather {part}: no alert time to anchor the search")
            return
        start = iso(case.onset - LOOKBACK)
        end = iso((case.fired_at or case.onset) + timedelta(minutes=15))
        if part == "logs":
            case.errors = await self._all(
                case, "logs.search", {"min_severity": "WARN", "start": start, "end": end}, topic="errors"
            )
            patterns = await self._tools.call("logs.patterns", {"limit": 50})
            case.cite("patterns", patterns)
            case.patterns = list(patterns.data.get("items", []))
        elif part == "metrics":
            known = await self._tools.call(
                "metrics.query", {"metric": str(case.alert.get("metric", "")), "step_seconds": 60}
            )
            case.cite("metric_catalog", known)
            for metric in known.data.get("known_metrics", []):
                await self._series(case, str(metric), None, topic=f"metric:{metric}", start=start, end=end)
        elif part == "traces":
            case.traces = await self._all(
                case, "traces.search", {"status": "ERROR", "start": start, "end": end}, topic="traces"
            )
        elif part == "changes":
            deploys = await self._tools.call("changes.deploys", {"end": end})
            case.cite("deploys", deploys)
            case.deploys = sorted(deploys.data.get("items", []), key=lambda d: str(d.get("timestamp", "")))
            commits = await self._tools.call("changes.commits", {"end": end, "limit": 1000})
            case.cite("commits", commits)
            case.commits = sorted(commits.data.get("items", []), key=lambda c: str(c.get("timestamp", "")))
            flags = await self._tools.call("flags.changes", {"start": start, "end": end})
            case.cite("flags", flags)
            case.flags = list(flags.data.get("items", []))
        elif part == "context":
            await self._context(case, start, end)
        else:
            raise ValueError(f"unknown gather part {part!r}; expected one of {', '.join(GATHER_PARTS)}")

    async def _context(self, case: Case, start: str, end: str) -> None:
        """The ticket (when its id is an issue key) and the chat messages naming the alerted service
        (and the triage agent's first failing service) in the window, each read cited (`calls`).
        What people wrote is a lead, not evidence: it never enters `evidence` or a score, and the
        report shows it apart. Both are optional sources: a deployment without a ticket or chat
        server gets a gap in the report, not a failed step."""
        sources = self._sources
        ticket_id = sources.ticket_id.strip()
        if _ISSUE_KEY.match(ticket_id):
            arguments = {k: v.format(ticket_id=ticket_id) for k, v in sources.ticket_arguments.items()}
            answer = await self._optional(case, "tickets.get", arguments, topic="ticket")
            if answer is not None and answer.ok:
                case.tickets = [dict(answer.data)]
        # The alerted service, and the triage agent's cited first failing service when it differs.
        services = [s for s in dict.fromkeys((str(case.alert.get("service", "")), case.triage_first_failing)) if s]
        needs_channel = any("{channel}" in template for template in sources.chat_arguments.values())
        if needs_channel and not sources.channel:
            return  # a search within the asking channel, with none given
        since, until = parse_time(start), parse_time(end)
        for service in services:
            values = {"service": service, "channel": sources.channel}
            arguments = {k: v.format(**values) for k, v in sources.chat_arguments.items()}
            answer = await self._optional(case, "comms.search", arguments, topic="chat")
            if answer is None:
                break  # no chat server: said once
            if not answer.ok:
                continue
            found = []
            for message in answer.data.get("items", answer.data.get("messages", [])):
                at = _message_time(message) if isinstance(message, Mapping) else None
                if (
                    isinstance(message, Mapping)
                    and (at is None or since <= at <= until)
                    and message not in case.messages
                ):
                    found.append(dict(message))
            case.messages = (case.messages + found)[:MAX_MESSAGES]

    async def _optional(
        self, case: Case, capability: str, arguments: Mapping[str, Any], *, topic: str
    ) -> Answer | None:
        """A call to a source the investigation can do without (None: no server offers it)."""
        try:
            answer = await self._tools.call(capability, arguments)
        except Unavailable as exc:
            case.problems.append(f"context: {exc}; {topic} not read")
            return None
        case.cite(topic, answer)
        return answer

    async def _all(
        self, case: Case, capability: str, arguments: Mapping[str, Any], *, topic: str
    ) -> list[dict[str, Any]]:
        """Every page of a paged query; a page cut by the registry's size cap is asked again smaller."""
        items: list[dict[str, Any]] = []
        offset, limit = 0, PAGE
        while True:
            answer = await self._tools.call(capability, {**arguments, "limit": limit, "offset": offset})
            case.cite(topic, answer)
            if answer.truncated and limit > 1:
                limit = max(1, limit // 4)
                continue
            page = list(answer.data.get("items", []))
            items += page
            offset += len(page)
            if not page or offset >= int(answer.data.get("total", 0)) or len(items) >= MAX_RECORDS:
                return items

    async def _series(
        self,
        case: Case,
        metric: str,
        service: str | None,
        *,
        topic: str,
        start: str | None = None,
        end: str | None = None,
    ) -> dict[str, list[tuple[datetime, float]]]:
        answer = await self._tools.call(
            "metrics.query",
            {
                "metric": metric,
                "service": service,
                "step_seconds": 60,
                "aggregation": "avg",
                "start": start,
                "end": end,
            },
        )
        case.cite(topic, answer)
        found: dict[str, list[tuple[datetime, float]]] = {}
        for series in answer.data.get("series", []):
            points = [(parse_time(str(p["timestamp"])), float(p["value"])) for p in series.get("points", [])]
            found[str(series.get("service", ""))] = points
            case.series[(str(series.get("service", "")), metric)] = points
        return found

    # -- hypothesize ------------------------------------------------------------------------

    async def hypothesize(self, case: Case) -> None:
        if case.onset is None:
            return
        horizon = (case.fired_at or case.onset) + timedelta(minutes=5)
        for (service, metric), points in case.series.items():
            if _TRAFFIC.search(metric):
                continue  # load is not failure: traffic metrics feed the surge signal, not the failure order
            departure = onset(points, before=horizon)
            if departure is not None and departure.at <= horizon and departure.at >= case.onset - timedelta(hours=2):
                case.departures.setdefault(service, []).append((departure.at, metric, departure))
        serious = [e for e in case.errors if str(e.get("severity_text", "")).upper() in ("ERROR", "FATAL", "CRITICAL")]
        case.error_onsets = {
            s: t for s, t in error_onsets(serious).items() if case.onset - timedelta(hours=2) <= t <= horizon
        }
        starts: dict[str, datetime] = {}
        for service, found in case.departures.items():
            starts[service] = min(at for at, _, _ in found)
        for service, at in case.error_onsets.items():
            starts[service] = min(at, starts.get(service, at))
        alerted = str(case.alert.get("service", ""))
        lead = case.triage_first_failing
        if starts:
            earliest = min(starts.values())
            tied = [s for s, at in starts.items() if at - earliest <= TIE]
            # Within a tie: the triage agent's cited pick, the alerted service, then one that also
            # logs errors (earliest first), then the one with more departing signals.
            never = earliest + timedelta(days=365)
            tied.sort(
                key=lambda s: (
                    s != lead,
                    s != alerted,
                    case.error_onsets.get(s, never),
                    -len(case.departures.get(s, [])),
                    s,
                )
            )
            case.first_failing = tied[0]
            if lead and lead != case.first_failing:
                when = f"departed at {iso(starts[lead])}" if lead in starts else "showed no departure"
                case.problems.append(
                    f"hypothesize: the triage agent's first failing service {lead} {when}, but"
                    f" {case.first_failing} departed first, at {iso(starts[case.first_failing])}: the gathered"
                    " facts overturn it"
                )
        else:
            case.first_failing = lead or alerted
        first_at = starts.get(case.first_failing, case.onset)
        case.blast_radius = sorted(s for s, at in starts.items() if s != case.first_failing and at >= first_at - TIE)
        for service in [case.first_failing, *case.blast_radius]:
            if service in starts:
                metrics = ", ".join(sorted({m for _, m, _ in case.departures.get(service, [])})) or "error logs"
                case.evidence.append(
                    Evidence(
                        f"{service} departed from its baseline at {iso(starts[service])} ({metrics})",
                        [*case.calls.get("errors", [])[:1], *_metric_calls(case, service)],
                    )
                )
        self._candidates(case, first_at)
        self.propose(case)

    def propose(self, case: Case) -> list[Candidate]:
        """Start the next hypothesis iteration: the next candidates to verify, most plausible first
        by what is known without their diffs (`_prior`). Returns them (none when all were)."""
        pending = case.unproposed
        if not pending:
            return []
        case.iteration += 1
        fault = _fault_text(case)
        clues = _Clues(
            frames=_fault_paths(case),
            names=identifiers(fault),
            symptom=mechanisms(words(fault) | words(str(case.alert.get("metric", "")))),
            related=frozenset({case.first_failing, *case.blast_radius}),
        )

        def prior(candidate: Candidate) -> tuple[float, float]:
            gap = abs((case.onset - candidate.at).total_seconds()) if case.onset else 0.0
            return (-_prior(case, candidate, clues), gap)

        batch = sorted(pending, key=prior)[: self._per_iteration]
        for candidate in batch:
            candidate.proposed_in = case.iteration
        return batch

    def _candidates(self, case: Case, first_at: datetime) -> None:
        onset_at = min(first_at, case.onset or first_at) + STEP
        deploy_calls = case.calls.get("deploys", [])
        commits_by_sha = {str(c.get("sha", "")): c for c in case.commits}
        previous: dict[str, datetime] = {}
        for deploy in case.deploys:
            at = parse_time(str(deploy.get("timestamp")))
            service = str(deploy.get("service", ""))
            since = previous.get(service, at - LOOKBACK)
            previous[service] = at
            if at > onset_at or at < onset_at - LOOKBACK:
                continue
            shipped = [
                c for c in case.commits if since < parse_time(str(c.get("timestamp"))) <= at and _touches(c, service)
            ]
            sha = str(deploy.get("commit_sha", ""))
            if sha in commits_by_sha and commits_by_sha[sha] not in shipped:
                shipped.append(commits_by_sha[sha])
            for commit in shipped:
                existing = next((c for c in case.candidates if c.ref == commit.get("sha")), None)
                if existing is not None:
                    continue
                case.candidates.append(
                    Candidate(
                        kind="commit",
                        ref=str(commit.get("sha", "")),
                        service=service,
                        at=at,
                        title=str(commit.get("message", "")).splitlines()[0] if commit.get("message") else "",
                        files=tuple(commit.get("files_changed", ()) or ()),
                        call_ids=[*deploy_calls, *case.calls.get("commits", [])],
                    )
                )
        for flag in case.flags:
            at = parse_time(str(flag.get("timestamp")))
            if onset_at - LOOKBACK <= at <= onset_at:
                case.candidates.append(
                    Candidate(
                        kind="flag",
                        ref=str(flag.get("flag", flag.get("name", "flag"))),
                        service=str(flag.get("service", "")),
                        at=at,
                        title=f"flag {flag.get('flag', flag.get('name', ''))} {flag.get('change', '')}".strip(),
                        call_ids=list(case.calls.get("flags", [])),
                    )
                )

    # -- verify -----------------------------------------------------------------------------

    async def verify(self, case: Case) -> None:
        """Check the candidates this iteration proposed (fetching their diffs), then score every
        candidate verified so far against each other; verified ones come first, best first."""
        if not case.candidates:
            return
        if not case.iteration:
            self.propose(case)
        fault = _fault_text(case)
        fault_names = identifiers(fault)
        fault_paths = _fault_paths(case)
        fault_words = words(fault) | words(str(case.alert.get("metric", "")))
        symptom = mechanisms(fault_words)
        related = {case.first_failing, *case.blast_radius}
        proposed = [c for c in case.candidates if c.proposed_in]
        for candidate in proposed:
            if candidate.kind == "commit" and candidate.facts is None:
                answer = await self._tools.call("changes.diff", {"sha": candidate.ref})
                case.cite("diffs", answer)
                candidate.call_ids.append(answer.call_id)
                candidate.facts = analyse_diff(str(answer.data.get("diff", "")), candidate.files)
        # Names that appear in many changes say little about any one of them.
        frequency: dict[str, int] = {}
        for candidate in proposed:
            for name in candidate.facts.names if candidate.facts else ():
                frequency[name] = frequency.get(name, 0) + 1
        fault_calls = [*case.calls.get("errors", [])[:2], *case.calls.get("alert", []), *case.calls.get("patterns", [])]
        for candidate in proposed:
            candidate.checks = []
            self._check(case, candidate, fault_names, fault_paths, symptom, related, frequency, fault_calls)
        case.candidates.sort(key=lambda c: (not c.verified, -c.score, c.at))

    def _check(
        self,
        case: Case,
        candidate: Candidate,
        fault_names: set[str],
        fault_paths: set[str],
        symptom: set[str],
        related: set[str],
        frequency: Mapping[str, int],
        fault_calls: list[str],
    ) -> None:
        onset_at = case.onset or candidate.at
        gap = onset_at - candidate.at
        checks = candidate.checks
        checks.append(
            Check(
                "timing",
                -STEP <= gap <= LOOKBACK,
                f"reached production {_duration(gap)} before the onset ({iso(candidate.at)})",
                list(candidate.call_ids[:1]),
            )
        )
        shared = candidate.kind == "commit" and _shared(candidate.files)
        if candidate.service == case.first_failing:
            location, where = True, "the first failing service"
        elif candidate.service in related and shared:
            location, where = True, "shared code, on a service in the blast radius"
        else:
            location, where = False, "not the first failing service"
        checks.append(
            Check(
                "location",
                location,
                f"{'shipped with' if candidate.kind == 'commit' else 'changed on'} {candidate.service} ({where})",
                list(candidate.call_ids[:1]),
            )
        )
        facts = candidate.facts
        if facts is not None:
            shared_names = {n for n in facts.names & fault_names if frequency.get(n, 0) <= 2}
            frame = {p for p in fault_paths if p and any(f.endswith(p) or p.endswith(f) for f in facts.files)}
            echoes = _number_echoes(case, facts)
            signature = bool(shared_names or frame or echoes)
            detail = (
                "; ".join(
                    part
                    for part in (
                        f"names from the errors in the change: {', '.join(sorted(shared_names)[:6])}"
                        if shared_names
                        else "",
                        f"failing stack frames in changed files: {', '.join(sorted(frame))}" if frame else "",
                        f"changed values seen in the symptom: {', '.join(echoes[:3])}" if echoes else "",
                    )
                    if part
                )
                or "nothing named in the errors appears in the change"
            )
            checks.append(Check("signature", signature, detail, [*candidate.call_ids[-1:], *fault_calls]))
            change_kinds = mechanisms(facts.vocabulary) | (
                {"capacity"}
                if any(n.factor >= 2 for n in facts.numbers)
                and symptom & {"pool", "timeout", "capacity", "memory", "retry"}
                else set()
            )
            matched = change_kinds & symptom
            checks.append(
                Check(
                    "mechanism",
                    bool(matched) and not facts.cosmetic,
                    f"the change is about {', '.join(sorted(matched))}, as the symptom"
                    if matched
                    else f"the change ({', '.join(sorted(change_kinds)) or 'no recognised mechanism'}) does not match"
                    f" the symptom ({', '.join(sorted(symptom)) or 'unclassified'})",
                    list(candidate.call_ids[-1:]),
                )
            )
            checks.append(
                Check(
                    "substance",
                    not facts.cosmetic and facts.effective_lines > 0,
                    "changes behaviour-bearing code or configuration"
                    if not facts.cosmetic
                    else "only styles, tests, docs, CI or comments",
                    list(candidate.call_ids[-1:]),
                )
            )
            strength = (
                3.0 * bool(frame) + min(2.5, sum(1.0 / frequency.get(n, 1) for n in shared_names)) + 2.0 * bool(echoes)
            )
        else:
            flag_words = words(candidate.title)
            matched = mechanisms(flag_words) & symptom
            checks.append(
                Check(
                    "signature",
                    bool(flag_words & fault_names),
                    "the flag is named in the errors"
                    if flag_words & fault_names
                    else "the flag is not named in the errors",
                    fault_calls,
                )
            )
            checks.append(
                Check(
                    "mechanism",
                    bool(matched),
                    f"flag about {', '.join(sorted(matched))}"
                    if matched
                    else "the flag's area does not match the symptom",
                    list(candidate.call_ids),
                )
            )
            checks.append(Check("substance", True, "a runtime behaviour switch", list(candidate.call_ids)))
            strength = 1.0 * bool(flag_words & fault_names)
        still = _still_deployed(case, candidate)
        checks.append(
            Check(
                "still_deployed",
                still,
                "no rollback to an older build before the alert" if still else "rolled back before the alert",
                list(case.calls.get("deploys", [])),
            )
        )
        score = strength
        score += (
            1.5 * candidate.passed("mechanism") + 1.0 * candidate.passed("location") + 0.5 * candidate.passed("timing")
        )
        if not candidate.passed("substance"):
            score -= 3.0
        if not candidate.passed("timing"):
            score -= 5.0
        # Closer to the onset is slightly more suspicious, never decisive.
        score += 0.25 * math.exp(-max(gap.total_seconds(), 0) / 3600)
        candidate.score = round(score, 3)

    # -- conclude ---------------------------------------------------------------------------

    def conclude(self, case: Case) -> dict[str, Any]:
        self._operational(case)
        verified = [c for c in case.candidates if c.verified]
        untested = [c for c in case.candidates if not c.verified]
        best = verified[0] if verified else None
        runner_up = verified[1].score if len(verified) > 1 else 0.0
        verdict, confidence = "INCONCLUSIVE", 0.3
        culprit: Candidate | None = None
        if best is not None and best.passed("timing") and best.passed("substance") and best.passed("still_deployed"):
            explains = best.passed("signature") and best.passed("mechanism")
            clear = best.score >= runner_up + CLEAR_MARGIN
            if explains and best.passed("location") and clear:
                verdict, confidence, culprit = "ROOT_CAUSE", min(0.95, 0.7 + 0.05 * (best.score - runner_up)), best
            elif explains and best.score > runner_up:
                verdict, confidence, culprit = "PROBABLE_CAUSE", 0.6 if clear else 0.5, best
            elif best.passed("mechanism") and best.passed("location") and clear and not case.operational:
                verdict, confidence, culprit = "CONTRIBUTING_FACTOR", 0.4, best
        if culprit is None and case.operational:
            confidence = 0.5
        hypotheses = [_hypothesis(c, c is culprit, verdict) for c in [*verified[:8], *untested[:8]]]
        operational = case.operational[0].claim if case.operational else ""
        if culprit is None:
            summary = "No change explains this." + (
                f" Operational signal: {operational}." if operational else " No operational signal was found either."
            )
            if untested:
                summary = (
                    f"No verified change explains this; {len(untested)} candidate change(s) were not verified"
                    f" within {case.iteration} hypothesis iteration(s)."
                    + (f" Operational signal: {operational}." if operational else "")
                )
        else:
            summary = (
                f"{culprit.title} ({culprit.ref[:8]}), shipped with {culprit.service} at {iso(culprit.at)},"
                " explains the symptom."
            ) + (f" {len(untested)} other candidate change(s) were not verified." if untested else "")
        return {
            "verdict": verdict,
            "confidence": round(confidence, 2),
            "iterations": case.iteration,
            "unverified_candidates": len(untested),
            "summary": summary,
            "onset": iso(case.onset) if case.onset else None,
            "alert": case.alert,
            "first_failing_service": case.first_failing,
            "blast_radius": case.blast_radius,
            "culprit": None
            if culprit is None
            else {
                "kind": culprit.kind,
                "ref": culprit.ref,
                "service": culprit.service,
                "title": culprit.title,
                "at": iso(culprit.at),
            },
            "root_cause_commit": culprit.ref
            if culprit is not None and culprit.kind == "commit" and verdict in ("ROOT_CAUSE", "PROBABLE_CAUSE")
            else "none",
            "operational_signal": operational,
            "remediation": _remediation(case, culprit, verdict),
            "hypotheses": hypotheses,
            "evidence": [e.as_dict() for e in [*case.evidence, *case.operational]],
            "timeline": _timeline(case),
            "problems": case.problems,
        }

    def _operational(self, case: Case) -> None:
        text = _fault_text(case).lower()
        calls = [*case.calls.get("errors", [])[:2], *case.calls.get("alert", [])]
        if re.search(r"x509|certificate|cert(ificate)? (has )?expired|tls handshake", text):
            case.operational.append(Evidence("certificate expiry or TLS handshake failures", calls))
        if re.search(r"no space left|disk (is )?full|read-only file system", text):
            case.operational.append(Evidence("disk full", calls))
        first_at = case.onset
        for (service, metric), points in sorted(case.series.items()):
            if not _TRAFFIC.search(metric) or first_at is None:
                continue
            departure = onset(points, before=(case.fired_at or first_at) + timedelta(minutes=5))
            if (
                departure is not None
                and departure.direction > 0
                and departure.ratio >= 2
                and departure.at <= first_at + TIE
            ):
                case.operational.append(
                    Evidence(
                        f"traffic surge: {service} {metric} rose {departure.ratio:.1f}x at {iso(departure.at)}",
                        _metric_calls(case, service),
                    )
                )
                break
        for (service, metric), points in sorted(case.series.items()):
            if service == case.first_failing and _SATURATION.search(metric) and points:
                peak = max(v for _, v in points)
                if 0.9 <= peak <= 1.0 or 90 <= peak <= 100:
                    case.operational.append(
                        Evidence(f"saturation: {service} {metric} reached {peak:.4g}", _metric_calls(case, service))
                    )
                    break
        if re.search(r"upstream|provider|third[- ]party|dependency", text) and not case.candidates:
            case.operational.append(Evidence("errors from an upstream dependency", calls))


@dataclass(frozen=True, slots=True)
class _Clues:
    """What the symptom says, for ranking candidates before their diffs are read."""

    frames: set[str]
    names: set[str]
    symptom: set[str]
    related: frozenset[str]


def _prior(case: Case, candidate: Candidate, clues: _Clues) -> float:
    """How plausible a candidate is from its metadata alone (files, message, service, time):
    a failing stack frame in a changed file, the first failing service (or shared code in the
    blast radius), names and the kind of change shared with the symptom, substance, closeness."""
    framed = any(p and any(f.endswith(p) or p.endswith(f) for f in candidate.files) for p in clues.frames)
    located = candidate.service == case.first_failing or (
        candidate.service in clues.related and candidate.kind == "commit" and _shared(candidate.files)
    )
    said = f"{candidate.title} {' '.join(candidate.files)}"
    named = len(identifiers(said) & clues.names)
    kind = mechanisms(words(said)) & clues.symptom
    cosmetic = bool(candidate.files) and all(_COSMETIC_FILES.search(f) for f in candidate.files)
    gap = abs((case.onset - candidate.at).total_seconds()) if case.onset else 0.0
    return (
        3.0 * framed
        + 2.0 * located
        + 1.0 * min(named, 3)
        + 1.5 * bool(kind)
        - 3.0 * cosmetic
        + 0.5 * math.exp(-gap / 3600)
    )


def _message_time(message: Mapping[str, Any]) -> datetime | None:
    """When a chat message was posted: an ISO time or a Slack epoch `ts`; None when unreadable."""
    value = message.get("timestamp") or message.get("ts")
    if value is None:
        return None
    try:
        at = parse_time(str(value))
    except ValueError:
        try:
            return datetime.fromtimestamp(float(str(value)), tz=UTC)
        except (ValueError, OverflowError):
            return None
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def _metric_calls(case: Case, service: str) -> list[str]:
    return [
        call
        for (s, metric), _ in case.series.items()
        if s == service
        for call in case.calls.get(f"metric:{metric}", [])
    ][:3]


def _fault_errors(case: Case) -> list[dict[str, Any]]:
    primary = [e for e in case.errors if e.get("service") == case.first_failing]
    return primary or case.errors


def _fault_paths(case: Case) -> set[str]:
    """Source paths the symptom names: in its text, and the files of its stack frames."""
    return paths(_fault_text(case)) | {
        str(e.get("stack", "")).split(":")[0] for e in _fault_errors(case) if e.get("stack")
    }


def _fault_text(case: Case) -> str:
    """What the symptom says: the alert, the first failing service's errors, growing log patterns."""
    parts = [str(case.alert.get(k, "")) for k in ("summary", "detail", "metric")]
    seen: set[str] = set()
    for error in _fault_errors(case):
        message = str(error.get("msg", error.get("message", "")))
        if message not in seen:
            seen.add(message)
            parts.append(message)
            parts.extend(
                str(v)
                for k, v in error.items()
                if k not in ("timestamp", "service", "severity_text", "msg", "trace_id", "span_id")
            )
    for pattern in case.patterns:
        delta = str(pattern.get("delta_vs_baseline", ""))
        if delta.startswith("+") and delta not in ("+0", "+0%"):
            parts.append(str(pattern.get("signature", "")))
    return "\n".join(parts)


def _number_echoes(case: Case, facts: DiffFacts) -> list[str]:
    """Changed values that show up in the symptom: a metric moving from the old to the new value,
    or the new value quoted by the failing service's errors."""
    echoes: list[str] = []
    errors = " ".join(
        " ".join(f"{k}={v}" for k, v in e.items() if k not in ("timestamp", "trace_id", "span_id"))
        for e in _fault_errors(case)
    )
    for change in facts.numbers:
        old_numbers = [float(n) for n in re.findall(r"\d+(?:\.\d+)?", change.old)]
        new_numbers = [float(n) for n in re.findall(r"\d+(?:\.\d+)?", change.new)]
        if len(old_numbers) != 1 or len(new_numbers) != 1 or old_numbers[0] == new_numbers[0]:
            continue
        old, new = old_numbers[0], new_numbers[0]
        for (service, metric), points in case.series.items():
            if service != case.first_failing or len(points) < 6:
                continue
            before_alert = [v for at, v in points if case.fired_at is None or at <= case.fired_at]
            head = sorted(v for _, v in points[: len(points) // 3])
            tail = sorted(before_alert[-5:])
            if head and tail and _near(head[len(head) // 2], old) and _near(tail[len(tail) // 2], new):
                echoes.append(f"{metric} {old:g} -> {new:g} ({change.context})")
        if new >= 100 and re.search(rf"(?<![\d.]){new:g}(?![\d.])", errors):
            echoes.append(f"{change.context} {new:g} quoted in errors")
    return echoes


def _near(value: float, target: float) -> bool:
    return abs(value - target) <= max(0.05 * abs(target), 0.5)


def _touches(commit: Mapping[str, Any], service: str) -> bool:
    files = [str(f) for f in commit.get("files_changed", ()) or ()]
    stem = re.sub(r"(-?svc|-?service|-?api)$", "", service.lower())
    return any(stem and stem in f.lower() for f in files) or _shared(files)


def _shared(files: Iterable[str]) -> bool:
    return any(_SHARED_DIRS.match(f) for f in files)


def _still_deployed(case: Case, candidate: Candidate) -> bool:
    if candidate.kind != "commit":
        return True
    commit = next((c for c in case.commits if c.get("sha") == candidate.ref), None)
    committed = parse_time(str(commit.get("timestamp"))) if commit else candidate.at
    for deploy in case.deploys:
        at = parse_time(str(deploy.get("timestamp")))
        if deploy.get("service") != candidate.service or not candidate.at < at <= (case.fired_at or at):
            continue
        shipped = next((c for c in case.commits if c.get("sha") == deploy.get("commit_sha")), None)
        if shipped is not None and parse_time(str(shipped.get("timestamp"))) < committed:
            return False
    return True


def _duration(gap: timedelta) -> str:
    seconds = int(gap.total_seconds())
    sign = "-" if seconds < 0 else ""
    seconds = abs(seconds)
    return (
        f"{sign}{seconds // 3600}h{seconds % 3600 // 60:02d}m"
        if seconds >= 3600
        else f"{sign}{seconds // 60}m{seconds % 60:02d}s"
    )


def _hypothesis(candidate: Candidate, chosen: bool, verdict: str) -> dict[str, Any]:
    failed = [c.name for c in candidate.checks if not c.passed]
    if not candidate.verified:
        status, because = "untested", "not verified: the hypothesis iterations ran out first"
    elif chosen:
        status, because = ("confirmed" if verdict == "ROOT_CAUSE" else "supported"), ""
    else:
        status = "rejected"
        because = f"failed checks: {', '.join(failed)}" if failed else "a better-supported change explains the symptom"
    return {
        "kind": candidate.kind,
        "ref": candidate.ref,
        "service": candidate.service,
        "title": candidate.title,
        "at": iso(candidate.at),
        "score": candidate.score,
        "iteration": candidate.proposed_in or None,
        "status": status,
        "rejected_because": because,
        "checks": [c.as_dict() for c in candidate.checks],
    }


def _remediation(case: Case, culprit: Candidate | None, verdict: str) -> dict[str, Any]:  # noqa: PLR0911 - one answer per kind of cause
    if culprit is not None and culprit.kind == "flag":
        return {"class": "config-revert", "steps": [f"Turn flag {culprit.ref} back ({culprit.title})."]}
    if culprit is not None:
        text = _fault_text(case).lower()
        if culprit.files and all(_CONFIG_FILE.search(f) for f in culprit.files):
            return {
                "class": "config-revert",
                "steps": [f"Revert the configuration change {culprit.ref[:8]} and redeploy {culprit.service}."],
            }
        if re.search(r"does not exist|no such table|undefined (table|column)|missing (table|column|migration)", text):
            return {
                "class": "roll-forward",
                "steps": [
                    f"Ship what {culprit.ref[:8]} depends on (e.g. the missing migration),"
                    f" or roll {culprit.service} back."
                ],
            }
        return {
            "class": "rollback",
            "steps": [
                f"Roll {culprit.service} back to the build before {culprit.ref[:8]} ({culprit.title}).",
                "Then fix forward with a test that reproduces the symptom.",
            ],
        }
    signals = " ".join(e.claim for e in case.operational)
    if "certificate" in signals:
        return {
            "class": "rotate-cert",
            "steps": [
                "Rotate the expired certificate and reload the services serving it.",
                "Alert on certificate expiry ahead of time.",
            ],
        }
    if "traffic surge" in signals or "saturation" in signals:
        return {
            "class": "scale",
            "steps": [
                f"Scale {case.first_failing} (and what it calls) out; shed or queue load.",
                "Review autoscaling limits.",
            ],
        }
    if "disk full" in signals:
        return {"class": "free-disk", "steps": [f"Free space on {case.first_failing}'s volume and find what fills it."]}
    if "upstream" in signals:
        return {"class": "failover", "steps": ["Fail over to another provider or region, or degrade gracefully."]}
    return {
        "class": "investigate",
        "steps": ["No change or operational signal explains the symptom; widen the search window or add data sources."],
    }


def _timeline(case: Case) -> list[dict[str, str]]:
    events: list[tuple[datetime, str]] = []
    for candidate in case.candidates[:5]:
        events.append(
            (candidate.at, f"{candidate.kind} {candidate.ref[:12]} reached {candidate.service}: {candidate.title}")
        )
    if case.onset:
        events.append((case.onset, f"{case.alert.get('service')} {case.alert.get('metric')} left its baseline"))
    for service, at in sorted(case.error_onsets.items(), key=lambda x: x[1]):
        events.append((at, f"{service} started logging errors"))
    if case.fired_at:
        events.append((case.fired_at, f"alert fired: {case.alert.get('summary', '')}"))
    return [{"at": iso(at), "event": text} for at, text in sorted(events, key=lambda e: e[0])]

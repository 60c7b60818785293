"""Pure signal analysis for the rule reasoner: onsets, error signatures, and what a diff changes.

Nothing here calls a tool; the playbooks feed it tool results. Every function is deterministic.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from statistics import fmean, pstdev
from typing import Any

# Words too common in logs, code and diffs to say anything about a fault.
_STOP = frozenset(
    """
    the and for with from that this not are was were has have had but into onto out over under
    error errors err failed failure fail failing warn warning info debug fatal exception
    request requests response responses call calls called service services svc server client
    http https grpc rpc api get post put delete status code true false return
    returns func function def var let const new old value values data time times ms sec secs
    seconds second minute minutes s m h id ids ctx context req res resp msg message string int
    bool err ok if else end go py ts js src pkg internal lib test tests handler handle main
    refactor chore fix feat perf docs ci bump update tidy use using via per after before when
    then than its all any one two can will now still only more less some each
    """.split()
)

# Mechanism vocabularies: a symptom in one of these families is explained by a change in the
# same family. Words are compared after splitting identifiers into lower-case parts.
MECHANISMS: Mapping[str, frozenset[str]] = {
    "timeout": frozenset(
        "timeout timeouts deadline deadlines withtimeout exceeded cancel canceled cancelled budget".split()
    ),
    "pool": frozenset("pool pools conns conn connections connection maxconns acquire saturated exhausted".split()),
    "retry": frozenset("retry retries retrying backoff attempts attempt jitter storm".split()),
    "logging": frozenset("log logs logging level verbose debug disk space full rotate rotation".split()),
    "memory": frozenset("memory heap oom alloc allocation buffer buffers gc rss limit".split()),
    "query": frozenset("query queries select sql n+1 lookup loop per item items fanout fan".split()),
    "schema": frozenset("relation table column migration schema exist exists missing undefined".split()),
    "null": frozenset("nil null pointer dereference panic segfault npe none".split()),
    "tls": frozenset("tls x509 certificate cert certs expired expiry handshake notafter".split()),
    "cache": frozenset("cache caches ttl evict eviction hit miss".split()),
    "capacity": frozenset("replicas replica scale autoscale workers threads concurrency capacity cpu".split()),
}

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")
_CAMEL = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|\d+")
_PATH = re.compile(r"[\w./-]+\.(?:go|py|js|ts|java|kt|rb|rs|c|cc|cpp|h|cs|php|scala|yaml|yml|json|toml|sql|tsx|jsx)\b")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def iso(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


def words(text: str) -> set[str]:
    """Lower-case identifier parts of `text` (camelCase and snake_case split), common words dropped."""
    found: set[str] = set()
    for ident in _IDENT.findall(text):
        for part in re.split(r"[._]", ident):
            pieces = _CAMEL.findall(part) or [part]
            found.update(p.lower() for p in pieces)
            if len(pieces) > 1:
                found.add(part.lower())
    return {w for w in found if len(w) >= 3 and w not in _STOP and not w.isdigit()}


def identifiers(text: str) -> set[str]:
    """Whole identifiers and quoted names (lower-case) of at least 4 characters: the specific tokens."""
    found = {m.lower() for m in _IDENT.findall(text) if len(m) >= 4}
    found.update(q.lower() for q in re.findall(r"[\"'`]([^\"'`\s]{4,80})[\"'`]", text))
    return {f for f in found if f not in _STOP}


def paths(text: str) -> set[str]:
    """File paths named in `text` (stack frames, error messages)."""
    return {p.lstrip("./") for p in _PATH.findall(text)}


def mechanisms(vocabulary: Iterable[str]) -> set[str]:
    """The mechanism families `vocabulary` touches."""
    vocab = set(vocabulary)
    return {name for name, family in MECHANISMS.items() if vocab & family}


# -- time series ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Onset:
    """When a series left its baseline."""

    at: datetime
    baseline: float
    peak: float
    direction: int  # +1 up, -1 down

    @property
    def ratio(self) -> float:
        return abs(self.peak) / max(abs(self.baseline), 1e-9)


def onset(points: Sequence[tuple[datetime, float]], *, before: datetime | None = None) -> Onset | None:
    """The first point after which the series stays away from its baseline, or None.

    The baseline is the first third of the points up to `before` (the alert); a departure is
    more than four standard deviations (at least 10 % of the baseline) away, sustained for
    the next two points or until the series ends.
    """
    series = sorted(points)
    if before is not None:
        series = [p for p in series if p[0] <= before + timedelta(minutes=10)]
    if len(series) < 6:
        return None
    head = series[: max(3, len(series) // 3)]
    values = [v for _, v in head]
    mean = fmean(values)
    spread = max(pstdev(values) * 4, abs(mean) * 0.1, 1e-6)
    for index in range(len(head), len(series)):
        window = series[index : index + 3]
        if all(abs(v - mean) > spread for _, v in window) and len({math.copysign(1, v - mean) for _, v in window}) == 1:
            later = [v for _, v in series[index:]]
            direction = 1 if window[0][1] > mean else -1
            peak = max(later) if direction > 0 else min(later)
            return Onset(window[0][0], mean, peak, direction)
    return None


def error_onsets(
    records: Iterable[Mapping[str, Any]], *, burst: int = 3, within: timedelta = timedelta(minutes=10)
) -> dict[str, datetime]:
    """Per service, the first error that starts a burst (`burst` errors within `within`)."""
    times: dict[str, list[datetime]] = {}
    for record in records:
        times.setdefault(str(record.get("service", "")), []).append(parse_time(str(record["timestamp"])))
    onsets: dict[str, datetime] = {}
    for service, stamps in times.items():
        stamps.sort()
        for index, at in enumerate(stamps):
            following = [t for t in stamps[index : index + burst] if t - at <= within]
            if len(following) >= burst:
                onsets[service] = at
                break
    return onsets


# -- diffs ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NumberChange:
    """A changed line whose only difference is a number (a limit, a timeout, a size)."""

    context: str
    old: str
    new: str

    @property
    def factor(self) -> float:
        old, new = _magnitude(self.old), _magnitude(self.new)
        if old <= 0 or new <= 0:
            return math.inf if old != new else 1.0
        return max(old, new) / min(old, new)


_UNITS = {"ms": 0.001, "millisecond": 0.001, "s": 1, "second": 1, "m": 60, "minute": 60, "h": 3600, "hour": 3600}


def _magnitude(text: str) -> float:
    """A number with an optional duration unit (`300*time.Millisecond`, `5s`, `50`)."""
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)\s*\*?\s*(?:time\.)?([A-Za-z]*)", text):
        scale = _UNITS.get(unit.lower().rstrip("s"), _UNITS.get(unit.lower(), 1.0)) if unit else 1.0
        total += float(number) * scale
    return total


@dataclass(frozen=True, slots=True)
class DiffFacts:
    """What a unified diff changes."""

    added: tuple[str, ...]
    removed: tuple[str, ...]
    files: tuple[str, ...]
    numbers: tuple[NumberChange, ...]
    vocabulary: frozenset[str] = field(default_factory=frozenset)
    names: frozenset[str] = field(default_factory=frozenset)
    cosmetic: bool = False

    @property
    def effective_lines(self) -> int:
        return len(self.added) + len(self.removed)


COSMETIC_FILES = re.compile(
    r"(\.(css|scss|less|svg|png|md|txt|rst|lock|sum)$|(^|/)(docs?|test|tests|testdata|__tests__|\.github)/|_test\.\w+$|"
    r"(^|/)theme\.\w+$|(^|/)(CHANGELOG|README|LICENSE)|\.snap$)",
    re.IGNORECASE,
)


def _normalise(line: str) -> str:
    return re.sub(r"\s+", " ", _NUMBER.sub("#", line)).strip()


def analyse_diff(diff: str, files: Sequence[str] = ()) -> DiffFacts:
    """Added and removed lines, number-only changes, the vocabulary of the changed lines."""
    added: list[str] = []
    removed: list[str] = []
    for line in diff.splitlines():
        if line.startswith(("+++", "---", "@@")):
            continue
        if line.startswith("+"):
            added.append(line[1:].rstrip())
        elif line.startswith("-"):
            removed.append(line[1:].rstrip())
    # A line removed and added unchanged (reordering, whitespace) changes nothing.
    removed_set = {r.strip() for r in removed}
    added_set = {a.strip() for a in added}
    added = [a for a in added if a.strip() not in removed_set and a.strip()]
    removed = [r for r in removed if r.strip() not in added_set and r.strip()]
    numbers = [
        NumberChange(_context(new), _rhs(old), _rhs(new))
        for old, new in _pairs(removed, added)
        if _NUMBER.findall(old) != _NUMBER.findall(new) and _NUMBER.findall(new)
    ]
    changed_text = "\n".join(added + removed)
    code_changed = [f for f in files if not COSMETIC_FILES.search(f)]
    only_comments = all(_is_comment(x) for x in added + removed)
    cosmetic = bool(files) and (not code_changed or only_comments or not (added or removed))
    return DiffFacts(
        added=tuple(added),
        removed=tuple(removed),
        files=tuple(files),
        numbers=tuple(numbers),
        vocabulary=frozenset(words(changed_text)),
        names=frozenset(identifiers(changed_text)),
        cosmetic=cosmetic,
    )


def _pairs(removed: Sequence[str], added: Sequence[str]) -> list[tuple[str, str]]:
    """Each added line with the removed line it most resembles (a modified line), if any."""
    pairs = []
    for line in added:
        best, score = None, 0.0
        for old in removed:
            ratio = difflib.SequenceMatcher(None, _normalise(old), _normalise(line)).ratio()
            if ratio > score:
                best, score = old, ratio
        if best is not None and score >= 0.6:
            pairs.append((best, line))
    return pairs


def _is_comment(line: str) -> bool:
    return line.strip().startswith(("//", "#", "/*", "*", "<!--", '"""'))


def _rhs(line: str) -> str:
    """The value part of an assignment-like line (after `=`, `:` or an opening parenthesis)."""
    match = re.search(r"(?:=|:)\s*(.+)$", line)
    return (match.group(1) if match else line).strip().rstrip(",;")


def _context(line: str) -> str:
    """The name being set on an assignment-like line."""
    match = re.match(r"\s*(?:const|var|let|final|static|\w+\s+)?\s*([\w.\[\]\"'-]+)\s*(?::=|=|:)", line)
    if match:
        return match.group(1).strip("\"'")
    call = re.search(r"([A-Za-z_][\w.]*)\s*\(", line)
    return call.group(1) if call else line.strip()[:60]

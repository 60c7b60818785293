"""The hand-written payments-retry-storm scenario holds together when read through the sandbox's queries.

The scenario is data for the demo and for tests: an alert on api-gateway, a payments retry storm
that started with one payments deploy, and decoys planted around it. These tests read it only the
way an investigator would (through `Incident`), except for `ground_truth.json`, which they read to
know what the data must point to.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest

from pm_sandbox.data import Incident, load_incident, parse_time

NAME = "payments-retry-storm"
ROOT = Path(__file__).resolve().parents[1] / "scenarios" / NAME

Record = dict[str, Any]


def _at(value: str) -> datetime:
    parsed = parse_time(value, "time")
    assert parsed is not None
    return parsed


def _iso(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


@pytest.fixture(scope="module")
def incident() -> Incident:
    return load_incident(ROOT)


@pytest.fixture(scope="module")
def truth() -> Record:
    value: Record = json.loads((ROOT / "ground_truth.json").read_text())
    return value


@pytest.fixture(scope="module")
def culprit_deploy(incident: Incident, truth: Record) -> Record:
    deploys = [d for d in incident.list_deploys()["items"] if d["commit_sha"] == truth["root_cause_commit"]]
    assert len(deploys) == 1, "the culprit is deployed exactly once"
    return dict(deploys[0])


@pytest.fixture(scope="module")
def onset(incident: Incident, truth: Record) -> datetime:
    """The first ERROR of the first failing service."""
    errors = incident.search_logs(service=truth["first_failing_service"], min_severity="ERROR", limit=1)
    assert errors["total"] > 0
    return _at(errors["items"][0]["timestamp"])


def _mean(points: list[Record]) -> float:
    assert points
    return float(sum(p["value"] for p in points)) / len(points)


def _points(incident: Incident, metric: str, service: str, start: datetime, end: datetime, **kw: Any) -> list[Record]:
    result = incident.query_metrics(metric=metric, service=service, start=_iso(start), end=_iso(end), **kw)
    assert [s["service"] for s in result["series"]] == [service]
    points: list[Record] = result["series"][0]["points"]
    return points


def test_the_folder_loads_with_baseline_on_every_service(incident: Incident, culprit_deploy: Record) -> None:
    assert incident.name == NAME
    alert = incident.get_alert()
    assert {"service", "metric", "threshold", "observed", "fired_at", "severity", "summary"} <= alert.keys()
    assert alert["observed"] > alert["threshold"]
    assert 400 <= len(incident.logs) <= 900
    services = sorted({r["service"] for r in incident.logs})
    assert len(services) >= 5
    for service in services:  # every service logs normally before anything changes
        assert incident.search_logs(service=service, end=culprit_deploy["timestamp"])["total"] >= 10, service
    size = sum(p.stat().st_size for p in ROOT.rglob("*") if p.is_file())
    assert size < 400_000


def test_every_deploy_names_a_commit_that_exists(incident: Incident) -> None:
    deploys = incident.list_deploys()["items"]
    assert len(deploys) >= 3
    for deploy in deploys:
        sha = deploy["commit_sha"]
        assert re.fullmatch(r"[0-9a-f]{40}", sha)
        assert incident.get_commit(sha)["sha"] == sha
    assert 6 <= len(incident.commits) <= 9


def test_the_alert_is_not_on_the_first_failing_service(incident: Incident, truth: Record) -> None:
    alerted = incident.get_alert()["service"]
    assert alerted != truth["first_failing_service"]
    assert alerted in truth["blast_radius"]
    assert truth["first_failing_service"] not in truth["blast_radius"]


def test_first_error_comes_after_the_culprit_deploy_and_before_the_alert(
    incident: Incident, truth: Record, culprit_deploy: Record, onset: datetime
) -> None:
    deployed, fired = _at(culprit_deploy["timestamp"]), _at(incident.get_alert()["fired_at"])
    assert deployed < onset < fired
    assert timedelta(minutes=3) <= onset - deployed <= timedelta(minutes=30)
    assert culprit_deploy["service"] == truth["first_failing_service"]
    # between the culprit deploy and onset, no service logs an ERROR
    earlier = incident.search_logs(min_severity="ERROR", start=culprit_deploy["timestamp"], end=_iso(onset))
    assert earlier["total"] == 0


def test_the_latest_deploy_before_onset_is_a_decoy_on_the_alerted_service(
    incident: Incident, truth: Record, onset: datetime
) -> None:
    before = incident.list_deploys(end=_iso(onset))["items"]
    latest = before[-1]
    assert latest["commit_sha"] != truth["root_cause_commit"]
    assert latest["commit_sha"] in truth["decoy_deploy_commits"]
    assert latest["service"] == incident.get_alert()["service"]
    assert truth["root_cause_commit"] in {d["commit_sha"] for d in before}


def test_error_ratio_of_the_first_failing_service_rises_well_above_baseline(
    incident: Incident, truth: Record, culprit_deploy: Record
) -> None:
    service = truth["first_failing_service"]
    start = _at(incident.metrics[0]["timestamp"])
    fired = _at(incident.get_alert()["fired_at"])
    baseline = _points(incident, "error_ratio", service, start, _at(culprit_deploy["timestamp"]), step_seconds=300,
                       aggregation="max")  # fmt: skip
    storm = _points(incident, "error_ratio", service, fired, fired + timedelta(minutes=30), step_seconds=300)
    assert len(baseline) >= 4
    assert len(storm) >= 6
    assert max(p["value"] for p in baseline) < 0.01
    assert min(p["value"] for p in storm) > 10 * max(p["value"] for p in baseline)
    assert _mean(storm) > 0.25


def test_retries_and_pool_use_climb_as_soon_as_the_culprit_lands(
    incident: Incident, truth: Record, culprit_deploy: Record, onset: datetime
) -> None:
    service = truth["first_failing_service"]
    start, deployed = _at(incident.metrics[0]["timestamp"]), _at(culprit_deploy["timestamp"])
    fired = _at(incident.get_alert()["fired_at"])
    before = _points(incident, "retry_rate", service, start, deployed, step_seconds=60)
    after = _points(incident, "retry_rate", service, deployed + timedelta(minutes=1), onset, step_seconds=60)
    assert _mean(after) > 3 * _mean(before)
    storm = _points(incident, "retry_rate", service, fired, fired + timedelta(minutes=20), step_seconds=600)
    assert min(p["value"] for p in storm) > 10 * _mean(after)
    pool = _points(incident, "db_connections_in_use", service, fired, fired + timedelta(minutes=20),
                   step_seconds=600, aggregation="min")  # fmt: skip
    assert all(p["value"] == 40 for p in pool)
    exhausted = incident.search_logs(service=service, text="pg pool exhausted", min_severity="ERROR")
    assert exhausted["total"] >= 10
    assert "idle in transaction" in exhausted["items"][0]["msg"]


def test_the_culprit_diff_shows_the_retry_policy_change(incident: Incident, truth: Record) -> None:
    commit = incident.get_commit(truth["root_cause_commit"][:10])
    diff = commit["diff"]
    assert "-\t\t\tMaxAttempts: 2," in diff
    assert "+    max_attempts: 6" in diff
    assert "+    backoff: none" in diff
    assert "p.Backoff = NoBackoff()" in diff
    assert any(f.startswith(f"services/{truth['first_failing_service']}/") for f in commit["files_changed"])
    # only the culprit touches retries, so a careful reader cannot pin it on another commit
    others = [c for c in incident.commits if c["sha"] != commit["sha"]]
    assert not [c["sha"] for c in others if "backoff" in (c.get("diff") or "").lower()]


def test_the_decoys_are_planted(incident: Incident, truth: Record, onset: datetime) -> None:
    first = truth["first_failing_service"]
    flips = incident.flag_changes(start=_iso(onset - timedelta(minutes=10)), end=_iso(onset))["items"]
    assert flips
    assert all(f["service"] != first for f in flips)
    races = incident.list_commits(text="fix race")["items"]
    assert races
    assert all(f"services/{first}/" not in " ".join(c["files_changed"]) for c in races)
    assert any(c["sha"] in truth["decoy_deploy_commits"] for c in races)
    blame = incident.search_messages(query="roll back api-gateway", channel="incidents")
    assert blame["total"] == 1
    assert incident.get_ticket("inc-4812")["status"] == "open"


def test_traces_show_back_to_back_attempts_inside_the_first_failing_service(
    incident: Incident, truth: Record, onset: datetime
) -> None:
    failing = incident.search_traces(service="ledger", status="error", start=_iso(onset), limit=1000)["items"]
    attempts: dict[str, list[Record]] = {}
    for span in failing:
        attempts.setdefault(span["trace_id"], []).append(span)
    storms = [spans for spans in attempts.values() if len(spans) >= 6]
    assert storms
    spans = storms[0]
    parent = incident.search_traces(trace_id=spans[0]["trace_id"])["items"]
    by_id = {s["span_id"]: s for s in parent}
    assert by_id[spans[0]["parent_id"]]["service"] == truth["first_failing_service"]
    for prev, nxt in pairwise(spans):  # no backoff between attempts
        gap = _at(nxt["start"]) - _at(prev["start"]) - timedelta(milliseconds=prev["duration_ms"])
        assert gap < timedelta(milliseconds=10)


def test_the_biggest_new_log_pattern_is_on_the_first_failing_service(incident: Incident, truth: Record) -> None:
    patterns = incident.log_patterns()["items"]
    top = max(patterns, key=lambda p: int(p["delta_vs_baseline"]))
    assert top["service"] == truth["first_failing_service"]
    assert top["sentiment"] == "negative"
    assert "retrying in 0ms" in top["signature"]

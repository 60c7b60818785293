"""Query semantics of the sandbox data: windows, filters, severities, aggregation, paging."""

from __future__ import annotations

from pathlib import Path

import pytest

from pm_sandbox.data import Incident, QueryError, load_incident
from pm_sandbox.fixture import COMMITS, write_snapshot


@pytest.fixture()
def incident(tmp_path: Path) -> Incident:
    return load_incident(write_snapshot(tmp_path / "cart-pool"))


def test_logs_filter_by_service_severity_text_and_window(incident: Incident) -> None:
    errors = incident.search_logs(service="cart", min_severity="error")
    assert [r["msg"] for r in errors["items"]] == ["redis pool exhausted: timeout after 50ms", "giving up"]
    window = incident.search_logs(start="2026-06-18T14:05:00Z", end="2026-06-18T14:07:00Z")
    assert [r["timestamp"] for r in window["items"]] == ["2026-06-18T14:05:00Z", "2026-06-18T14:06:00Z"]
    assert incident.search_logs(text="POOL EXHAUSTED")["total"] == 1
    page = incident.search_logs(limit=2, offset=1)
    assert (page["total"], page["returned"], page["items"][0]["timestamp"]) == (4, 2, "2026-06-18T14:05:00Z")
    with pytest.raises(QueryError, match="ISO 8601"):
        incident.search_logs(start="yesterday")
    with pytest.raises(QueryError, match="limit"):
        incident.search_logs(limit=0)


def test_metrics_are_aggregated_into_steps(incident: Incident) -> None:
    result = incident.query_metrics(metric="error_ratio", service="cart", step_seconds=60, aggregation="max")
    assert [p["value"] for p in result["series"][0]["points"]] == [0.03, 0.6]
    avg = incident.query_metrics(metric="error_ratio", step_seconds=60)
    assert [s["service"] for s in avg["series"]] == ["cart", "checkout"]
    assert avg["series"][0]["points"][1]["value"] == pytest.approx(0.5)
    assert "latency_p99_ms" in avg["known_metrics"]
    with pytest.raises(QueryError):
        incident.query_metrics(metric="error_ratio", aggregation="median")


def test_traces_commits_deploys_and_lookups(incident: Incident) -> None:
    slow = incident.search_traces(status="error", min_duration_ms=860)
    assert [s["service"] for s in slow["items"]] == ["checkout"]
    commits = incident.list_commits(path="cart/")
    assert [c["sha"] for c in commits["items"]] == [COMMITS[0]["sha"]]
    assert "diff" not in commits["items"][0]
    assert incident.get_commit(COMMITS[0]["sha"][:12])["diff"] == "-size: 64\n+size: 4"
    with pytest.raises(QueryError, match="2 commits match"):
        incident.get_commit("aaaaaaa")
    deploys = incident.list_deploys(service="checkout")
    assert [d["version"] for d in deploys["items"]] == ["v7"]
    assert incident.log_patterns(service="cart")["items"][0]["signature"] == "handled request"
    assert incident.get_ticket("shop-9")["status"] == "open"
    assert incident.search_messages(query="pool")["total"] == 1


def test_the_answer_is_never_loaded(tmp_path: Path) -> None:
    root = write_snapshot(tmp_path / "case")
    incident = load_incident(root)
    assert "root_cause_commit" not in repr(incident)
    with pytest.raises(ValueError, match="no alert.json"):
        load_incident(tmp_path)

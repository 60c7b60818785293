"""The jobs' pure parts: thresholds, a domain's services, a ticket's status, the job list."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace

from pm_orchestrator.health_check import Thresholds, domain_services
from pm_orchestrator.jobs import scheduled_jobs, ticket_status
from pm_orchestrator.settings import OrchestratorSettings
from pm_settings import load_settings


def test_the_threshold_is_the_baseline_times_the_multiplier_but_never_below_the_floor() -> None:
    thresholds = Thresholds(multiplier=1.5, min_error_rate=0.01)
    assert thresholds.threshold(0.1, 1.5) == 0.1 * 1.5
    assert thresholds.threshold(0.001, 1.5) == 0.01
    assert thresholds.threshold(0.0, 1.5) == 0.01


def test_a_domains_own_positive_threshold_replaces_the_multiplier() -> None:
    thresholds = Thresholds(multiplier=1.0)
    assert thresholds.multiplier_for({"health_check_threshold": 3}) == 3.0
    assert thresholds.multiplier_for({"health_check_threshold": 2.5}) == 2.5
    for ignored in (
        {},
        {"health_check_threshold": 0},
        {"health_check_threshold": "5"},
        {"health_check_threshold": True},
    ):
        assert thresholds.multiplier_for(ignored) == 1.0


def test_a_domains_services_come_from_the_column_and_the_primary_services_once_each() -> None:
    settings = {
        "primary_services": [{"name": "cart"}, {"name": "ledger", "artifact_id": "x"}, {"artifact_id": "y"}, "z"]
    }
    assert domain_services(["cart", "checkout", ""], settings) == ["cart", "checkout", "ledger"]
    assert domain_services(None, {"primary_services": "cart"}) == []


def test_a_tickets_status_is_read_from_the_tool_or_from_jiras_fields() -> None:
    assert ticket_status({"key": "A-1", "status": "In Progress"}) == "In Progress"
    assert ticket_status({"status": {"name": "Done"}}) == "Done"
    assert ticket_status({"fields": {"status": {"name": "Resolved", "statusCategory": {"key": "done"}}}}) == "Resolved"
    assert ticket_status({"key": "A-1"}) is None
    assert ticket_status({"status": "  "}) is None


# The composition reads only the health check's bound method.
_NO_HEALTH = SimpleNamespace(scheduled=None)


def test_every_job_is_scheduled_by_its_cron_setting_and_off_removes_it() -> None:
    base = {"DATABASE_URL": "postgresql://x/y", "REDIS_URL": "redis://x", "S3_BUCKET": "b", "REGISTRY_ADDR": "x:1"}
    settings = load_settings(OrchestratorSettings, {**base, "META_ANALYSIS_CRON": "30 5 * * 2"})
    jobs = {job.name: job for job in scheduled_jobs(settings, None, None, _NO_HEALTH, lambda: None)}  # type: ignore[arg-type]
    assert set(jobs) == {
        "health_check",
        "post_deploy_check",
        "stale_ticket_review",
        "knowledge_lifecycle",
        "meta_analysis",
    }
    # Tuesday 2026-12-01 05:30 UTC is the next run after Monday noon.
    after = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
    assert jobs["meta_analysis"].schedule.next_after(after) == datetime(2026, 12, 1, 5, 30, tzinfo=UTC)
    off = load_settings(OrchestratorSettings, {**base, "META_ANALYSIS_CRON": "off"})
    assert "meta_analysis" not in {job.name for job in scheduled_jobs(off, None, None, _NO_HEALTH, lambda: None)}  # type: ignore[arg-type]

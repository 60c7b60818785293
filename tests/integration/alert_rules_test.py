"""Every metric and label the alert rules name is one the services really export.

The predecessor shipped alerts on metrics nothing produced, so they could never fire. Here each
service's own metric objects are created in one registry and the rules' expressions are checked
against them: a metric name that is not registered, or a label matcher on a label the metric does
not have, fails the test. (promtool's own unit tests, run by build-support/check-alerts.sh, make
each rule fire and keep it quiet.)
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import CollectorRegistry

from pm_grpc.server import _MetricsInterceptor
from pm_ingest.webhooks import Webhooks
from pm_orchestrator.metrics import EngineMetrics, QueueMetrics
from pm_registry.registry import RegistryMetrics
from pm_streams.outbox import OutboxRelay
from pm_worker.executor import LLMMetrics

RULES = Path(__file__).resolve().parents[2] / "observability" / "alerts" / "rules.yaml"
_SELECTOR = re.compile(r"\b(pm_[a-z0-9_]+)(\{[^}]*\})?")
_MATCHER = re.compile(r"([a-z_]+)\s*(=~|!~|!=|=)")
_SUFFIXES = ("_total", "_bucket", "_count", "_sum", "_created")


def _exported() -> dict[str, set[str]]:
    """Sample names the services register, each with its label names."""
    registry = CollectorRegistry()
    EngineMetrics(registry)
    QueueMetrics(None, (), registry)  # type: ignore[arg-type]
    LLMMetrics(registry)
    RegistryMetrics(registry)
    _MetricsInterceptor(registry)
    OutboxRelay(None, None, registry)  # type: ignore[arg-type]
    Webhooks(None, None, None, None, None, registry)  # type: ignore[arg-type]
    found: dict[str, set[str]] = {}
    for name, collector in registry._names_to_collectors.items():  # - no public listing of unlabelled families
        labels: Any = getattr(collector, "_labelnames", ())
        found[name] = set(labels)
        if name.endswith("_bucket"):
            found[name].add("le")
    return found


def _expressions() -> list[tuple[str, str]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [(rule["alert"], rule["expr"]) for group in groups for rule in group["rules"]]


def test_the_rules_name_only_exported_metrics_and_labels() -> None:
    exported = _exported()
    problems = []
    checked = 0
    for alert, expr in _expressions():
        for name, selector in _SELECTOR.findall(expr):
            checked += 1
            if name not in exported:
                problems.append(f"{alert}: {name} is not exported")
                continue
            for label, _ in _MATCHER.findall(selector or ""):
                if label not in exported[name]:
                    problems.append(f"{alert}: {name} has no label {label!r} (it has {sorted(exported[name])})")
    assert not problems, "\n".join(problems)
    assert checked >= 10


def test_the_guides_five_alerts_and_the_operators_three_are_there() -> None:
    names = {alert for alert, _ in _expressions()}
    assert names == {
        "HighInvestigationFailureRate",
        "LongInvestigation",
        "MCPServerDown",
        "HighTokenUsage",
        "QueueBacklog",
        "NoWorkerConsuming",
        "OutboxLag",
        "WebhookSignatureFailures",
    }


def test_the_check_catches_a_metric_that_does_not_exist() -> None:
    exported = _exported()
    assert "pm_verdicts_total" in exported
    assert "pm_investigation_failures_total" not in exported
    assert "verdict" in exported["pm_verdicts_total"]
    assert "le" in exported["pm_investigation_duration_seconds_bucket"]

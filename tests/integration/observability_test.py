"""Every metric and label the alert rules and the dashboard name is one the services really export.

The predecessor shipped alerts on metrics nothing produced, so they could never fire. Here each
service's own metric objects are created in one registry and the rules' expressions are checked
against them: a metric name that is not registered, or a label matcher on a label the metric does
not have, fails the test. (promtool's own unit tests, run by build-support/check-alerts.sh, make
each rule fire and keep it quiet.)
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import CollectorRegistry

from pm_grpc.server import _MetricsInterceptor
from pm_ingest.webhooks import Webhooks
from pm_orchestrator.metrics import EngineMetrics, QueueMetrics
from pm_registry.registry import RegistryMetrics, _ServerGauges
from pm_streams.outbox import OutboxRelay
from pm_worker.executor import LLMMetrics, WorkerMetrics

OBSERVABILITY = Path(__file__).resolve().parents[2] / "observability"
RULES = OBSERVABILITY / "alerts" / "rules.yaml"
DASHBOARD = OBSERVABILITY / "dashboards" / "production-master.json"
_SELECTOR = re.compile(r"\b(pm_[a-z0-9_]+)(\{[^}]*\})?")
_MATCHER = re.compile(r"([a-z_]+)\s*(=~|!~|!=|=)")
_SUFFIXES = ("_total", "_bucket", "_count", "_sum", "_created")


def _exported() -> dict[str, set[str]]:
    """Sample names the services register, each with its label names."""
    registry = CollectorRegistry(auto_describe=True)  # custom collectors' names indexed too
    EngineMetrics(registry)
    QueueMetrics(None, (), registry)  # type: ignore[arg-type]
    LLMMetrics(registry)
    WorkerMetrics(registry, 1)
    RegistryMetrics(registry)
    _MetricsInterceptor(registry)
    OutboxRelay(None, None, registry)  # type: ignore[arg-type]
    Webhooks(None, None, None, None, None, registry)  # type: ignore[arg-type]
    registry.register(_ServerGauges(_NoServers()))  # type: ignore[arg-type]
    found: dict[str, set[str]] = {}
    # The registry's name index: prometheus_client has no public listing of unlabelled families.
    for name, collector in registry._names_to_collectors.items():
        labels: Any = getattr(collector, "_labelnames", None)
        if labels is None:  # a custom collector: its families name their labels
            labels = next((getattr(f, "_labelnames", ()) for f in collector.collect() if f.name == name), ())
        found[name] = set(labels)
        if name.endswith("_bucket"):
            found[name].add("le")
    return found


class _NoServers:
    """What the registry's gauges read, with no server configured."""

    def servers(self) -> list[Any]:
        return []


def _expressions() -> list[tuple[str, str]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [(rule["alert"], rule["expr"]) for group in groups for rule in group["rules"]]


def _problems(expressions: list[tuple[str, str]], exported: dict[str, set[str]]) -> tuple[list[str], int]:
    problems = []
    checked = 0
    for where, expr in expressions:
        for name, selector in _SELECTOR.findall(expr):
            checked += 1
            if name not in exported:
                problems.append(f"{where}: {name} is not exported")
                continue
            for label, _ in _MATCHER.findall(selector or ""):
                if label not in exported[name]:
                    problems.append(f"{where}: {name} has no label {label!r} (it has {sorted(exported[name])})")
    return problems, checked


def _dashboard_expressions() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [(panel["title"], target["expr"]) for panel in dashboard["panels"] for target in panel.get("targets", [])]


def test_the_rules_name_only_exported_metrics_and_labels() -> None:
    problems, checked = _problems(_expressions(), _exported())
    assert not problems, "\n".join(problems)
    assert checked >= 10


def test_the_dashboard_names_only_exported_metrics_and_labels() -> None:
    problems, checked = _problems(_dashboard_expressions(), _exported())
    assert not problems, "\n".join(problems)
    assert checked >= 20


def test_the_dashboard_has_the_guides_panels_and_a_datasource_variable() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["templating"]["list"][0] == {
        "name": "datasource",
        "label": "Prometheus",
        "type": "datasource",
        "query": "prometheus",
        "current": {},
        "hide": 0,
        "refresh": 1,
        "options": [],
    }
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert all(p["datasource"] == {"type": "prometheus", "uid": "${datasource}"} for p in panels)
    exprs = " ".join(e for _, e in _dashboard_expressions())
    # Throughput and latency p50/p95/p99, verdicts, MCP per server, LLM tokens and cost, queue
    # depth and processing, request rates and codes (the operator guide's list).
    for needed in (
        "pm_investigations_total",
        "histogram_quantile(0.5, sum by (le) (rate(pm_investigation_duration_seconds_bucket",
        "histogram_quantile(0.95, sum by (le) (rate(pm_investigation_duration_seconds_bucket",
        "histogram_quantile(0.99, sum by (le) (rate(pm_investigation_duration_seconds_bucket",
        "pm_verdicts_total",
        "sum by (server, status) (rate(pm_mcp_tool_call_total",
        "pm_llm_tokens_total",
        "pm_llm_cost_dollars_total",
        "pm_stream_lag",
        "pm_agent_steps_total",
        "pm_grpc_server_handled_total",
        "sum(pm_worker_steps_running) / sum(pm_worker_step_slots)",
    ):
        assert needed in exprs, needed
    # Panels do not overlap on the grid.
    cells = set()
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, panel["title"]
                cells.add((x, y))


def test_the_guides_five_alerts_and_the_operators_four_are_there() -> None:
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
        "LLMFallbackInUse",
    }


def test_the_check_catches_a_metric_that_does_not_exist() -> None:
    exported = _exported()
    assert "pm_verdicts_total" in exported
    assert "pm_investigation_failures_total" not in exported
    assert "verdict" in exported["pm_verdicts_total"]
    assert "le" in exported["pm_investigation_duration_seconds_bucket"]

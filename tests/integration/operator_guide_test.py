"""docs/operator-guide.md is true: its environment variables are read with the stated defaults,
its Helm values exist in the chart with the stated defaults, its alerts are the rules', and every
repository path it names exists."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from integration.configuration_docs_test import AWS, _code, _same, _secrets

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "operator-guide.md"
VALUES = ROOT / "deploy" / "helm" / "production-master" / "values.yaml"
RULES = ROOT / "observability" / "alerts" / "rules.yaml"
# Standard OpenTelemetry variables the SDK reads besides our settings.
OTEL = re.compile(r"^OTEL_[A-Z_]+$")


def _section(title: str) -> str:
    text = GUIDE.read_text()
    start = text.index(f"\n{title}\n")
    end = text.find("\n## ", start + len(title) + 2)
    return text[start : end if end != -1 else len(text)]


def _table(section: str) -> list[list[str]]:
    rows = []
    for line in section.splitlines():
        if line.startswith("| `"):
            rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows


def test_every_environment_variable_is_read_with_the_stated_default() -> None:
    code, secrets = _code(), _secrets()
    rows = _table(_section("## Environment variables"))
    assert len(rows) >= 25
    problems = []
    for name_cell, required, default, *_ in rows:
        name = name_cell.strip("`")
        if name not in code and name not in secrets and name not in AWS and not OTEL.match(name):
            problems.append(f"{name} is read by nothing")
            continue
        if name in code and default != "required" and not _same(default, code[name]):
            problems.append(f"{name}: guide says {default!r}, code {code[name]!r}")
        if required == "Yes" and name in code and code[name] is not None:
            problems.append(f"{name} is marked required but has a default")
    assert problems == []
    # The seed guide's variables are all here (PORT and NODE_ENV are named as replaced).
    seed = {"DATABASE_URL", "REDIS_URL", "S3_BUCKET", "ANTHROPIC_API_KEY", "VAULT_ADDR", "JWT_SECRET", "API_KEYS",
            "MCP_ACCESS_KEY", "OTEL_EXPORTER_OTLP_ENDPOINT", "OPENAI_API_KEY", "JIRA_PROJECT_FILTER",
            "SLACK_SIGNING_SECRET", "PAGERDUTY_WEBHOOK_SECRET", "JIRA_WEBHOOK_SECRET",
            "HEALTH_CHECK_THRESHOLD_MULTIPLIER", "POST_DEPLOY_CHECK_DELAY_MS", "LOG_LEVEL"}  # fmt: skip
    assert seed <= {r[0].strip("`") for r in rows}


def _value(values: dict[str, Any], path: str) -> Any:
    node: Any = values
    for key in path.split("."):
        assert isinstance(node, dict), f"{path} is not a value of the chart"
        assert key in node, f"{path} is not a value of the chart"
        node = node[key]
    return node


def test_every_helm_value_exists_with_the_stated_default() -> None:
    values = yaml.safe_load(VALUES.read_text())
    rows = _table(_section("### Key values explained"))
    assert len(rows) >= 19
    for path_cell, default, _ in rows:
        actual = _value(values, path_cell.strip("`"))
        stated = default.strip("`")
        if stated == "empty":
            assert actual in ("", None, [], {}), path_cell
        elif isinstance(actual, bool):
            assert stated == str(actual).lower(), path_cell
        else:
            assert stated == str(actual), f"{path_cell}: guide {stated!r}, values.yaml {actual!r}"
    guide = {r[0].strip("`") for r in rows}
    for seed in ("replicaCount.api", "replicaCount.orchestrator", "replicaCount.worker", "image.repository",
                 "image.tag", "service.port", "ingress.enabled", "ingress.host", "resources.api.requests.cpu",
                 "resources.api.limits.memory", "resources.worker.requests.cpu", "resources.worker.limits.memory",
                 "hpa.enabled", "hpa.minReplicas", "hpa.maxReplicas", "hpa.targetCPUUtilizationPercentage",
                 "postgresql.host", "postgresql.database", "redis.host"):  # fmt: skip
        assert seed in guide, seed


def test_the_alerts_are_the_rules() -> None:
    rules = {r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]}
    guide = {row[0].strip("`") for row in _table(_section("### Prometheus alerts"))}
    assert guide == rules


def test_every_path_the_guide_names_exists() -> None:
    text = GUIDE.read_text()
    # Test files are named too, but a test's sandbox holds only its own dependencies.
    paths = set(re.findall(r"`((?:docs|deploy|observability|scripts|libs|build-support)/[^`\s]*)`", text))
    paths |= set(re.findall(r"\./(deploy/helm/[\w./-]+)", text))
    assert len(paths) >= 10
    missing = [p for p in sorted(paths) if not any(ROOT.glob(p.rstrip("/")))]
    assert missing == []

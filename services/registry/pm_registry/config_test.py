"""The registry file: valid files load, every mistake is named with where it is."""

from __future__ import annotations

from pathlib import Path

import pytest

from pm_errors import ConfigurationError
from pm_registry.config import EnvRef, SecretRef, load_config, parse_config

EXAMPLE = """
servers:
  - name: sandbox
    transport: streamable_http
    url: http://127.0.0.1:8765/mcp
    access_key_header: X-MCP-Access-Key
    headers:
      Authorization: {secret: grafana-token, prefix: "Bearer "}
      X-Team: incident
    breaker: {failures: 3, reset_seconds: 5}
    tools:
      search_logs: {capabilities: [logs.search]}
      post_comment: {capabilities: [publish.ticket_comment], access: write}
  - name: local
    transport: stdio
    command: python
    args: [-m, some_server]
    env: {API_TOKEN: {env: SOME_TOKEN}}
roles:
  gather.logs: [logs.search]
  delivery: [publish.ticket_comment]
"""


def test_a_full_file_loads_with_defaults(tmp_path: Path) -> None:
    path = tmp_path / "mcp.yaml"
    path.write_text(EXAMPLE)
    config = load_config(path)
    sandbox = config.server("sandbox")
    assert sandbox is not None
    assert sandbox.headers["Authorization"] == SecretRef(secret="grafana-token", prefix="Bearer ")
    assert sandbox.headers["X-Team"] == "incident"
    assert (sandbox.breaker.failures, sandbox.retries, sandbox.max_concurrency) == (3, 2, 8)
    assert sandbox.tools["post_comment"].access == "write"
    local = config.server("local")
    assert local is not None
    assert local.env["API_TOKEN"] == EnvRef(env="SOME_TOKEN")
    assert config.capabilities() == {"logs.search", "publish.ticket_comment"}
    assert config.server("nope") is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("servers: [", "not valid YAML"),
        ("- just a list", "expected a mapping"),
        ("servers:\n  - {name: x, transport: carrier-pigeon, url: http://h}", "servers[x].transport"),
        ("servers:\n  - {name: x, transport: stdio}", "a stdio server needs `command`"),
        ("servers:\n  - {name: x, transport: sse}", "needs an http(s) `url`"),
        ("servers:\n  - {name: x, transport: stdio, command: c, url: http://h}", "not `url` or headers"),
        ("servers:\n  - {name: x, transport: sse, url: http://h, command: c}", "not `command`"),
        ("servers:\n  - {name: x, transport: sse, url: http://h}\n  - {name: x, transport: sse, url: http://h}",
         "server names must be unique: x"),
        ("servers:\n  - {name: x, transport: sse, url: http://h, tools: {t: {capabilities: [Logs]}}}",
         "servers[x].tools.t.capabilities[0]: must look like area.action"),
        ("servers:\n  - {name: x, transport: sse, url: http://h, tools: {t: {capabilities: []}}}",
         "servers[x].tools.t.capabilities"),
        ("servers:\n  - {name: x, transport: sse, url: http://h, password: hunter2}", "servers[x].password"),
        ("servers:\n  - {name: x, transport: sse, url: http://h, headers: {A: {vault: p}}}", "servers[x].headers.A"),
        ("roles: {triage: [not a capability]}", "roles.triage[0]: must look like area.action"),
    ],
)  # fmt: skip
def test_mistakes_are_named_with_their_place(text: str, expected: str) -> None:
    with pytest.raises(ConfigurationError) as err:
        parse_config(text, "mcp.yaml")
    assert str(err.value).startswith("mcp.yaml: ")
    assert expected in str(err.value)
    assert "hunter2" not in str(err.value)


def test_a_missing_file_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="cannot read"):
        load_config(tmp_path / "absent.yaml")


def test_the_shipped_example_of_real_servers_loads() -> None:
    example = Path(__file__).resolve().parents[3] / "deploy" / "mcp" / "servers.example.yaml"
    config = load_config(example)
    assert {s.name for s in config.servers} == {"grafana", "atlassian", "slack", "github", "sentry", "pagerduty"}
    # Every write tool is a publish.* capability, and only the delivery role holds those.
    writes = {c for s in config.servers for t in s.tools.values() if t.access == "write" for c in t.capabilities}
    assert writes
    assert all(c.startswith("publish.") for c in writes)
    holders = {role for role, caps in config.roles.items() if writes.intersection(caps)}
    assert holders == {"delivery"}
    # Every capability a role is given is provided by some tool.
    assert {c for caps in config.roles.values() for c in caps} <= config.capabilities()
    slack = config.server("slack")
    assert slack is not None
    assert isinstance(slack.env["SLACK_BOT_TOKEN"], SecretRef)

"""Role allow-lists, write-tool denial, redaction and size caps."""

from __future__ import annotations

import pytest

from pm_errors import NotFound, PermissionDenied
from pm_registry.config import parse_config
from pm_registry.policy import REDACTED, authorize, cap, redact

CONFIG = parse_config(
    """
servers:
  - name: obs
    transport: streamable_http
    url: http://127.0.0.1:1/mcp
    tools:
      search_logs: {capabilities: [logs.search]}
      query_metrics: {capabilities: [metrics.query]}
      post_comment: {capabilities: [publish.ticket_comment], access: write}
roles:
  gather.logs: [logs.search]
  gather.metrics: [metrics.query, logs.search]
  triage: [publish.ticket_comment]
  delivery: [publish.ticket_comment]
"""
)


def test_a_role_calls_what_its_allow_list_names() -> None:
    grant = authorize(CONFIG, "gather.logs", "obs", "search_logs")
    assert grant.capability == "logs.search"
    assert authorize(CONFIG, "delivery", "obs", "post_comment").tool.access == "write"


def test_a_missing_capability_is_denied_naming_role_and_capability() -> None:
    with pytest.raises(PermissionDenied) as err:
        authorize(CONFIG, "gather.logs", "obs", "query_metrics")
    assert err.value.details == {"role": "gather.logs", "capability": "metrics.query"}
    with pytest.raises(PermissionDenied):
        authorize(CONFIG, "nobody", "obs", "search_logs")


def test_write_tools_are_for_delivery_only_even_when_allow_listed() -> None:
    with pytest.raises(PermissionDenied) as err:
        authorize(CONFIG, "triage", "obs", "post_comment")
    assert "only 'delivery'" in err.value.message


def test_unknown_servers_and_tools_list_the_known_names() -> None:
    with pytest.raises(NotFound) as err:
        authorize(CONFIG, "gather.logs", "grafana", "search_logs")
    assert err.value.details == {"known_servers": ["obs"]}
    with pytest.raises(NotFound) as err:
        authorize(CONFIG, "gather.logs", "obs", "drop_tables")
    assert err.value.details == {"known_tools": ["post_comment", "query_metrics", "search_logs"]}


def test_redaction_by_key_and_by_value_shape() -> None:
    arguments = {
        "query": "error rate",
        "Authorization": "Bearer abc",
        "nested": [{"api_key": "k-123"}, {"note": "login with password=hunter22 failed"}],
        "header": "Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.payload.sig",
        "text": "token ghp_0123456789abcdefghijABCDEFGHIJ and AKIAABCDEFGHIJKLMNOP",
        "count": 3,
    }
    clean = redact(arguments)
    flat = str(clean)
    for secret in ("abc", "k-123", "hunter22", "eyJhbGciOiJIUzI1NiJ9", "ghp_0123456789", "AKIAABCDEFGHIJKLMNOP"):
        assert secret not in flat, secret
    assert clean["query"] == "error rate"
    assert clean["count"] == 3
    assert clean["Authorization"] == REDACTED
    assert "password=" + REDACTED in clean["nested"][1]["note"]
    assert arguments["Authorization"] == "Bearer abc", "the input is not modified"


def test_results_are_capped_with_an_explicit_marker() -> None:
    assert cap("short", 10) == ("short", False)
    text, truncated = cap("x" * 25, 10)
    assert truncated
    assert text.startswith("x" * 10)
    assert "[TRUNCATED: 15 of 25 characters omitted; narrow the query]" in text

"""A request's budget against the settings: lower values win, the settings are the ceiling."""

from __future__ import annotations

from pm_orchestrator.engine import Budget


def test_the_settings_apply_when_the_request_asks_for_nothing() -> None:
    assert Budget(600.0, 50, 2.0).limits({}) == {"wall_seconds": 600.0, "max_tool_calls": 50, "max_cost_usd": 2.0}


def test_a_request_may_lower_each_limit_but_never_raise_one() -> None:
    limits = Budget(600.0, 50, 2.0).limits({"wall_seconds": 30, "max_tool_calls": 500, "max_cost_usd": 0.5})
    assert limits == {"wall_seconds": 30.0, "max_tool_calls": 50, "max_cost_usd": 0.5}
    assert isinstance(limits["max_tool_calls"], int)


def test_malformed_or_unknown_entries_are_ignored() -> None:
    limits = Budget(600.0, 50, 2.0).limits(
        {"wall_seconds": "10", "max_tool_calls": True, "tokens": 1, "max_cost_usd": -1}
    )
    assert limits == {"wall_seconds": 600.0, "max_tool_calls": 50, "max_cost_usd": 2.0}

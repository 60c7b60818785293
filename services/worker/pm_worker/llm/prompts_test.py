"""The system prompts: one per role, versioned, and saying what the loop enforces."""

from __future__ import annotations

import pytest

from pm_errors import ConfigurationError
from pm_worker.llm.prompts import ROLES, load_prompt


@pytest.mark.parametrize("role", ROLES)
def test_every_role_has_a_versioned_prompt_that_demands_cited_answers(role: str) -> None:
    prompt = load_prompt(role)

    assert prompt.role == role
    assert prompt.version >= 1
    assert not prompt.text.startswith("Version:")
    assert "call_id" in prompt.text
    assert "`submit`" in prompt.text
    assert "Never guess" in prompt.text


def test_an_unknown_role_has_no_prompt() -> None:
    with pytest.raises(ConfigurationError, match="no system prompt"):
        load_prompt("summarize")

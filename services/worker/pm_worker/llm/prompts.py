"""The agents' system prompts: one versioned Markdown file per role in `prompts/`.

Each file starts with a `Version: N` line. The version is recorded with every step that used the
prompt, so a change in behaviour can be traced to a change in wording; the line itself is not
sent to the model.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources

from pm_errors import ConfigurationError

ROLES = ("triage", "gather", "hypothesize", "verify", "recommend")
_VERSION = re.compile(r"\AVersion: (\d+)\n")


@dataclass(frozen=True, slots=True)
class Prompt:
    """A role's system prompt and its version."""

    role: str
    version: int
    text: str


def load_prompt(role: str) -> Prompt:
    """The system prompt of `role` (one of ROLES)."""
    if role not in ROLES:
        raise ConfigurationError(f"no system prompt for role {role!r}; roles are {', '.join(ROLES)}")
    raw = resources.files("pm_worker.llm").joinpath("prompts", f"{role}.md").read_text(encoding="utf-8")
    match = _VERSION.match(raw)
    if match is None:
        raise ConfigurationError(f"prompts/{role}.md must start with a 'Version: N' line")
    return Prompt(role=role, version=int(match.group(1)), text=raw[match.end() :].strip())

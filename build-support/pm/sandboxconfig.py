"""Registry servers files that put the sandbox MCP server behind the registry (demo, dev stack, eval)."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from profiles import REPO_ROOT

# The incident the dev stack serves and `./pm demo` investigates (services/sandbox/scenarios);
# PM_DEMO_SCENARIO names another folder in the same layout.
DEMO_SCENARIO = REPO_ROOT / "services" / "sandbox" / "scenarios" / "payments-retry-storm"
SANDBOX_PEX = REPO_ROOT / "dist" / "pm-sandbox.pex"

# The sandbox's tools and the capability each provides, and the rule reasoner's roles: copies of
# pm_sandbox.server.TOOL_CAPABILITIES and pm_worker.rules.steps.ROLE_CAPABILITIES, because ./pm
# runs in its own environment without the services' packages.
SANDBOX_TOOLS = {
    "get_alert": "alerts.get",
    "search_logs": "logs.search",
    "query_metrics": "metrics.query",
    "search_traces": "traces.search",
    "log_patterns": "logs.patterns",
    "list_deploys": "changes.deploys",
    "list_commits": "changes.commits",
    "get_commit": "changes.diff",
    "flag_changes": "flags.changes",
    "get_ticket": "tickets.get",
    "search_messages": "comms.search",
}
# `investigator` may read everything.
ROLES = {
    "triage": ["alerts.get", "metrics.query"],
    "gather.logs": ["logs.search", "logs.patterns"],
    "gather.metrics": ["metrics.query"],
    "gather.traces": ["traces.search"],
    "gather.changes": ["changes.deploys", "changes.commits", "flags.changes"],
    "gather.context": ["tickets.get", "comms.search"],
    "hypothesize": [
        "logs.search",
        "metrics.query",
        "traces.search",
        "changes.deploys",
        "changes.commits",
        "flags.changes",
    ],
    "verify": ["changes.diff", "changes.deploys", "changes.commits", "logs.search", "metrics.query", "traces.search"],
    "recommend": [
        "logs.search",
        "metrics.query",
        "traces.search",
        "changes.deploys",
        "changes.commits",
        "changes.diff",
        "flags.changes",
    ],
    "investigator": sorted(set(SANDBOX_TOOLS.values())),
}


def demo_scenario(environ: Mapping[str, str]) -> Path:
    """The incident folder the dev stack's sandbox serves."""
    chosen = environ.get("PM_DEMO_SCENARIO", "").strip()
    return Path(chosen).resolve() if chosen else DEMO_SCENARIO


def server_name(case: Path) -> str:
    """A case folder's server name: its name, lower-case, safe characters only."""
    return re.sub(r"[^a-z0-9_-]+", "-", case.name.lower()).strip("-")[:63] or "case"


def servers_file(cases: Sequence[Path], python: str) -> str:
    """One stdio sandbox server per case folder, every sandbox tool mapped, the roles above."""
    tools = "".join(f"      {tool}: {{capabilities: [{cap}]}}\n" for tool, cap in SANDBOX_TOOLS.items())
    servers = "".join(
        f"  - name: {server_name(case)}\n"
        f"    transport: stdio\n"
        f"    command: {json.dumps(python)}\n"
        f"    args: [{json.dumps(str(SANDBOX_PEX))}, --data, {json.dumps(str(case.resolve()))}]\n"
        f"    timeout_seconds: 30\n"
        f"    tools:\n{tools}"
        for case in cases
    )
    roles = "".join(f"  {role}: [{', '.join(caps)}]\n" for role, caps in ROLES.items())
    return f"servers:\n{servers}roles:\n{roles}"

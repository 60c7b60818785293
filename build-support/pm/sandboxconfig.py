"""Registry servers files that put the sandbox MCP server behind the registry (demo, dev stack, eval)."""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from profiles import REPO_ROOT

# The incident the dev stack serves and `./pm demo` investigates (services/sandbox/scenarios);
# PM_DEMO_SCENARIO names another folder in the same layout.
DEMO_SCENARIO = REPO_ROOT / "services" / "sandbox" / "scenarios" / "payments-retry-storm"
SANDBOX_PEX = REPO_ROOT / "dist" / "pm-sandbox.pex"


def _literal(path: Path, name: str) -> dict[str, Any]:
    """The dict literal assigned to `name` at the top level of the Python file `path`, read
    without importing it: ./pm runs in its own environment, without the services' packages."""
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            value = ast.literal_eval(node.value)
            if isinstance(value, dict):
                return value
    raise RuntimeError(f"{path} has no top-level dict literal {name}")


# The sandbox's tools and the capability each provides (pm_sandbox.server.TOOL_CAPABILITIES), and
# the rule reasoner's roles (pm_worker.rules.steps.ROLE_CAPABILITIES) with `investigator`, which
# may read everything.
SANDBOX_TOOLS = {
    str(tool): str(capability)
    for tool, capability in _literal(
        REPO_ROOT / "services" / "sandbox" / "pm_sandbox" / "server.py", "TOOL_CAPABILITIES"
    ).items()
}
ROLES = {
    **{
        str(role): [str(c) for c in capabilities]
        for role, capabilities in _literal(
            REPO_ROOT / "services" / "worker" / "pm_worker" / "rules" / "steps.py", "ROLE_CAPABILITIES"
        ).items()
    },
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

"""`./pm eval <folder>`: the rule reasoner on every case of a RootCauseBench-layout folder.

A fresh stack of its own (profile "eval", data in .stack/eval) is started with the packaged
services; its registry gets one MCP server per case, the sandbox serving that case's folder
over stdio. Each case is then investigated by the rule reasoner through the registry's
CallTool (every call audited in mcp_tool_calls, like an agent's) and scored against its
ground_truth.json, which the sandbox never serves. Until the orchestrator runs whole
investigations (issue 5), this measures the reasoner's playbooks, not the full pipeline.
"""

# ruff: noqa: T201 -- a command-line front end: printing is its output.

from __future__ import annotations

import subprocess
from collections.abc import Mapping
from pathlib import Path

import pexservices
import stack
from processes import base_environ
from profiles import REPO_ROOT, StackError
from sandboxconfig import server_name, servers_file


def find_cases(folder: Path) -> list[Path]:
    """Case folders: `folder` itself, or its subfolders, that hold data/alert.json and ground_truth.json."""
    candidates = (
        [folder] if (folder / "data" / "alert.json").is_file() else sorted(p for p in folder.iterdir() if p.is_dir())
    )
    cases = [c for c in candidates if (c / "data" / "alert.json").is_file() and (c / "ground_truth.json").is_file()]
    if not cases:
        raise StackError(f"{folder}: no case folders with data/alert.json and ground_truth.json")
    names = [server_name(c) for c in cases]
    if len(set(names)) != len(names):
        raise StackError(f"{folder}: case folder names collide after normalisation: {names}")
    return cases


def evaluate(folder: str, environ: Mapping[str, str], *, output: str | None, keep: bool) -> int:
    cases = find_cases(Path(folder).resolve())
    print(f"pm: evaluating the rule reasoner on {len(cases)} case(s) from {folder}")
    python = pexservices.python311()
    config = REPO_ROOT / ".stack" / "eval-mcp-servers.yaml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(servers_file(cases, python))
    eval_environ = {**environ, "MCP_SERVERS_FILE": str(config), "LOG_LEVEL": "warning"}
    profile = stack.up_fresh("eval", eval_environ)
    out = Path(output) if output else REPO_ROOT / ".stack" / "eval-results.json"
    try:
        command = [python, str(pexservices.DIST / "pm-worker.pex"), "--registry", profile.address("registry"),
                   "--json", str(out), *(str(c) for c in cases)]  # fmt: skip
        result = subprocess.run(command, env={**base_environ(environ), "PEX_MODULE": "pm_worker.evaluate"}, check=False)
    finally:
        if not keep:
            stack.down("eval", eval_environ)
    return result.returncode

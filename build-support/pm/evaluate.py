"""`./pm eval <folder>`: every case of a RootCauseBench-layout folder as one whole investigation.

A fresh stack of its own (profile "eval", data in .stack/eval) is started with the packaged
services; its registry gets one MCP server per case, the sandbox serving that case's folder
over stdio. Each case is submitted through Envoy's REST API as a ticket whose domain is the
case's server, investigated like any other (orchestrator, workers with the rule reasoner,
registry), and its report is scored against the case's ground_truth.json, which the sandbox
never serves.
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

API_KEY = "eval-api-key-0001"


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
    print(f"pm: {len(cases)} case(s) from {folder}, each a whole investigation with the rule reasoner")
    python = pexservices.python311()
    config = REPO_ROOT / ".stack" / "eval-mcp-servers.yaml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(servers_file(cases, python))
    eval_environ = {
        **environ,
        "MCP_SERVERS_FILE": str(config),
        "LOG_LEVEL": "warning",
        "API_KEYS": API_KEY,
        "RATE_LIMIT_INVESTIGATION_PER_MINUTE": "100000",
        "RATE_LIMIT_QUERY_PER_MINUTE": "1000000",
    }
    profile = stack.up_fresh("eval", eval_environ)
    out = Path(output) if output else REPO_ROOT / ".stack" / "eval-results.json"
    try:
        command = [python, str(pexservices.DIST / "pm-worker.pex"), "--api", f"http://{profile.address('envoy')}",
                   "--api-key", API_KEY, "--json", str(out), *(f"{server_name(c)}={c}" for c in cases)]  # fmt: skip
        result = subprocess.run(command, env={**base_environ(environ), "PEX_MODULE": "pm_worker.evaluate"}, check=False)
    finally:
        if not keep:
            stack.down("eval", eval_environ)
    return result.returncode

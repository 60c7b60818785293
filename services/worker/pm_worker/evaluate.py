"""Run the rule reasoner over benchmark cases through a running registry and score it.

`PEX_MODULE=pm_worker.evaluate python dist/pm-worker.pex --registry HOST:PORT --json OUT CASE...`
(`./pm eval <folder>` starts the stack, the sandbox servers and this). Each case is served by
the registry server named `server_name(case)`; tool calls go through CallTool like any agent's.
"""

# ruff: noqa: T201 -- a command-line front end: printing is its output.

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc

from pm.registry.v1 import registry_pb2, registry_pb2_grpc
from pm_worker.rules.reasoner import RuleReasoner
from pm_worker.rules.scoring import CaseScore, failed_case, score_case, summary, table
from pm_worker.rules.toolbox import RegistryToolBox

ROLE = "investigator"
CONNECT_TIMEOUT_SECONDS = 120.0


def server_name(case: Path) -> str:
    """The registry server name of a case folder: its name, lower-case, safe characters only."""
    return re.sub(r"[^a-z0-9_-]+", "-", case.name.lower()).strip("-")[:63] or "case"


async def _wait_connected(stub: Any, names: set[str]) -> None:
    deadline = time.monotonic() + CONNECT_TIMEOUT_SECONDS
    while True:
        reply = await stub.ListServers(registry_pb2.ListServersRequest(), timeout=10)
        ready = {s.name for s in reply.servers if s.tool_count > 0}
        if names <= ready:
            return
        if time.monotonic() > deadline:
            missing = {s.name: s.last_error for s in reply.servers if s.name in names - ready}
            raise RuntimeError(f"registry servers not connected: {missing}")
        await asyncio.sleep(0.5)


async def run_case(channel: grpc.aio.Channel, case: Path) -> tuple[CaseScore, dict[str, Any]]:
    truth = json.loads((case / "ground_truth.json").read_text())
    tools = RegistryToolBox(channel, agent_role=ROLE, server=server_name(case), phase="eval")
    started = time.monotonic()
    try:
        findings = await RuleReasoner(tools).investigate()
    except Exception as exc:  # noqa: BLE001 - one broken case must not end the run; it scores zero
        return failed_case(case.name, truth, f"{type(exc).__name__}: {exc}", time.monotonic() - started), {}
    return score_case(case.name, findings, truth, seconds=time.monotonic() - started, tool_calls=tools.calls), findings


async def evaluate(registry: str, cases: Sequence[Path], output: Path | None) -> dict[str, Any]:
    async with grpc.aio.insecure_channel(registry) as channel:
        stub: Any = registry_pb2_grpc.RegistryServiceStub(channel)
        await _wait_connected(stub, {server_name(c) for c in cases})
        scores: list[CaseScore] = []
        findings: dict[str, Any] = {}
        for case in cases:
            score, found = await run_case(channel, case)
            scores.append(score)
            findings[case.name] = found
            print(
                f"  {case.name}: {score.verdict or 'ERROR'} {score.found_commit[:12]} ({score.seconds:.1f}s)",
                flush=True,
            )
    result: dict[str, Any] = {"reasoner": "rule", "summary": summary(scores), "findings": findings}
    print()
    print(table(scores))
    overall = result["summary"]
    print()
    print(
        f"root cause: {overall['root_cause_accuracy']}  on 'none' cases: {overall['none_case_accuracy']}  "
        f"first failing service: {overall['first_failing_service_accuracy']}  "
        f"blast radius (Jaccard): {overall['blast_radius_jaccard_mean']}  "
        f"remediation: {overall['remediation_accuracy']}  "
        f"mean time per case: {overall['seconds_per_case_mean']}s"
    )
    if output is not None:
        output.write_text(json.dumps(result, indent=2, sort_keys=True))
        print(f"JSON: {output}")
    return result


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="pm-eval", description=__doc__)
    parser.add_argument("--registry", required=True, help="the registry's gRPC address")
    parser.add_argument("--json", type=Path, help="write the scores and findings here")
    parser.add_argument("cases", nargs="+", type=Path, help="case folders (RootCauseBench layout)")
    args = parser.parse_args(argv)
    result = asyncio.run(evaluate(args.registry, args.cases, args.json))
    sys.exit(1 if result["summary"]["failed_cases"] else 0)


if __name__ == "__main__":
    main()

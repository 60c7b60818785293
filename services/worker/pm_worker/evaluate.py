"""Run benchmark cases as whole investigations through the public API and score their reports.

`PEX_MODULE=pm_worker.evaluate python dist/pm-worker.pex --api URL --api-key KEY --json OUT SERVER=CASE...`
(`./pm eval <folder>` starts the stack, one sandbox server per case, and this). Each case is
submitted as a ticket whose domain is the registry server serving it, so its steps take their
tools from that server; the investigation runs like any other (orchestrator, workers, registry), and its
report is scored against the case's ground_truth.json, which the sandbox never serves.
"""

# ruff: noqa: T201 -- a command-line front end: printing is its output.

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pm_worker.rules.scoring import CaseScore, failed_case, score_case, summary, table

TIMEOUT_SECONDS = 300.0


def parse_case(value: str) -> tuple[str, Path]:
    """`SERVER=FOLDER`: the registry server that serves the case folder."""
    server, sep, folder = value.partition("=")
    if not sep or not server or not folder:
        raise argparse.ArgumentTypeError(f"expected SERVER=FOLDER, got {value!r}")
    return server, Path(folder)


class Api:
    """The REST API with an API key (stdlib only: this runs from the worker's pex)."""

    def __init__(self, base: str, api_key: str) -> None:
        self._base = base.rstrip("/")
        self._key = api_key

    def call(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(f"{self._base}{path}", data=data, method=method)
        request.add_header("x-api-key", self._key)
        if data is not None:
            request.add_header("content-type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:  # - the operator's URL
                return response.status, json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as error:
            try:
                return error.code, json.loads(error.read() or b"{}")
            except ValueError:
                return error.code, {}


def findings_of(report: Mapping[str, Any]) -> dict[str, Any]:
    """What the scorer compares, read from a report of the API."""
    culprit = report.get("culprit_change") or {}
    verdict = str(report.get("verdict", ""))
    commit = str(culprit.get("ref", "")) if culprit.get("kind") == "commit" else ""
    recommendations = report.get("recommendations") or []
    return {
        "verdict": verdict,
        "confidence": float(report.get("confidence", 0.0)),
        "root_cause_commit": commit if commit and verdict in ("ROOT_CAUSE", "PROBABLE_CAUSE") else "none",
        "first_failing_service": report.get("first_failing_service", ""),
        "blast_radius": list(report.get("blast_radius") or []),
        "remediation": {"class": recommendations[0].get("action", "") if recommendations else ""},
    }


def run_case(api: Api, server: str, case: Path, run_id: str) -> tuple[CaseScore, dict[str, Any]]:
    truth = json.loads((case / "ground_truth.json").read_text())
    started = time.monotonic()
    status, reply = api.call(
        "POST",
        "/api/v1/investigate",
        {"ticket_id": f"EVAL-{run_id}-{server}"[:200], "domain": server},
    )
    if status != 202:
        return failed_case(case.name, truth, f"submit answered {status}: {reply}", time.monotonic() - started), {}
    investigation_id = str(reply["investigation_id"])
    investigation: dict[str, Any] = {}
    while time.monotonic() - started < TIMEOUT_SECONDS:
        status, investigation = api.call("GET", f"/api/v1/investigations/{investigation_id}")
        if status == 200 and investigation.get("status") in ("completed", "failed", "cancelled"):
            break
        time.sleep(0.1)
    if investigation.get("status") != "completed":
        ended = investigation.get("status", "unfinished")
        problem = f"investigation {investigation_id} ended {ended}: {investigation.get('error', '')}"
        return failed_case(case.name, truth, problem, time.monotonic() - started), {}
    status, report = api.call("GET", f"/api/v1/investigations/{investigation_id}/report")
    if status != 200:
        return failed_case(case.name, truth, f"report answered {status}", time.monotonic() - started), {}
    found = findings_of(report)
    usage = investigation.get("usage") or {}
    score = score_case(
        case.name,
        found,
        truth,
        seconds=time.monotonic() - started,
        tool_calls=int(usage.get("tool_calls", 0)),
        cost_usd=float(usage.get("cost_usd", 0.0)),
    )
    return score, {**found, "investigation_id": investigation_id, "summary": report.get("summary", "")}


def evaluate(api: Api, cases: Sequence[tuple[str, Path]], output: Path | None) -> dict[str, Any]:
    run_id = str(int(time.time()))
    scores: list[CaseScore] = []
    findings: dict[str, Any] = {}
    for server, case in cases:
        score, found = run_case(api, server, case, run_id)
        scores.append(score)
        findings[case.name] = found
        print(
            f"  {case.name}: {score.verdict or 'ERROR'} {score.found_commit[:12]} ({score.seconds:.1f}s) {score.error}",
            flush=True,
        )
    reasoner = "llm" if any(s.cost_usd > 0 for s in scores) else "rule"
    result: dict[str, Any] = {
        "reasoner": reasoner,
        "pipeline": "full",
        "summary": summary(scores),
        "findings": findings,
    }
    overall = result["summary"]
    print()
    print(table(scores))
    print()
    print(
        f"root cause: {overall['root_cause_accuracy']}  on 'none' cases: {overall['none_case_accuracy']}  "
        f"first failing service: {overall['first_failing_service_accuracy']}  "
        f"blast radius (Jaccard): {overall['blast_radius_jaccard_mean']}  "
        f"remediation: {overall['remediation_accuracy']}  mean time per case: {overall['seconds_per_case_mean']}s"
        f"  cost: ${overall['cost_usd_total']:.4f} ({reasoner} reasoner)"
    )
    if output is not None:
        output.write_text(json.dumps(result, indent=2, sort_keys=True))
        print(f"JSON: {output}")
    return result


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="pm-eval", description=__doc__)
    parser.add_argument("--api", required=True, help="the REST API's base URL (Envoy)")
    parser.add_argument("--api-key", required=True)
    parser.add_argument("--json", type=Path, help="write the scores and findings here")
    parser.add_argument(
        "cases", nargs="+", type=parse_case, help="SERVER=FOLDER: a case folder (RootCauseBench layout) and its server"
    )
    args = parser.parse_args(argv)
    result = evaluate(Api(args.api, args.api_key), args.cases, args.json)
    sys.exit(1 if result["summary"]["failed_cases"] else 0)


if __name__ == "__main__":
    main()

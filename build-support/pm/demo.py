"""`./pm demo`: one real investigation of the demo incident, through the public REST API.

Starts the dev stack when it is not running (its registry serves the sandbox with the demo
incident unless MCP_SERVERS_FILE says otherwise), submits a ticket with the stack's API key
through Envoy, follows the investigation phase by phase, and prints the verdict, the culprit,
the confidence and where the report is. Exits 0 when the investigation completed.
"""

# ruff: noqa: T201 -- a command-line front end: printing is its output.

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import restapi
import sandboxconfig
import stack
from localsecrets import load_or_create
from profiles import REPO_ROOT, StackError, load_profile

TIMEOUT_SECONDS = 300.0
POLL_SECONDS = 0.5


def run_demo(environ: Mapping[str, str]) -> int:
    scenario = sandboxconfig.demo_scenario(environ)
    if not (scenario / "data" / "alert.json").is_file():
        raise StackError(f"the demo incident is missing: {scenario} has no data/alert.json")
    stack.up_dev(environ, infra_only=False)  # starts it unless it is running
    profile = load_profile("dev", environ)
    api_key = (environ.get("API_KEYS") or load_or_create(profile.secrets_file).api_keys).split(",")[0].strip()
    base = f"http://{profile.address('envoy')}/api/v1"
    if environ.get("ANTHROPIC_API_KEY") or environ.get("OPENAI_API_KEY"):
        print(
            "pm: an LLM key is set: in balanced mode the LLM runs HYPOTHESIZE, VERIFY and RECOMMEND on the rule"
            " reasoner's evidence (docs/llm.md); if the stack was already up without the key, `./pm down` first"
        )
    else:
        print("pm: no LLM key (ANTHROPIC_API_KEY / OPENAI_API_KEY): the rule reasoner investigates, no LLM involved")
    ticket = f"DEMO-{int(time.time())}"
    status, reply = restapi.call("POST", f"{base}/investigate", api_key, {"ticket_id": ticket, "mode": "balanced"})
    if status != 202:
        raise StackError(f"POST {base}/investigate answered {status}: {reply}")
    investigation_id = str(reply["investigation_id"])
    print(f"pm: submitted {ticket} through Envoy -> investigation {investigation_id}")
    started = time.monotonic()
    investigation = _follow(base, api_key, investigation_id)
    if investigation.get("status") != "completed":
        print(f"pm: the investigation ended {investigation.get('status')}: {investigation.get('error', '')}")
        return 1
    status, report = restapi.call("GET", f"{base}/investigations/{investigation_id}/report", api_key)
    if status != 200:
        raise StackError(f"GET report answered {status}: {report}")
    local = profile.dir / "reports" / f"{investigation_id}.md"
    local.parent.mkdir(parents=True, exist_ok=True)
    local.write_text(str(report.get("markdown", "")))
    _print_report(report)
    print(f"report:       {local.relative_to(REPO_ROOT)} (Markdown); {report.get('html_uri')} (HTML in the stack's S3)")
    print(f"              GET {base}/investigations/{investigation_id}/report with your x-api-key")
    print(f"took {time.monotonic() - started:.1f}s")
    return 0


def _follow(base: str, api_key: str, investigation_id: str) -> dict[str, Any]:
    """Poll the investigation, printing each new status and phase, until it ends."""
    started = time.monotonic()
    seen = ""
    while time.monotonic() - started < TIMEOUT_SECONDS:
        status, investigation = restapi.call("GET", f"{base}/investigations/{investigation_id}", api_key)
        if status != 200:
            raise StackError(f"GET {base}/investigations/{investigation_id} answered {status}: {investigation}")
        now = f"{investigation.get('status')}/{investigation.get('phase')}"
        if now != seen:
            print(
                f"  {time.monotonic() - started:5.1f}s  {investigation.get('status'):<10} {investigation.get('phase')}"
            )
            seen = now
        if investigation.get("status") in ("completed", "failed", "cancelled"):
            return investigation
        time.sleep(POLL_SECONDS)
    raise StackError(f"investigation {investigation_id} did not finish within {TIMEOUT_SECONDS:.0f}s")


def _print_report(report: Mapping[str, Any]) -> None:
    culprit = report.get("culprit_change") or {}
    print()
    print(f"verdict:      {report.get('verdict')} (confidence {float(report.get('confidence', 0)):.0%})")
    print(f"summary:      {report.get('summary')}")
    if culprit:
        where = f"{culprit.get('kind')} {culprit.get('ref')} on {culprit.get('service')}"
        print(f"culprit:      {where}: {culprit.get('summary')}")
    else:
        print(f"culprit:      none — {report.get('operational_signal') or 'no operational signal found'}")
    blast = ", ".join(report.get("blast_radius") or []) or "none"
    print(f"first failing service: {report.get('first_failing_service')}; blast radius: {blast}")
    fix = [f"{r.get('action')}: {r.get('description')}" for r in report.get("recommendations") or []]
    if fix:
        print(f"fix plan:     {fix[0]}")

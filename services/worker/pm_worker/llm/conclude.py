"""RECOMMEND by a model: it reads the evidence and the verified hypotheses (checked by the rule
reasoner, or by the verification agent in the modes that run it, `roles.py`), may call the role's
tools to confirm what it lacks, and submits cited findings.

The model weighs the facts the earlier steps collected and cited — it can read a diff the rules
misjudged, or reject a culprit whose checks are thin — and its answer
goes through the citation checker against every call id this investigation's state holds plus
the calls the model made itself. When the providers stay unavailable the rule reasoner's
conclusion stands, with the outage named among the problems, so an outage never kills an
investigation.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from google.protobuf import json_format

from pm_worker.llm.case_view import key_of
from pm_worker.llm.citations import check_citations
from pm_worker.llm.consistency import reconcile
from pm_worker.llm.loop import AgentLoop, LoopResult, Step
from pm_worker.llm.prompts import load_prompt
from pm_worker.llm.protocol import ProviderUnavailable, RoleTools, ToolResult, ToolSpec
from pm_worker.llm.schemas import Findings
from pm_worker.rules.reasoner import Case
from pm_worker.rules.toolbox import RegistryToolBox, Route

log = logging.getLogger(__name__)

MAX_ERRORS_IN_CONTEXT = 20
MAX_CANDIDATES_IN_CONTEXT = 12


class RegistryTools:
    """The role's registry tools, named for the model (`tool`, or `server__tool` when two
    servers offer the same name), run through the registry with the step's ids."""

    def __init__(self, box: RegistryToolBox) -> None:
        self._box = box
        self._routes: dict[str, Route] = {}

    async def specs(self) -> list[ToolSpec]:
        tools = await self._box.tools()
        counts: dict[str, int] = {}
        for tool in tools:
            counts[tool.name] = counts.get(tool.name, 0) + 1
        specs = []
        for tool in tools:
            name = tool.name if counts[tool.name] == 1 else f"{tool.server}__{tool.name}"
            self._routes[name] = Route(tool.server, tool.name)
            schema = dict(_struct_dict(tool.input_schema)) or {"type": "object", "properties": {}}
            specs.append(ToolSpec(name=name, description=tool.description or name, input_schema=schema))
        return specs

    async def call(self, name: str, arguments: dict[str, Any]) -> ToolResult:
        route = self._routes.get(name)
        if route is None:
            return ToolResult("", f"unknown tool {name!r}; the tools are: {', '.join(sorted(self._routes))}", True)
        answer = await self._box.call_tool(route, arguments)
        if answer.error:
            return ToolResult(answer.call_id, answer.error, True)
        return ToolResult(answer.call_id, json.dumps(answer.data, sort_keys=True, default=str))


def _struct_dict(value: Any) -> Mapping[str, Any]:
    return json_format.MessageToDict(value) if value is not None else {}


@dataclass(frozen=True, slots=True)
class LLMConclusion:
    """The findings (as the report renderer reads them) and what the model spent."""

    findings: dict[str, Any]
    # None when no provider answered and the rule reasoner's findings stand.
    result: LoopResult[Findings] | None = None


def case_call_ids(case: Case) -> set[str]:
    """Every tool-call id the investigation's state cites."""
    ids: set[str] = {i for calls in case.calls.values() for i in calls}
    for candidate in case.candidates:
        ids.update(candidate.call_ids)
        for check in candidate.checks:
            ids.update(check.call_ids)
    for item in (*case.evidence, *case.operational):
        ids.update(item.call_ids)
    return {i for i in ids if i}


def context_text(case: Case, rule_findings: Mapping[str, Any], notes: Mapping[str, Any] | None = None) -> str:
    """The investigation as the model reads it: compact, every fact with its call ids (and what
    the verification agent concluded of each candidate, when one ran)."""
    verification = (notes or {}).get("verification", {})
    errors = [
        {k: e.get(k) for k in ("timestamp", "service", "severity_text", "msg", "message", "stack") if e.get(k)}
        for e in case.errors
        if str(e.get("severity_text", "")).upper() in ("ERROR", "FATAL", "CRITICAL")
    ][:MAX_ERRORS_IN_CONTEXT]
    candidates = [
        {
            "kind": c.kind,
            "ref": c.ref,
            "service": c.service,
            "reached_production": c.at.isoformat(),
            "title": c.title,
            "files": list(c.files),
            "call_ids": sorted(set(c.call_ids)),
            "verified": c.verified,
            "rule_score": c.score,
            "checks": [
                {"name": k.name, "passed": k.passed, "detail": k.detail, "call_ids": k.call_ids} for k in c.checks
            ],
            **(
                {"verification_agent": {k: verification[key][k] for k in ("status", "reason")}}
                if (key := key_of(c.kind, c.ref)) in verification
                else {}
            ),
        }
        for c in case.candidates[:MAX_CANDIDATES_IN_CONTEXT]
    ]
    operational_verified = [
        {k: v[k] for k in ("ref", "status", "reason")}
        for key, v in verification.items()
        if key.startswith("operational:")
    ]
    context = {
        "alert": case.alert,
        "alert_call_ids": case.calls.get("alert", []),
        "onset": case.onset.isoformat() if case.onset else None,
        "first_failing_service": case.first_failing,
        "blast_radius": case.blast_radius,
        "error_log_call_ids": case.calls.get("errors", [])[:5],
        "errors": errors,
        "evidence": [{"claim": e.claim, "call_ids": e.call_ids} for e in case.evidence],
        "operational_signals": [{"claim": e.claim, "call_ids": e.call_ids} for e in case.operational],
        "candidates": candidates,
        **({"operational_causes_checked": operational_verified} if operational_verified else {}),
        "unverified_candidates": len(case.unproposed),
        "rule_reasoner": {
            "verdict": rule_findings.get("verdict"),
            "confidence": rule_findings.get("confidence"),
            "summary": rule_findings.get("summary"),
        },
        "problems": case.problems,
    }
    return (
        "The investigation so far, as JSON. The rule reasoner's verdict is a second opinion, not an"
        " answer: weigh the evidence yourself.\n\n" + json.dumps(context, indent=1, default=str)
    )


async def conclude_with_llm(
    loop: AgentLoop,
    model: str,
    tools: RoleTools,
    case: Case,
    rule_findings: Mapping[str, Any],
    notes: Mapping[str, Any] | None = None,
) -> LLMConclusion:
    """RECOMMEND by the model; the rule reasoner's findings when the providers are down."""
    prompt = load_prompt("recommend")
    step: Step[Findings] = Step(
        system=prompt.text,
        context=context_text(case, rule_findings, notes),
        tools=await tools.specs(),
        output=Findings,
        model=model,
    )
    try:
        result = await loop.run(step, tools)
    except ProviderUnavailable as exc:
        problem = f"LLM unavailable ({exc.message}); the rule reasoner's conclusion stands"
        log.warning("%s", problem)
        findings = {**rule_findings, "problems": [*rule_findings.get("problems", []), problem]}
        return LLMConclusion(findings=findings)
    review = check_citations(result.output, case_call_ids(case) | set(result.call_ids))
    consistent = reconcile(review.findings, case, notes or {})
    findings = consistent.findings.to_report()
    problems = list(rule_findings.get("problems", []))
    if review.rejected:
        problems.append(
            f"{review.rejected} claim(s) of the model cited no tool call of this investigation and were removed"
        )
    if consistent.problem:
        problems.append(consistent.problem)
    findings.update(
        {
            "onset": rule_findings.get("onset"),
            "alert": rule_findings.get("alert"),
            "iterations": rule_findings.get("iterations"),
            "problems": problems,
            "reasoner": "llm",
            "model": result.model,
            "prompt_version": prompt.version,
            "rejected_claims": review.rejected,
            "rule_verdict": rule_findings.get("verdict"),
            "model_verdict": result.output.verdict,
        }
    )
    return LLMConclusion(findings=findings, result=result)

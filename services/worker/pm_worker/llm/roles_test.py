"""The LLM's TRIAGE, HYPOTHESIZE and VERIFY on the project's scenario: the rule reasoner's real states (its
tools answered in-process from the scenario, as in rules/reasoner_test.py), the real `anthropic`
SDK and our loop against a local Messages API server with scripted replies, and the conversion of
the models' answers back into the state the next step and the report read."""

from __future__ import annotations

import itertools
import json
import shutil
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from pm_sandbox.data import Incident, QueryError, load_incident
from pm_sandbox.server import TOOL_CAPABILITIES
from pm_settings import SettingsError, load_settings
from pm_testing.fake_llm import FakeLLM, Reply, message, overloaded, running_fake_llm, tool_use
from pm_worker.llm import gather_context, hypothesize, verify
from pm_worker.llm.anthropic_api import AnthropicProvider
from pm_worker.llm.case_view import NOTES_KEY, notes_of
from pm_worker.llm.citations import review_verification
from pm_worker.llm.loop import AgentLoop, LoopSettings
from pm_worker.llm.protocol import ProviderUnavailable, ToolResult, ToolSpec
from pm_worker.llm.roles import Assignment, LLMSetup, run_llm_role
from pm_worker.llm.schemas import Verification
from pm_worker.rules.reasoner import Candidate, Case, Check, ContextSources
from pm_worker.rules.signals import parse_time
from pm_worker.rules.steps import ROLE_CAPABILITIES, dump_case, load_case, run_role
from pm_worker.rules.toolbox import Answer
from pm_worker.settings import WorkerSettings

SCENARIO = Path(__file__).resolve().parents[3] / "sandbox" / "scenarios" / "payments-retry-storm"
TRUTH = json.loads((SCENARIO / "ground_truth.json").read_text())
CULPRIT = TRUTH["root_cause_commit"]
GATEWAY = "b6a52c92478ec13f52d87cfd9b03ff3e596200a5"  # the decoy deployed on the alerted service
NEVER_DEPLOYED = "1c53e75a"  # the pgx bump on ledger that never shipped
MODEL = "claude-sonnet-5-5"
TOOL_BY_CAPABILITY = {capability: tool for tool, capability in TOOL_CAPABILITIES.items()}


class ScenarioTools:
    """The scenario's tools, answered by the sandbox's own queries, numbering calls call-1, ...:
    by capability for the rule reasoner, by name (only the role's) for a model."""

    def __init__(self, incident: Incident) -> None:
        self._incident = incident
        self._ids = itertools.count(1)
        self.role = ""
        self.calls: list[tuple[str, str, dict[str, Any]]] = []

    async def call(self, capability: str, arguments: Mapping[str, Any]) -> Answer:
        tool = TOOL_BY_CAPABILITY[capability]
        call_id = f"call-{next(self._ids)}"
        self.calls.append((call_id, tool, dict(arguments)))
        try:
            return Answer(call_id, capability, tool, getattr(self._incident, tool)(**dict(arguments)))
        except QueryError as exc:
            return Answer(call_id, capability, tool, error=str(exc))

    def for_role(self, role: str) -> RoleTools:
        return RoleTools(self, role)


class RoleTools:
    """What a model of `role` may call (the role's capabilities, as the registry allows them)."""

    def __init__(self, scenario: ScenarioTools, role: str) -> None:
        self._scenario = scenario
        self._allowed = {t: c for t, c in TOOL_CAPABILITIES.items() if c in ROLE_CAPABILITIES[role]}

    async def specs(self) -> list[ToolSpec]:
        return [ToolSpec(t, f"{t} ({c})", {"type": "object", "properties": {}}) for t, c in self._allowed.items()]

    async def call(self, name: str, arguments: dict[str, Any]) -> ToolResult:
        answer = await self._scenario.call(self._allowed[name], arguments)
        return ToolResult(answer.call_id, json.dumps(answer.data) if answer.ok else answer.error, not answer.ok)


def context_of(body: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON the investigation context (the first user message) carries."""
    text = body["messages"][0]["content"][0]["text"]
    return dict(json.loads(text.split("\n\n", 1)[1]))


def candidate(context: Mapping[str, Any], section: str, ref: str) -> dict[str, Any]:
    return next(c for c in context[section] if c["ref"] == ref)


@pytest.fixture()
async def llm() -> AsyncIterator[FakeLLM]:
    async with running_fake_llm() as fake:
        yield fake


@pytest.fixture()
async def loop(llm: FakeLLM) -> AsyncIterator[AgentLoop]:
    async with AnthropicProvider(api_key="test-key", base_url=llm.anthropic_base_url, max_retries=2) as provider:
        yield AgentLoop(provider, settings=LoopSettings(max_turns=4, max_tokens=8192))


@pytest.fixture()
async def gathered() -> tuple[ScenarioTools, list[dict[str, Any]]]:
    tools = ScenarioTools(load_incident(SCENARIO))
    triage, _ = await run_role(tools, "triage", [])
    states = [
        (await run_role(tools, f"gather.{part}", [triage]))[0] for part in ("logs", "metrics", "traces", "changes")
    ]
    return tools, states


def _hypotheses(body: dict[str, Any]) -> Reply:
    context = context_of(body)
    culprit = candidate(context, "candidates", CULPRIT)
    assert culprit["rule_proposed"] is True
    errors = context["error_log_call_ids"]
    deploys = context["other_changes"]["deploy_call_ids"]
    answer = {
        "hypotheses": [
            {
                "kind": "commit",
                "ref": CULPRIT[:12],
                "service": "payments",
                "mechanism": "Retries without backoff on ABORTED pile writers onto ledger's row lock.",
                "evidence": [
                    {"claim": "payments shipped the retry change before the onset", "call_ids": culprit["call_ids"]},
                    {"claim": "payments logs ledger retries and pool exhaustion", "call_ids": errors[:1]},
                ],
                "falsified_by": ["the diff keeps two attempts with exponential backoff"],
                "plausibility": 0.7,
            },
            {
                "kind": "commit",
                "ref": GATEWAY[:10],
                "service": "api-gateway",
                "mechanism": "A rewritten error map turns upstream errors into 5xx.",
                "evidence": [{"claim": "api-gateway deployed just before the alert", "call_ids": deploys}],
                "falsified_by": ["the map has the same entries as the old switch"],
                "plausibility": 0.3,
            },
            {
                "kind": "commit",
                "ref": NEVER_DEPLOYED,
                "service": "ledger",
                "mechanism": "A driver bump changes lock timeouts.",
                "evidence": [{"claim": "ledger bumped pgx", "call_ids": context["other_changes"]["commit_call_ids"]}],
                "falsified_by": ["it was never deployed"],
                "plausibility": 0.1,
            },
            {
                "kind": "flag",
                "ref": "checkout_express_pay",
                "mechanism": "A new button floods PlaceOrder.",
                "evidence": [{"claim": "the flag turned on at 09:45:30", "call_ids": ["call-that-never-was"]}],
                "falsified_by": ["checkout request_rate stays flat"],
                "plausibility": 0.2,
            },
        ]
    }
    return message(tool_use("submit", answer), input_tokens=4000, output_tokens=700)


async def _hypothesized(
    llm: FakeLLM, loop: AgentLoop, tools: ScenarioTools, gathered: list[dict[str, Any]]
) -> tuple[dict[str, Any], dict[str, Any]]:
    state, output = await run_role(tools, "hypothesize", gathered, per_iteration=2)
    llm.anthropic(_hypotheses)
    agent = Assignment("hypothesize", "balanced", MODEL, loop)
    step = await run_llm_role(agent, tools.for_role("hypothesize"), gathered, state, output, per_iteration=2)
    return step.state, step.output


async def test_the_models_ranking_replaces_the_rule_proposal_and_uncited_hypotheses_are_dropped(
    llm: FakeLLM, loop: AgentLoop, gathered: tuple[ScenarioTools, list[dict[str, Any]]]
) -> None:
    tools, states = gathered

    state, output = await _hypothesized(llm, loop, tools, states)

    case = load_case(state)
    proposed = [c.ref for c in case.candidates if c.proposed_in == case.iteration]
    # The model's top two are verified next; the gateway change (deployed, but not a rule candidate)
    # was added from the gathered changes; the rule reasoner's own proposal went back to waiting.
    assert proposed == [CULPRIT, GATEWAY]
    assert output["proposed"] == [
        {"kind": c.kind, "ref": c.ref, "service": c.service, "title": c.title}
        for c in case.candidates
        if c.ref in proposed
    ]
    assert len(output["rule_proposed"]) == 2
    assert CULPRIT in output["rule_proposed"]
    # The flag hypothesis cited only a call that never happened: removed and counted.
    assert output["rejected_claims"] == 1
    assert [h["ref"] for h in output["hypotheses"]] == [CULPRIT[:12], GATEWAY[:10], NEVER_DEPLOYED]
    assert any("dropped for want of cited evidence: flag checkout_express_pay" in p for p in case.problems)
    # A change the deploys never shipped cannot be verified, and the problems say so.
    assert any(NEVER_DEPLOYED in p and "not verified" in p for p in case.problems)
    assert (output["reasoner"], output["model"], output["tier"], output["prompt_version"]) == (
        "llm",
        MODEL,
        "balanced",
        2,
    )
    # The mechanism and falsifiers ride along for VERIFY.
    ranked = state[NOTES_KEY]["hypotheses"]["ranked"]
    assert ranked[0]["falsified_by"] == ["the diff keeps two attempts with exponential backoff"]
    assert (ranked[0]["candidate"], ranked[0]["proposed"]) == (CULPRIT, True)
    # The request: the hypothesis prompt, the role's tools (no diffs) plus submit, cached prefix.
    (body,) = llm.bodies()
    assert body["model"] == MODEL
    assert body["system"][0]["text"].startswith("You are the hypothesis agent")
    names = [t["name"] for t in body["tools"]]
    assert sorted(names) == sorted(
        ["search_logs", "query_metrics", "search_traces", "list_deploys", "list_commits", "flag_changes", "submit"]
    )
    assert body["tools"][-1]["cache_control"] == {"type": "ephemeral"}
    assert body["messages"][0]["content"][0]["cache_control"] == {"type": "ephemeral"}
    assert "hypotheses" in body["tools"][-1]["input_schema"]["properties"]


async def test_the_hypothesis_agent_reads_the_known_issues_and_past_incidents_it_was_given(
    llm: FakeLLM, loop: AgentLoop, gathered: tuple[ScenarioTools, list[dict[str, Any]]]
) -> None:
    tools, states = gathered
    state, output = await run_role(tools, "hypothesize", states, per_iteration=2)
    issue = {"id": "k-1", "service": "payments", "category": "known_issue", "title": "t", "says": "Pool is 20."}
    past = {"investigation_id": "p-1", "ticket_id": "INC-1", "similarity_score": 0.8, "summary": "retry storm"}
    output = {**output, "knowledge": {"entries": [issue]}, "similar_incidents": {"used": [past]}}
    llm.anthropic(_hypotheses)
    agent = Assignment("hypothesize", "balanced", MODEL, loop)
    await run_llm_role(agent, tools.for_role("hypothesize"), states, state, output, per_iteration=2)
    (body,) = llm.bodies()
    text = json.dumps(body["messages"][0]["content"])
    assert "known_issues" in text
    assert "Pool is 20." in text
    assert "INC-1" in text


def _verification(*, gateway_status: str, culprit_status: str) -> Any:
    def reply(body: dict[str, Any]) -> Reply:
        context = context_of(body)
        culprit = candidate(context, "to_verify", CULPRIT)
        gateway = candidate(context, "to_verify", GATEWAY)
        assert culprit["hypothesis"]["falsified_by"] == ["the diff keeps two attempts with exponential backoff"]
        assert any("MaxAttempts" in line or "max_attempts" in line for line in culprit["added_lines"])
        deploys = context["changes"]["deploy_call_ids"]

        def checklist(diff: str, outcome: str) -> list[dict[str, Any]]:
            items = [
                {"check": name, "outcome": outcome, "detail": f"{name} as the diff shows", "call_ids": [diff]}
                for name in ("signature", "mechanism", "substance", "location", "timing")
            ]
            return [
                *items,
                {"check": "still_deployed", "outcome": "pass", "detail": "no rollback", "call_ids": deploys},
            ]

        answer = {
            "hypotheses": [
                {
                    "kind": "commit",
                    "ref": GATEWAY[:10],
                    "checklist": checklist(gateway["diff_call_id"], "pass" if gateway_status == "verified" else "fail"),
                    "status": gateway_status,
                    "reason": "scripted",
                },
                {
                    "kind": "commit",
                    "ref": CULPRIT[:10],
                    "checklist": [
                        *checklist(culprit["diff_call_id"], "pass" if culprit_status == "verified" else "fail"),
                        {"check": "trace_gap", "outcome": "pass", "detail": "an invented reading", "call_ids": []},
                        {"check": "lock_waits", "outcome": "unknown", "detail": "not measured", "call_ids": []},
                    ],
                    "status": culprit_status,
                    "reason": "scripted",
                },
            ],
            "converged": True,
            "again": False,
            "summary": "scripted",
        }
        return message(tool_use("submit", answer), input_tokens=6000, output_tokens=900)

    return reply


@pytest.mark.parametrize(
    ("gateway_status", "culprit_status", "verdict", "culprit"),
    [("rejected", "verified", "ROOT_CAUSE", CULPRIT), ("verified", "rejected", "ROOT_CAUSE", GATEWAY)],
)
async def test_the_verification_checklist_becomes_the_checks_and_a_rule_conclusion_follows_it(
    llm: FakeLLM,
    loop: AgentLoop,
    gathered: tuple[ScenarioTools, list[dict[str, Any]]],
    gateway_status: str,
    culprit_status: str,
    verdict: str,
    culprit: str,
) -> None:
    tools, states = gathered
    hypothesized, _ = await _hypothesized(llm, loop, tools, states)
    state, output = await run_role(tools, "verify", [hypothesized], per_iteration=2)
    llm.anthropic(_verification(gateway_status=gateway_status, culprit_status=culprit_status))
    agent = Assignment("verify", "balanced", MODEL, loop)

    step = await run_llm_role(agent, tools.for_role("verify"), [hypothesized], state, output, per_iteration=2)

    assert (step.output["converged"], step.output["again"]) == (True, False)
    # The pass citing nothing was removed and counted; the unknown without citations stays.
    assert step.output["rejected_claims"] == 1
    case = load_case(step.state)
    checked = next(c for c in case.candidates if c.ref == CULPRIT)
    names = [k.name for k in checked.checks]
    assert "trace_gap" not in names
    assert ("lock_waits", False) in [(k.name, k.passed) for k in checked.checks]
    assert next(k for k in checked.checks if k.name == "lock_waits").detail == "unknown: not measured"
    assert step.output["ranking"][0]["ref"] == culprit
    assert {v["ref"]: v["status"] for v in step.output["verification"]} == {
        GATEWAY: gateway_status,
        CULPRIT: culprit_status,
    }
    # The role's tools: diffs and the telemetry, plus submit.
    body = llm.bodies()[-1]
    assert body["system"][0]["text"].startswith("You are the verification agent")
    assert {t["name"] for t in body["tools"]} == {
        "get_commit",
        "list_deploys",
        "list_commits",
        "search_logs",
        "query_metrics",
        "search_traces",
        "submit",
    }
    # A rule-run RECOMMEND on this state concludes what the verification supports.
    _, findings = await run_role(tools, "recommend", [step.state])
    assert (findings["verdict"], findings["culprit"]["ref"]) == (verdict, culprit)
    assert any("claim(s) of the model's verify step" in p for p in findings["problems"])


async def test_a_provider_outage_fails_the_step_instead_of_falling_back_to_rules(
    llm: FakeLLM, loop: AgentLoop, gathered: tuple[ScenarioTools, list[dict[str, Any]]]
) -> None:
    tools, states = gathered
    state, output = await run_role(tools, "hypothesize", states)
    llm.anthropic(overloaded(), overloaded(), overloaded())  # the first try and the SDK's two retries

    with pytest.raises(ProviderUnavailable, match="529"):
        await run_llm_role(
            Assignment("hypothesize", "balanced", MODEL, loop),
            tools.for_role("hypothesize"),
            states,
            state,
            output,
            per_iteration=4,
        )
    assert llm.unanswered() == 0


async def test_with_nothing_proposed_verify_asks_no_model(llm: FakeLLM, loop: AgentLoop) -> None:
    tools = ScenarioTools(load_incident(SCENARIO))
    state, output = await run_role(tools, "verify", [dump_case(Case(iteration=1))])

    step = await run_llm_role(
        Assignment("verify", "balanced", MODEL, loop), tools.for_role("verify"), [], state, output, per_iteration=4
    )

    assert step.result is None
    assert step.output["llm_skipped"] == "nothing was proposed for verification"
    assert llm.bodies() == []


def _candidate(ref: str, score: float) -> Candidate:
    return Candidate(
        kind="commit",
        ref=ref,
        service="payments",
        at=parse_time("2026-03-17T09:38:20Z"),
        title=ref,
        checks=[Check("timing", True, "before the onset", ["call-1"]), Check("signature", False, "nothing", [])],
        score=score,
        proposed_in=1,
    )


def test_a_candidate_verified_again_starts_from_the_rule_checks_not_from_the_earlier_model() -> None:
    case = Case(iteration=2, candidates=[_candidate("a" * 40, 4.0), _candidate("b" * 40, 5.0)])
    earlier = {
        "status": "verified",
        "checklist": [{"check": "signature", "outcome": "pass", "detail": "named", "call_ids": ["call-2"]}],
    }
    notes = {"verification": {f"commit:{'a' * 40}": earlier}}

    baseline = verify.restore(case, notes)

    first = case.candidates[0]
    assert (first.ref, first.score) == ("a" * 40, 14.0)
    assert [(k.name, k.passed) for k in first.checks] == [("signature", True), ("timing", True)]

    again = Verification.model_validate(
        {
            "hypotheses": [
                {
                    "kind": "commit",
                    "ref": "a" * 12,
                    "checklist": [{"check": "timing", "outcome": "fail", "detail": "days", "call_ids": ["call-1"]}],
                    "status": "rejected",
                    "reason": "too early",
                }
            ],
            "converged": False,
            "again": False,
            "summary": "no",
        }
    )
    verify.apply(case, review_verification(again, {"call-1", "call-2"}), baseline)

    rejected = next(c for c in case.candidates if c.ref == "a" * 40)
    assert rejected.score == -6.0  # the rule score 4 moved once, by the new status
    assert [(k.name, k.passed) for k in rejected.checks] == [("timing", False), ("signature", False)]
    assert case.candidates[0].ref == "b" * 40


def test_each_mode_gives_the_llm_its_roles_on_its_tier_within_each_roles_limits() -> None:
    base = AgentLoop(provider=None, settings=LoopSettings(max_turns=12, max_tokens=4096))  # type: ignore[arg-type]
    settings = load_settings(WorkerSettings, {"REDIS_URL": "r", "S3_BUCKET": "b", "REGISTRY_ADDR": "a"})
    setup = LLMSetup(
        base,
        {"fast": "cheap-model", "balanced": "mid-model", "deep": "big-model"},
        mode_roles=settings.llm_mode_roles,
        limits=settings.llm_role_limits,
    )

    plan = {
        mode: {
            role: (a.model, a.loop.settings.max_turns, a.loop.settings.max_tokens)
            for role in ("triage", "gather.logs", "gather.context", "hypothesize", "verify", "recommend")
            if (a := setup.assignment(mode, role)) is not None
        }
        for mode in ("fast", "balanced", "deep", "")
    }

    assert plan["fast"] == {"recommend": ("cheap-model", 12, 4096)}
    # Balanced reads the ticket and chat on the cheap tier: extraction, not reasoning.
    assert plan["balanced"] == {
        "gather.context": ("cheap-model", 12, 4096),
        "hypothesize": ("mid-model", 8, 8192),
        "verify": ("mid-model", 16, 8192),
        "recommend": ("mid-model", 12, 4096),
    }
    # Deep mode also triages with the model (within the default limits); of GATHER, only the
    # context part is the model's: logs, metrics, traces and changes stay with the rules.
    assert {role: model for role, (model, _, _) in plan["deep"].items()} == dict.fromkeys(
        ("triage", "gather.context", "hypothesize", "verify", "recommend"), "big-model"
    )
    assert plan["deep"]["triage"] == ("big-model", 12, 4096)
    assert plan[""] == plan["balanced"]  # a task without a mode runs as balanced


def test_the_mode_table_and_role_limits_are_read_from_json_and_checked() -> None:
    required = {"REDIS_URL": "r", "S3_BUCKET": "b", "REGISTRY_ADDR": "a"}
    settings = load_settings(
        WorkerSettings,
        {
            **required,
            "LLM_MODE_ROLES": '{"deep": {"hypothesize": "balanced", "verify": "deep"}}',
            "LLM_ROLE_LIMITS": '{"recommend": {"max_turns": 6}}',
        },
    )
    # Modes not given keep their defaults.
    assert settings.llm_mode_roles["fast"] == {"recommend": "fast"}
    assert settings.llm_mode_roles["deep"] == {"hypothesize": "balanced", "verify": "deep"}
    assert settings.llm_role_limits == {"recommend": {"max_turns": 6}}
    for bad, named in (
        ('{"turbo": {}}', "unknown mode 'turbo'"),
        ('{"fast": {"gather.logs": "fast"}}', "cannot run role 'gather.logs'"),
        ('{"fast": {"recommend": "huge"}}', "unknown tier 'huge'"),
        ("[1]", "expected a JSON object"),
        ("{", "not JSON"),
    ):
        with pytest.raises(SettingsError, match=f"LLM_MODE_ROLES.*{named}"):
            load_settings(WorkerSettings, {**required, "LLM_MODE_ROLES": bad})
    with pytest.raises(SettingsError, match="LLM_ROLE_LIMITS.*max_turns must be a whole number from 1 to 100"):
        load_settings(WorkerSettings, {**required, "LLM_ROLE_LIMITS": '{"verify": {"max_turns": 0}}'})


# --- TRIAGE ---------------------------------------------------------------------------------

PAYMENTS_ONSET = "2026-03-17T09:49:00Z"


def _triage_reads_payments(body: dict[str, Any]) -> Reply:
    context = context_of(body)
    assert context["alert"]["service"] == "api-gateway"
    assert (context["onset"], context["onset_call_ids"]) == ("2026-03-17T09:50:00Z", ["call-2"])
    assert "api-gateway error_ratio" in context["alert_metric_series"]
    return message(tool_use("query_metrics", {"metric": "error_ratio", "service": "payments", "step_seconds": 60}))


def _triage_answer(*, first: dict[str, Any], onset: dict[str, Any]) -> Any:
    def reply(body: dict[str, Any]) -> Reply:
        answer = {
            "symptom": "POST /v1/checkout returns 503/504 at api-gateway; customers cannot pay.",
            "symptom_evidence": [
                {"claim": "api-gateway's 5xx ratio reached 0.101 against 0.05", "call_ids": ["call-1", "call-2"]},
                {"claim": "payments support tickets doubled", "call_ids": ["call-that-never-was"]},
            ],
            "severity": "critical",
            "affected_services": ["payments", "ledger", "checkout", "api-gateway"],
            **first,
            **onset,
            "gather_services": ["payments", "ledger"],
        }
        return message(tool_use("submit", answer), input_tokens=2500, output_tokens=300)

    return reply


async def _triaged(llm: FakeLLM, loop: AgentLoop, *replies: Any) -> tuple[ScenarioTools, Any]:
    tools = ScenarioTools(load_incident(SCENARIO))
    state, output = await run_role(tools, "triage", [])
    llm.anthropic(*replies)
    agent = Assignment("triage", "deep", MODEL, loop)
    return tools, await run_llm_role(agent, tools.for_role("triage"), [], state, output, per_iteration=2)


async def test_a_cited_triage_moves_the_onset_and_names_the_first_failing_service_for_the_next_steps(
    llm: FakeLLM, loop: AgentLoop
) -> None:
    cited = {
        "first_failing_service": "payments",
        "first_failing_evidence": [{"claim": "payments error_ratio rose from 09:49", "call_ids": ["call-3"]}],
    }
    onset = {
        "onset": PAYMENTS_ONSET,
        "onset_evidence": [{"claim": "payments error_ratio left its baseline at 09:49", "call_ids": ["call-3"]}],
    }
    tools, step = await _triaged(llm, loop, _triage_reads_payments, _triage_answer(first=cited, onset=onset))

    # The model's own metrics query was a real call of the triage role's tools.
    assert tools.calls[2][:2] == ("call-3", "query_metrics")
    case = load_case(step.state)
    assert case.onset == parse_time(PAYMENTS_ONSET)
    assert (case.first_failing, case.blast_radius) == ("payments", ["ledger", "checkout", "api-gateway"])
    claims = {e.claim: e.call_ids for e in case.evidence}
    assert claims["payments error_ratio left its baseline at 09:49"] == ["call-3"]
    assert "payments support tickets doubled" not in claims
    # The symptom claim citing an invented call was removed and counted.
    assert step.output["rejected_claims"] == 1
    assert any("1 claim(s) of the model's triage step" in p for p in case.problems)
    assert step.output["onset"] == PAYMENTS_ONSET
    assert step.output["rule_onset"] == "2026-03-17T09:50:00Z"
    assert (step.output["onset_changed"], step.output["first_failing_changed"]) == (True, True)
    assert (step.output["severity"], step.output["gather_services"]) == ("critical", ["payments", "ledger"])
    assert (step.output["reasoner"], step.output["tier"], step.output["prompt_version"]) == ("llm", "deep", 3)
    assert step.output["alert"]["service"] == "api-gateway"  # the rule triage's summary stays
    notes = step.state[NOTES_KEY]["triage"]
    assert (notes["first_failing_service"], notes["severity"]) == ("payments", "critical")

    # GATHER reads the same state: its window now starts six hours before the model's onset.
    state, _ = await run_role(tools, "gather.traces", [step.state])
    (_, tool, arguments) = tools.calls[-1]
    assert (tool, arguments["start"]) == ("search_traces", "2026-03-17T03:49:00Z")
    # The triage notes ride along to the hypothesis agent, whichever reasoner gathered.
    gathered = load_case(state)
    assert gathered.onset == parse_time(PAYMENTS_ONSET)
    text = hypothesize.context(gathered, {"triage": notes}, 2)
    assert json.loads(text.split("\n\n", 1)[1])["triage_agent"]["first_failing_service"] == "payments"

    # The requests: the triage prompt, the role's tools plus submit, the cached prefix.
    first, second = llm.bodies()
    assert first["model"] == MODEL
    assert first["system"][0]["text"].startswith("You are the triage agent")
    assert {t["name"] for t in first["tools"]} == {"get_alert", "query_metrics", "submit"}
    assert first["tools"][-1]["cache_control"] == {"type": "ephemeral"}
    assert first["messages"][0]["content"][0]["cache_control"] == {"type": "ephemeral"}
    schema = first["tools"][-1]["input_schema"]["properties"]
    assert {"symptom", "first_failing_service", "onset", "gather_services", "severity"} <= set(schema)
    assert "call_id: call-3" in json.dumps(second["messages"])


async def test_an_uncited_or_implausible_triage_change_is_ignored_and_the_rule_triage_stands(
    llm: FakeLLM, loop: AgentLoop
) -> None:
    invented = {
        "first_failing_service": "ledger",
        "first_failing_evidence": [{"claim": "ledger failed first", "call_ids": ["call-3", "call-77"]}],
    }
    # Cited with a real call, but after the alert fired: GATHER's window cannot be anchored there.
    late = {"onset": "2026-03-17T10:30:00+00:00", "onset_evidence": [{"claim": "later", "call_ids": ["call-2"]}]}
    tools, step = await _triaged(llm, loop, _triage_reads_payments, _triage_answer(first=invented, onset=late))

    case = load_case(step.state)
    assert case.onset == parse_time("2026-03-17T09:50:00Z")
    assert (case.first_failing, case.blast_radius) == ("", [])
    # call-77 was never made: that evidence goes, and the first failing service with it.
    assert step.output["rejected_claims"] == 2
    assert (step.output["onset_changed"], step.output["first_failing_changed"]) == (False, False)
    assert any("ignored for want of cited evidence: first failing service ledger" in p for p in case.problems)
    assert any("onset 2026-03-17T10:30:00Z: not within" in p for p in case.problems)
    assert "ledger failed first" not in {e.claim for e in case.evidence}
    # GATHER searches the rule reasoner's window.
    await run_role(tools, "gather.traces", [step.state])
    assert tools.calls[-1][2]["start"] == "2026-03-17T03:50:00Z"


# --- GATHER's context part -----------------------------------------------------------------


def _context_reads_chat(body: dict[str, Any]) -> Reply:
    context = context_of(body)
    assert [t["key"] for t in context["tickets"]] == ["INC-4812"]
    assert context["ticket_call_ids"] == ["call-3"]
    assert context["chat_call_ids"] == ["call-4"]
    assert any("roll back api-gateway" in m["text"] for m in context["messages"])
    # The chat search named only the alerted service; the model looks for what people said of payments.
    return message(tool_use("search_messages", {"query": "payments"}))


def _context_answer(body: dict[str, Any]) -> Reply:
    answer = {
        "summary": "The incident commander blames the api-gateway deploy; the DBA sees idle-in-transaction"
        " sessions on payments-db and advises against failover.",
        "facts": [
            {
                "kind": "change",
                "claim": "deploy-bot in #deploys: api-gateway v2026.03.17-0946 (b6a52c92) rolled out at 09:47",
                "at": "2026-03-17T09:47:40Z",
                "services": ["api-gateway"],
                "refs": ["b6a52c92"],
                "call_ids": ["call-4"],
            },
            {
                "kind": "report",
                "claim": "olga.dba in #incidents: most payments sessions are idle in transaction for seconds",
                "at": "2026-03-17T10:07:20Z",
                "services": ["payments", "payments-db"],
                "call_ids": ["call-5"],
            },
            {
                "kind": "action",
                "claim": "someone restarted ledger at 09:55",
                "services": ["ledger"],
                "call_ids": ["call-99"],
            },
        ],
        "suspects": ["b6a52c92", "checkout_express_pay"],
    }
    return message(tool_use("submit", answer), input_tokens=3000, output_tokens=400)


async def _context_state(tools: ScenarioTools, ticket_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
    triage, _ = await run_role(tools, "triage", [])
    return await run_role(tools, "gather.context", [triage], sources=ContextSources(ticket_id=ticket_id))


async def _context_agent(loop: AgentLoop, tools: ScenarioTools, state: dict[str, Any], output: dict[str, Any]) -> Any:
    agent = Assignment("gather.context", "fast", "cheap-model", loop)
    return await run_llm_role(agent, tools.for_role("gather.context"), [], state, output, per_iteration=4)


async def test_the_context_agent_records_what_people_said_as_cited_leads_for_the_hypothesis_agent(
    llm: FakeLLM, loop: AgentLoop
) -> None:
    tools = ScenarioTools(load_incident(SCENARIO))
    state, output = await _context_state(tools, "INC-4812")
    llm.anthropic(_context_reads_chat, _context_answer)

    step = await _context_agent(loop, tools, state, output)

    # The model's own search was a real call of the role's tools.
    assert tools.calls[-1][:2] == ("call-5", "search_messages")
    notes = step.state[NOTES_KEY]["context"]
    assert [f["kind"] for f in notes["facts"]] == ["change", "report"]
    assert notes["facts"][0]["refs"] == ["b6a52c92"]
    assert notes["suspects"] == ["b6a52c92", "checkout_express_pay"]
    # The fact citing a call that never happened was removed and counted.
    assert step.output["rejected_claims"] == 1
    assert "ledger" not in json.dumps(notes["facts"])
    assert (step.output["facts"], step.output["tier"], step.output["prompt_version"]) == (2, "fast", 2)
    assert step.output["tickets"] == ["INC-4812"]  # the rule part's summary stays
    # What people said is a lead, not evidence: neither the evidence nor the candidates change.
    case = load_case(step.state)
    assert not any("idle in transaction" in e.claim for e in case.evidence)

    # The requests: the context prompt, the role's tools plus submit, the cheap model.
    first, second = llm.bodies()
    assert first["model"] == "cheap-model"
    assert first["system"][0]["text"].startswith("You are the context agent")
    assert {t["name"] for t in first["tools"]} == {"get_ticket", "search_messages", "submit"}
    assert {"facts", "suspects", "summary"} <= set(first["tools"][-1]["input_schema"]["properties"])
    assert "call_id: call-5" in json.dumps(second["messages"])

    # The hypothesis agent reads the context agent's facts, whichever reasoner gathered the rest.
    gathered = [(await run_role(tools, f"gather.{part}", [state]))[0] for part in ("logs", "metrics", "changes")]
    hypothesis_state, _ = await run_role(tools, "hypothesize", [*gathered, step.state])
    hypothesis_case = load_case(hypothesis_state)
    text = hypothesize.context(hypothesis_case, notes_of([*gathered, step.state]), 2)
    reported = json.loads(text.split("\n\n", 1)[1])["reported_context"]
    assert reported["suspects"] == ["b6a52c92", "checkout_express_pay"]


async def test_without_a_ticket_or_chat_message_the_context_agent_asks_no_model(
    llm: FakeLLM, loop: AgentLoop, tmp_path: Path
) -> None:
    quiet = tmp_path / "quiet"
    shutil.copytree(SCENARIO, quiet)
    (quiet / "data" / "context" / "messages.json").write_text("[]")
    tools = ScenarioTools(load_incident(quiet))
    state, output = await _context_state(tools, "pagerduty:PXYZ123")

    step = await _context_agent(loop, tools, state, output)

    assert step.result is None
    assert step.output["llm_skipped"] == "no ticket or chat message was found"
    assert llm.bodies() == []
    # Without the agent, the hypothesis agent gets nothing reported (there is nothing).
    assert gather_context.reported(load_case(step.state), {}) is None


def test_without_the_context_agent_the_hypothesis_agent_reads_the_ticket_and_chat_as_found() -> None:
    case = Case(
        tickets=[{"key": "INC-1", "summary": "checkout down", "description": "x" * 5000}],
        messages=[{"user": "kim", "text": "cart pool change went out"}],
        calls={"ticket": ["call-7"], "chat": ["call-8"]},
    )
    reported = gather_context.reported(case, {})
    assert reported is not None
    assert reported["ticket_call_ids"] == ["call-7"]
    assert reported["chat_call_ids"] == ["call-8"]
    assert reported["tickets"][0]["description"].endswith("[cut]")
    assert len(reported["tickets"][0]["description"]) < 2100


async def test_a_provider_outage_leaves_the_ticket_and_chat_as_found_instead_of_failing_the_step(
    llm: FakeLLM, loop: AgentLoop
) -> None:
    tools = ScenarioTools(load_incident(SCENARIO))
    state, output = await _context_state(tools, "INC-4812")
    llm.anthropic(overloaded(), overloaded(), overloaded())  # the first try and the SDK's two retries

    step = await _context_agent(loop, tools, state, output)

    assert step.result is None
    assert "529" in step.output["llm_unavailable"]
    case = load_case(step.state)
    assert any(p.startswith("gather.context: LLM unavailable") for p in case.problems)
    # The hypothesis agent still reads what the rules found.
    reported = gather_context.reported(case, {})
    assert reported is not None
    assert [t["key"] for t in reported["tickets"]] == ["INC-4812"]
    assert llm.unanswered() == 0

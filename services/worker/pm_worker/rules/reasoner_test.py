"""The rule reasoner's HYPOTHESIZE ⇄ VERIFY loop on the project's scenario, tools answered in-process.

The tools are the sandbox's own queries over the scenario (what the MCP server would answer),
called directly, so these tests isolate the reasoning; the same loop over the real registry and
orchestrator is tested in tests/integration/engine_test.py.
"""

from __future__ import annotations

import itertools
import json
import shutil
from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from pm_errors import Unavailable
from pm_sandbox.data import Incident, QueryError, load_incident
from pm_sandbox.server import TOOL_CAPABILITIES
from pm_worker.rules.reasoner import Case, ContextSources, RuleReasoner
from pm_worker.rules.steps import dump_case, load_case, run_role
from pm_worker.rules.toolbox import Answer

SCENARIO = Path(__file__).resolve().parents[3] / "sandbox" / "scenarios" / "payments-retry-storm"
TRUTH = json.loads((SCENARIO / "ground_truth.json").read_text())
TOOL_BY_CAPABILITY = {capability: tool for tool, capability in TOOL_CAPABILITIES.items()}


class LocalTools:
    """Calls the sandbox's query methods directly; records (call id, tool, arguments)."""

    def __init__(self, incident: Incident) -> None:
        self._incident = incident
        self._ids = itertools.count(1)
        self.calls: list[tuple[str, str, dict[str, Any]]] = []

    async def call(self, capability: str, arguments: Mapping[str, Any]) -> Answer:
        tool = TOOL_BY_CAPABILITY[capability]
        call_id = f"call-{next(self._ids)}"
        self.calls.append((call_id, tool, dict(arguments)))
        given = {k: v for k, v in arguments.items() if v is not None}
        try:
            return Answer(call_id, capability, tool, getattr(self._incident, tool)(**given))
        except QueryError as exc:
            return Answer(call_id, capability, tool, error=str(exc))

    def diffs(self) -> list[str]:
        return [args["sha"] for _, tool, args in self.calls if tool == "get_commit"]


def _without_culprit(tmp_path: Path) -> Path:
    data = tmp_path / "no-culprit"
    shutil.copytree(SCENARIO, data)
    for name in ("commits.json", "deploys.json"):
        path = data / "data" / "context" / name
        items = json.loads(path.read_text())
        path.write_text(
            json.dumps([i for i in items if TRUTH["root_cause_commit"] not in (i.get("sha"), i.get("commit_sha"))])
        )
    return data


async def _hypothesized(tools: LocalTools, per_iteration: int) -> tuple[RuleReasoner, Case]:
    reasoner = RuleReasoner(tools, per_iteration=per_iteration)
    case = Case()
    await reasoner.triage(case)
    await reasoner.gather(case)
    await reasoner.hypothesize(case)
    return reasoner, case


async def test_the_first_iteration_verifies_the_most_plausible_candidates_only() -> None:
    tools = LocalTools(load_incident(SCENARIO))
    reasoner, case = await _hypothesized(tools, per_iteration=1)
    assert case.iteration == 1
    assert len(case.candidates) > 1
    proposed = [c.ref for c in case.candidates if c.proposed_in == 1]
    # Ranked from metadata alone (files, message, service, time): the culprit comes first.
    assert proposed == [TRUTH["root_cause_commit"]]
    await reasoner.verify(case)
    assert tools.diffs() == proposed  # one diff read, not one per candidate
    assert case.converged
    findings = reasoner.conclude(case)
    assert findings["verdict"] == "ROOT_CAUSE"
    assert findings["unverified_candidates"] == len(case.candidates) - 1
    untested = [h for h in findings["hypotheses"] if h["status"] == "untested"]
    assert len(untested) == len(case.candidates) - 1
    assert all(h["iteration"] is None for h in untested)


async def test_iterations_continue_until_every_candidate_is_verified_when_none_settles_it(tmp_path: Path) -> None:
    tools = LocalTools(load_incident(_without_culprit(tmp_path)))
    reasoner, case = await _hypothesized(tools, per_iteration=1)
    total = len(case.candidates)
    assert total >= 2
    await reasoner.verify(case)
    while not case.converged and case.unproposed:
        assert reasoner.propose(case)
        await reasoner.verify(case)
    assert case.iteration == total
    assert reasoner.propose(case) == []  # nothing left: no further iteration
    assert sorted(tools.diffs()) == sorted(c.ref for c in case.candidates if c.kind == "commit")
    # Each candidate was verified once, in its own iteration; all are scored against each other.
    assert sorted(c.proposed_in for c in case.candidates) == list(range(1, total + 1))
    assert all(c.verified for c in case.candidates)
    scores = [c.score for c in case.candidates]
    assert scores == sorted(scores, reverse=True)


async def test_verifying_in_batches_ends_where_verifying_everything_at_once_does(tmp_path: Path) -> None:
    data = _without_culprit(tmp_path)
    at_once = await RuleReasoner(LocalTools(load_incident(data)), per_iteration=50).investigate(max_iterations=1)
    batched = await RuleReasoner(LocalTools(load_incident(data)), per_iteration=1).investigate(max_iterations=10)
    assert batched["iterations"] > at_once["iterations"] == 1
    assert batched["unverified_candidates"] == at_once["unverified_candidates"] == 0
    for key in ("verdict", "confidence", "root_cause_commit", "first_failing_service", "blast_radius"):
        assert batched[key] == at_once[key], key
    assert [(h["ref"], h["score"]) for h in batched["hypotheses"]] == [
        (h["ref"], h["score"]) for h in at_once["hypotheses"]
    ]


async def test_a_bounded_loop_reports_the_candidates_it_did_not_verify(tmp_path: Path) -> None:
    findings = await RuleReasoner(LocalTools(load_incident(_without_culprit(tmp_path))), per_iteration=1).investigate(
        max_iterations=1
    )
    assert findings["iterations"] == 1
    assert findings["verdict"] == "INCONCLUSIVE"
    assert findings["unverified_candidates"] >= 1
    assert "were not verified within 1 hypothesis iteration(s)" in findings["summary"]


async def test_the_state_between_iterations_keeps_what_verification_learned(tmp_path: Path) -> None:
    tools = LocalTools(load_incident(_without_culprit(tmp_path)))
    reasoner, case = await _hypothesized(tools, per_iteration=1)
    await reasoner.verify(case)
    restored = load_case(json.loads(json.dumps(dump_case(case))))
    assert restored.iteration == case.iteration == 1
    assert [(c.ref, c.proposed_in, c.score) for c in restored.candidates] == [
        (c.ref, c.proposed_in, c.score) for c in case.candidates
    ]
    assert [c.facts for c in restored.candidates] == [c.facts for c in case.candidates]
    # The next iteration, as a separate step on the stored state: no diff is read twice.
    state, summary = await run_role(tools, "hypothesize", [dump_case(case)], per_iteration=1)
    assert summary["iteration"] == 2
    assert len(summary["proposed"]) == 1
    state, summary = await run_role(tools, "verify", [state], per_iteration=1)
    assert summary["iteration"] == 2
    assert len(tools.diffs()) == len(set(tools.diffs())) == 2
    assert summary["again"] == (not summary["converged"] and summary["unverified"] > 0)


async def test_recommend_on_an_earlier_state_concludes_what_it_can() -> None:
    # A partial investigation: RECOMMEND gets the gather states (VERIFY never succeeded).
    tools = LocalTools(load_incident(SCENARIO))
    states = []
    triage, _ = await run_role(tools, "triage", [])
    for part in ("logs", "metrics", "traces", "changes"):
        state, _ = await run_role(tools, f"gather.{part}", [triage])
        states.append(state)
    _, findings = await run_role(tools, "recommend", states)
    assert findings["verdict"] == "INCONCLUSIVE"
    assert findings["first_failing_service"] == TRUTH["first_failing_service"]
    assert findings["hypotheses"]
    assert {h["status"] for h in findings["hypotheses"]} == {"untested"}
    assert not tools.diffs()


def test_a_reasoner_needs_at_least_one_candidate_per_iteration() -> None:
    with pytest.raises(ValueError, match="per_iteration"):
        RuleReasoner(LocalTools(load_incident(SCENARIO)), per_iteration=0)


# --- GATHER's context part --------------------------------------------------------------------


async def _context(tools: Any, sources: ContextSources) -> tuple[Case, dict[str, Any]]:
    triage, _ = await run_role(tools, "triage", [])
    state, output = await run_role(tools, "gather.context", [triage], sources=sources)
    return load_case(state), output


async def test_the_context_part_reads_the_ticket_and_the_chat_naming_the_alerted_service_in_the_window() -> None:
    tools = LocalTools(load_incident(SCENARIO))
    case, output = await _context(tools, ContextSources(ticket_id="INC-4812"))

    (ticket_call, _, ticket_args), (chat_call, _, chat_args) = tools.calls[-2:]
    assert (tools.calls[-2][1], ticket_args) == ("get_ticket", {"issue_key": "INC-4812"})
    assert (tools.calls[-1][1], chat_args) == ("search_messages", {"query": "api-gateway"})
    assert [t["key"] for t in case.tickets] == ["INC-4812"]
    # The gateway's deploy announcement, the firing alert and the rollback call name the service;
    # nothing outside the window (six hours before the onset to 15 minutes after the alert).
    texts = [m["text"] for m in case.messages]
    assert any("roll back api-gateway" in t for t in texts)
    assert any(t.startswith("api-gateway v2026.03.17-0946") for t in texts)
    assert all("api-gateway" in t.lower() for t in texts)
    assert (case.calls["ticket"], case.calls["chat"]) == ([ticket_call], [chat_call])
    assert case.tickets[0]["summary"].endswith("customers cannot complete checkout")
    # What people wrote is a lead, not evidence: it is cited by its calls, never an evidence claim.
    assert not [e for e in case.evidence if {ticket_call, chat_call} & set(e.call_ids)]
    assert (output["tickets"], output["messages"]) == (["INC-4812"], len(texts))
    # The state carries both to the next steps.
    again = load_case(dump_case(case))
    assert (again.tickets, again.messages) == (case.tickets, case.messages)


async def test_the_context_part_looks_up_issue_keys_only_and_names_what_it_could_not_read(tmp_path: Path) -> None:
    tools = LocalTools(load_incident(SCENARIO))
    # A PagerDuty incident id is not an issue key: no ticket lookup.
    case, _ = await _context(tools, ContextSources(ticket_id="pagerduty:PXYZ123"))
    assert [tool for _, tool, _ in tools.calls].count("get_ticket") == 0
    assert case.tickets == []
    assert case.messages

    # A key the tracker does not know is a gap the report names, not a failed step.
    tools = LocalTools(load_incident(SCENARIO))
    case, _ = await _context(tools, ContextSources(ticket_id="SHOP-1"))
    assert case.tickets == []
    assert any("no ticket 'SHOP-1'" in p for p in case.problems)

    # A search within the asking channel needs a channel: without one, chat is not searched.
    tools = LocalTools(load_incident(SCENARIO))
    sources = ContextSources(chat_arguments={"query": "{service}", "channel": "{channel}"})
    case, _ = await _context(tools, sources)
    assert "search_messages" not in [tool for _, tool, _ in tools.calls]
    tools = LocalTools(load_incident(SCENARIO))
    case, _ = await _context(tools, replace(sources, channel="deploys"))
    assert tools.calls[-1][2] == {"query": "api-gateway", "channel": "deploys"}
    assert case.messages
    assert all(m["channel"] == "deploys" for m in case.messages)


async def test_without_a_server_for_tickets_or_chat_the_context_part_records_the_gap() -> None:
    class NoContextServers(LocalTools):
        async def call(self, capability: str, arguments: Mapping[str, Any]) -> Answer:
            if capability in ("tickets.get", "comms.search"):
                raise Unavailable(f"no connected MCP server offers {capability} yet")
            return await super().call(capability, arguments)

    case, output = await _context(NoContextServers(load_incident(SCENARIO)), ContextSources(ticket_id="INC-4812"))
    assert (case.tickets, case.messages) == ([], [])
    assert any(p.startswith("context: no connected MCP server offers tickets.get") for p in case.problems)
    assert any("comms.search" in p and p.endswith("chat not read") for p in case.problems)
    assert output["part"] == "context"


# --- the triage agent's first failing service in the rule HYPOTHESIZE ---------------------------

FIRED = datetime(2026, 3, 17, 10, 0, tzinfo=UTC)


def _departing(at_minute: int) -> list[tuple[datetime, float]]:
    """An error ratio at 1 % that jumps to 50 % at `at_minute` past 09:00 and stays there."""
    start = FIRED - timedelta(hours=1)
    return [(start + timedelta(minutes=m), 0.5 if m >= at_minute else 0.01) for m in range(0, 61)]


def _tied_case(lead: str) -> Case:
    """`alpha` and `bravo` depart in the same minute; the alert is on `gateway`, which does not."""
    return Case(
        alert={"service": "gateway", "metric": "error_ratio"},
        fired_at=FIRED,
        onset=FIRED - timedelta(minutes=12),
        series={("alpha", "error_ratio"): _departing(45), ("bravo", "error_ratio"): _departing(45)},
        triage_first_failing=lead,
    )


@pytest.mark.parametrize(("lead", "first"), [("", "alpha"), ("bravo", "bravo"), ("alpha", "alpha")])
async def test_within_a_tie_the_triage_agents_cited_pick_is_the_first_failing_service(lead: str, first: str) -> None:
    case = _tied_case(lead)
    await RuleReasoner(LocalTools(load_incident(SCENARIO))).hypothesize(case)
    assert case.first_failing == first
    assert case.blast_radius == sorted({"alpha", "bravo"} - {first})
    assert not [p for p in case.problems if "triage agent" in p]


async def test_the_gathered_facts_overturn_a_triage_pick_that_departed_later_and_say_so() -> None:
    case = _tied_case("charlie")
    case.series[("charlie", "error_ratio")] = _departing(52)  # seven minutes after the others
    await RuleReasoner(LocalTools(load_incident(SCENARIO))).hypothesize(case)
    assert case.first_failing == "alpha"
    (problem,) = (p for p in case.problems if "triage agent" in p)
    assert problem.startswith("hypothesize: the triage agent's first failing service charlie departed at")
    assert "the gathered facts overturn it" in problem
    # The pick survives the state between steps.
    assert load_case(dump_case(_tied_case("bravo"))).triage_first_failing == "bravo"


async def test_with_no_departure_at_all_the_triage_pick_stands_over_the_alerted_service() -> None:
    quiet = Case(
        alert={"service": "gateway"}, fired_at=FIRED, onset=FIRED - timedelta(minutes=5), triage_first_failing="bravo"
    )
    await RuleReasoner(LocalTools(load_incident(SCENARIO))).hypothesize(quiet)
    assert quiet.first_failing == "bravo"
    quiet = Case(alert={"service": "gateway"}, fired_at=FIRED, onset=FIRED - timedelta(minutes=5))
    await RuleReasoner(LocalTools(load_incident(SCENARIO))).hypothesize(quiet)
    assert quiet.first_failing == "gateway"


async def test_the_context_part_also_searches_chat_for_the_triage_agents_first_failing_service() -> None:
    tools = LocalTools(load_incident(SCENARIO))
    triage, _ = await run_role(tools, "triage", [])
    triage["triage_first_failing"] = "payments"
    state, _ = await run_role(tools, "gather.context", [triage], sources=ContextSources())
    case = load_case(state)

    searches = [args for _, tool, args in tools.calls if tool == "search_messages"]
    assert searches == [{"query": "api-gateway"}, {"query": "payments"}]
    assert len(case.calls["chat"]) == 2
    texts = [m["text"] for m in case.messages]
    assert any("payments is logging pg pool exhausted" in t for t in texts)
    assert len(texts) == len(set(texts))  # a message naming both services is kept once

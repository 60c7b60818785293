"""The LLM agents per role, behind the same step interface as the rule reasoner.

A step first runs the rule reasoner's role (`rules.steps.run_role`: cheap, deterministic, every
fact cited); when the investigation's mode gives the role to the LLM (`modes`), the role's agent
then reasons over that state and its answer becomes the step's state and output:

- triage (`triage.py`) submits `Triage`: the symptom, its severity, the affected services, a first
  failing service candidate and, when the evidence shows another, the onset (GATHER's window moves
  with it), each change cited; the services to gather for.
- gather.context (`gather_context.py`) submits `Context`: what the ticket and chat say, as
  attributed and cited facts, and the suspects people named: leads for the hypothesis agent,
  never evidence.
- hypothesize (`hypothesize.py`) submits `Hypotheses`: a ranked list, each with its mechanism,
  cited evidence and what would falsify it. It changes the failure order (when it shows another),
  the candidates, and which of them VERIFY reads next.
- verify (`verify.py`) submits `Verification`: a checklist per hypothesis, a status, `converged`
  and `again`. It changes the candidates' checks and ranking, the operational signals, and tells
  the engine whether another iteration could settle it.
- recommend (`conclude.py`) submits `Findings`, which the report renders.

Each agent has its own versioned system prompt (`prompts/<role>.md`), the registry tools its role
may call (the registry's role allow-lists) and its own model tier, turn and token limits. Every
claim must cite tool calls of this investigation (`citations.py`); what cites nothing real is
removed and counted (`rejected_claims` in the output, a line among the problems, which the
report lists under Gaps).

A provider failure (after the fallback) fails a TRIAGE, HYPOTHESIZE or VERIFY step like any other
dependency failure: the engine retries it, and then writes its partial report. RECOMMEND keeps its
recorded policy: the rule reasoner's conclusion stands, and the report says the LLM was
unavailable. GATHER's context part does the same: the ticket and chat stay as the rules found
them, and the report says no model read them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from pm_worker.llm import gather_context, hypothesize, triage, verify
from pm_worker.llm.case_view import NOTES_KEY, notes_of
from pm_worker.llm.citations import review_context, review_hypotheses, review_triage, review_verification
from pm_worker.llm.conclude import case_call_ids, conclude_with_llm
from pm_worker.llm.loop import AgentLoop, LoopResult, Step
from pm_worker.llm.modes import DEFAULT_MODE_ROLES, DEFAULT_ROLE_LIMITS
from pm_worker.llm.prompts import Prompt, load_prompt
from pm_worker.llm.protocol import ProviderUnavailable, RoleTools
from pm_worker.llm.schemas import Context, Hypotheses, Triage, Verification
from pm_worker.rules.reasoner import Case
from pm_worker.rules.steps import dump_case, load_case


@dataclass(frozen=True, slots=True)
class Assignment:
    """Who runs a role in a mode: the tier, its model id and a loop with the role's limits."""

    role: str
    tier: str
    model: str
    loop: AgentLoop


@dataclass(frozen=True, slots=True)
class LLMSetup:
    """The LLM reasoner of this worker: its loop, the model of each tier, which roles it runs in
    each mode (mode -> role -> tier) and the limits of each role."""

    loop: AgentLoop
    models: Mapping[str, str]  # tier (fast, balanced, deep) -> model id
    mode_roles: Mapping[str, Mapping[str, str]] = field(default_factory=lambda: DEFAULT_MODE_ROLES)
    limits: Mapping[str, Mapping[str, int]] = field(default_factory=lambda: DEFAULT_ROLE_LIMITS)

    def assignment(self, mode: str, role: str) -> Assignment | None:
        """The model and loop that run `role` in `mode` (an unknown mode counts as balanced); None
        when the mode leaves the role to the rule reasoner."""
        roles = self.mode_roles.get(mode)
        if roles is None:
            roles = self.mode_roles.get("balanced", {})
        tier = roles.get(role)
        if tier is None:
            return None
        model = self.models.get(tier) or self.models["balanced"]
        limits = self.limits.get(role) or {}
        loop = self.loop
        if limits:
            loop = AgentLoop(
                loop.provider, fallback=loop.fallback, prices=loop.prices, settings=replace(loop.settings, **limits)
            )
        return Assignment(role=role, tier=tier, model=model, loop=loop)


@dataclass(frozen=True, slots=True)
class LLMStep:
    """A step's state and output after its agent, and what the model spent (None: no model
    answered, or nothing needed asking)."""

    state: dict[str, Any]
    output: dict[str, Any]
    result: LoopResult[Any] | None = None

    @property
    def trace(self) -> list[dict[str, Any]]:
        """The conversation's turns, for the step's trace."""
        return self.result.trace if self.result is not None else []


async def run_llm_role(
    assignment: Assignment,
    tools: RoleTools,
    inputs: Sequence[Mapping[str, Any]],
    state: dict[str, Any],
    output: dict[str, Any],
    *,
    per_iteration: int,
) -> LLMStep:
    """Run the role's agent on the rule reasoner's `state` and `output` of this step (`inputs`
    are the states the step read, for the notes earlier LLM steps left)."""
    handler = _HANDLERS.get(assignment.role)
    if handler is None:
        raise ValueError(f"the LLM does not run role {assignment.role!r}")
    return await handler(_Run(assignment, tools, notes_of(inputs), state, output, per_iteration))


@dataclass(frozen=True, slots=True)
class _Run:
    """One LLM step's inputs: who runs it, the role's tools, the notes earlier LLM steps left, the
    rule reasoner's state and output of this step, and how many candidates an iteration verifies."""

    assignment: Assignment
    tools: RoleTools
    notes: Mapping[str, Any]
    state: dict[str, Any]
    output: dict[str, Any]
    per_iteration: int


async def _ask(assignment: Assignment, tools: RoleTools, prompt: Prompt, context: str, answer: type[Any]) -> Any:
    step = Step(system=prompt.text, context=context, tools=await tools.specs(), output=answer, model=assignment.model)
    return await assignment.loop.run(step, tools)


def _meta(assignment: Assignment, prompt: Prompt, result: LoopResult[Any], rejected: int) -> dict[str, Any]:
    return {
        "reasoner": "llm",
        "model": result.model,
        "tier": assignment.tier,
        "prompt_version": prompt.version,
        "rejected_claims": rejected,
        "llm": llm_summary(result),
    }


def llm_summary(result: LoopResult[Any]) -> dict[str, Any]:
    """How the conversation went: provider, a switch to the fallback, turns, corrections, compactions."""
    return {
        "provider": result.provider,
        "switched_provider": result.switched_provider,
        "turns": result.turns,
        "corrections": result.corrections,
        "compactions": result.compactions,
    }


def _note_problems(case: Case, role: str, rejected: int, dropped: Sequence[str], unmatched: Sequence[str]) -> None:
    if rejected:
        case.problems.append(
            f"{rejected} claim(s) of the model's {role} step cited no tool call of this investigation and were removed"
        )
    if dropped:
        case.problems.append(f"{role}: dropped for want of cited evidence: {', '.join(dropped)}")
    if unmatched:
        case.problems.append(
            f"{role}: the gathered changes do not show these reaching production, so they were not verified:"
            f" {', '.join(unmatched)}"
        )


def _state(case: Case, notes: Mapping[str, Any]) -> dict[str, Any]:
    return {**dump_case(case), NOTES_KEY: dict(notes)} if notes else dump_case(case)


async def _triage(run: _Run) -> LLMStep:
    assignment, tools, notes, state, output = run.assignment, run.tools, run.notes, run.state, run.output
    case = load_case(state)
    prompt = load_prompt("triage")
    known = case_call_ids(case)
    result = await _ask(assignment, tools, prompt, triage.context(case), Triage)
    review = review_triage(result.output, known | set(result.call_ids))
    applied = triage.apply(case, review)
    _note_problems(case, "triage", review.rejected, (), ())
    if review.ignored:
        case.problems.append(f"triage: ignored for want of cited evidence: {', '.join(review.ignored)}")
    case.problems.extend(f"triage: {refused}" for refused in applied.refused)
    notes = {**notes, "triage": applied.triage}
    answer = review.answer
    summary = {
        **output,
        "onset": applied.triage["onset"],
        "rule_onset": applied.triage["rule_onset"],
        "onset_changed": applied.onset_changed,
        "symptom": answer.symptom,
        "severity": answer.severity,
        "affected_services": list(answer.affected_services),
        "first_failing_service": case.first_failing,
        "first_failing_changed": applied.first_failing_changed,
        "gather_services": list(answer.gather_services),
        **_meta(assignment, prompt, result, review.rejected),
    }
    return LLMStep(_state(case, notes), summary, result)


async def _gather_context(run: _Run) -> LLMStep:
    assignment, tools, notes, state, output = run.assignment, run.tools, run.notes, run.state, run.output
    case = load_case(state)
    if not gather_context.has_context(case):
        # No ticket was read and no chat message names the service: nothing for a model to read.
        skipped = {**output, "llm_skipped": "no ticket or chat message was found"}
        return LLMStep(_state(case, notes), skipped)
    prompt = load_prompt("gather")
    known = case_call_ids(case)
    try:
        result = await _ask(assignment, tools, prompt, gather_context.context(case, notes), Context)
    except ProviderUnavailable as exc:
        # The ticket and chat are optional reading: an outage leaves them as the rules found them
        # (the hypothesis agent still reads those) instead of failing the investigation.
        case.problems.append(f"gather.context: LLM unavailable ({exc.message}); the ticket and chat were not read")
        return LLMStep(_state(case, notes), {**output, "llm_unavailable": exc.message})
    review = review_context(result.output, known | set(result.call_ids))
    _note_problems(case, "gather.context", review.rejected, (), ())
    reported = gather_context.notes(review)
    summary = {
        **output,
        "summary": reported["summary"],
        "facts": len(reported["facts"]),
        "suspects": reported["suspects"],
        **_meta(assignment, prompt, result, review.rejected),
    }
    return LLMStep(_state(case, {**notes, "context": reported}), summary, result)


async def _hypothesize(run: _Run) -> LLMStep:
    assignment, tools, notes, state, output = run.assignment, run.tools, run.notes, run.state, run.output
    per_iteration = run.per_iteration
    case = load_case(state)
    prompt = load_prompt("hypothesize")
    known = case_call_ids(case)
    similar = output.get("similar_incidents")
    past = list(similar.get("used", [])) if isinstance(similar, Mapping) else []
    knowledge = output.get("knowledge")
    issues = list(knowledge.get("entries", [])) if isinstance(knowledge, Mapping) else []
    result = await _ask(
        assignment, tools, prompt, hypothesize.context(case, notes, per_iteration, past, issues), Hypotheses
    )
    review = review_hypotheses(result.output, known | set(result.call_ids))
    applied = hypothesize.apply(case, review, per_iteration)
    _note_problems(case, "hypothesize", review.rejected, review.dropped, applied.unmatched)
    notes = {**notes, "hypotheses": {"iteration": case.iteration, "ranked": applied.ranked}}
    summary = {
        "iteration": case.iteration,
        "first_failing_service": case.first_failing,
        "blast_radius": case.blast_radius,
        "failure_order_changed": applied.failure_order_changed,
        "proposed": [
            {"kind": c.kind, "ref": c.ref, "service": c.service, "title": c.title}
            for c in case.candidates
            if c.proposed_in == case.iteration and not c.verified
        ],
        "waiting": len(case.unproposed),
        "hypotheses": [
            {k: h[k] for k in ("kind", "ref", "service", "mechanism", "plausibility", "candidate", "proposed")}
            for h in applied.ranked
        ],
        "rule_proposed": [p.get("ref") for p in output.get("proposed", [])],
        **({"similar_incidents": similar} if similar is not None else {}),
        **_meta(assignment, prompt, result, review.rejected),
    }
    return LLMStep(_state(case, notes), summary, result)


def _ranking(case: Case) -> list[dict[str, Any]]:
    return [{"ref": c.ref, "score": c.score, "title": c.title} for c in case.candidates if c.verified][:8]


async def _verify(run: _Run) -> LLMStep:
    assignment, tools, notes, state, output = run.assignment, run.tools, run.notes, run.state, run.output
    case = load_case(state)
    baseline = verify.restore(case, notes)
    if not verify.to_verify(case) and not verify.operational_hypotheses(notes):
        # Nothing was proposed (no candidates at all): there is nothing to ask a model.
        skipped = {**output, "ranking": _ranking(case), "llm_skipped": "nothing was proposed for verification"}
        return LLMStep(_state(case, notes), skipped)
    prompt = load_prompt("verify")
    known = case_call_ids(case)
    result = await _ask(assignment, tools, prompt, verify.context(case, notes), Verification)
    review = review_verification(result.output, known | set(result.call_ids))
    applied = verify.apply(case, review, baseline)
    _note_problems(case, "verify", review.rejected, review.dropped, applied.unmatched)
    if review.downgraded:
        case.problems.append(
            f"verify: claimed verified without a cited passing check, so unverified: {', '.join(review.downgraded)}"
        )
    answer = review.answer
    again = not answer.converged and answer.again and bool(case.unproposed)
    notes = {**notes, "verification": {**notes.get("verification", {}), **applied.verified}}
    summary = {
        "iteration": case.iteration,
        "converged": answer.converged,
        "unverified": len(case.unproposed),
        # Another HYPOTHESIZE ⇄ VERIFY iteration could settle it (the orchestrator bounds them).
        "again": again,
        "ranking": _ranking(case),
        "summary": answer.summary,
        "verification": [
            {k: entry[k] for k in ("kind", "ref", "status", "reason")} for entry in applied.verified.values()
        ],
        "not_addressed": applied.not_addressed,
        "rule_converged": output.get("converged"),
        **_meta(assignment, prompt, result, review.rejected),
    }
    return LLMStep(_state(case, notes), summary, result)


async def _recommend(run: _Run) -> LLMStep:
    assignment, tools, notes, state, output = run.assignment, run.tools, run.notes, run.state, run.output
    conclusion = await conclude_with_llm(assignment.loop, assignment.model, tools, load_case(state), output, notes)
    state = {**state, NOTES_KEY: dict(notes)} if notes else state  # the notes stay with the last state
    if conclusion.result is None:  # the providers were down: the rule reasoner's conclusion stands
        return LLMStep(state, conclusion.findings)
    findings = {**conclusion.findings, "tier": assignment.tier, "llm": llm_summary(conclusion.result)}
    return LLMStep(state, findings, conclusion.result)


_HANDLERS: Mapping[str, Callable[[_Run], Awaitable[LLMStep]]] = {
    "triage": _triage,
    "gather.context": _gather_context,
    "hypothesize": _hypothesize,
    "verify": _verify,
    "recommend": _recommend,
}

"""The structured output a model submits through a tool, validated with pydantic.

`Findings` is RECOMMEND's answer, `Triage` TRIAGE's, `Hypotheses` HYPOTHESIZE's and `Verification`
VERIFY's (`pm_worker.llm.roles` turns the last three into the rule reasoner's state).

Findings' field names follow what the rule reasoner's `conclude()` returns (verdict, confidence, summary,
first_failing_service, blast_radius, culprit, operational_signal, remediation {class, steps},
hypotheses with checks, evidence {claim, call_ids}, timeline {at, event}), so the orchestrator's
report renderer reads either reasoner's findings. Every claim carries the ids of the tool calls
it rests on; `citations.check_citations` drops those that cite nothing real.
"""

from __future__ import annotations

import copy
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, model_validator

from pm_worker.llm.protocol import ToolSpec

SUBMIT_TOOL = "submit"

Verdict = Literal["ROOT_CAUSE", "PROBABLE_CAUSE", "CONTRIBUTING_FACTOR", "INCONCLUSIVE"]
CULPRIT_VERDICTS: frozenset[str] = frozenset({"ROOT_CAUSE", "PROBABLE_CAUSE", "CONTRIBUTING_FACTOR"})
RemediationClass = Literal[
    "rollback", "config-revert", "roll-forward", "rotate-cert", "scale", "free-disk", "failover", "investigate"
]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Evidence(_Model):
    """A fact and the tool calls it comes from."""

    claim: str = Field(min_length=1, description="One fact, stated plainly.")
    call_ids: list[str] = Field(
        min_length=1, description="The call_id of every tool result this fact is read from (at least one)."
    )


class Check(_Model):
    """One verification check of a hypothesis."""

    name: str = Field(
        min_length=1, description="timing, location, signature, mechanism, substance, still_deployed, ..."
    )
    passed: bool
    detail: str = Field(default="", description="What was compared and what it showed.")
    call_ids: list[str] = Field(default_factory=list, description="The call_ids of the tool results the check read.")


class Hypothesis(_Model):
    """A candidate cause and how it fared."""

    kind: Literal["commit", "flag", "config", "operational"]
    ref: str = Field(description="Commit sha, flag name, config key, or a short name of the operational cause.")
    service: str = ""
    title: str = Field(default="", description="The change's title (commit message subject, flag description).")
    statement: str = Field(min_length=1, description="What this hypothesis claims happened.")
    checks: list[Check] = Field(default_factory=list)
    status: Literal["confirmed", "supported", "rejected", "untested"]
    confidence: float = Field(ge=0.0, le=1.0)
    rejected_because: str = ""


class Culprit(_Model):
    """The change the verdict names."""

    kind: Literal["commit", "flag", "config"]
    ref: str = Field(min_length=1)
    service: str
    title: str = ""
    at: str = Field(default="", description="When it reached production (ISO 8601), if known.")


class Remediation(_Model):
    """What to do about it."""

    class_: RemediationClass = Field(alias="class")
    steps: list[str] = Field(min_length=1)


class TimelineEvent(_Model):
    """One dated event."""

    at: str = Field(description="ISO 8601 timestamp as the tools reported it.")
    event: str


class Findings(_Model):
    """The verdict of an investigation and everything it rests on."""

    verdict: Verdict
    confidence: float = Field(ge=0.0, le=1.0)
    summary: str = Field(min_length=1)
    first_failing_service: str = ""
    blast_radius: list[str] = Field(default_factory=list)
    culprit: Culprit | None = Field(
        default=None, description="Required for ROOT_CAUSE, PROBABLE_CAUSE and CONTRIBUTING_FACTOR; null otherwise."
    )
    operational_signal: str = Field(default="", description="A non-change explanation (certificate, disk, surge...).")
    remediation: Remediation
    hypotheses: list[Hypothesis] = Field(default_factory=list)
    evidence: list[Evidence] = Field(default_factory=list)
    timeline: list[TimelineEvent] = Field(default_factory=list)

    @model_validator(mode="after")
    def _culprit_matches_verdict(self) -> Findings:
        if self.verdict in CULPRIT_VERDICTS and self.culprit is None:
            raise ValueError(f"verdict {self.verdict} needs a culprit")
        if self.verdict == "INCONCLUSIVE" and self.culprit is not None:
            raise ValueError("an INCONCLUSIVE verdict names no culprit (use hypotheses for candidates)")
        return self

    def to_report(self) -> dict[str, Any]:
        """The findings as the rule reasoner's `conclude()` shapes them, for the report renderer."""
        report = self.model_dump(mode="json", by_alias=True)
        culprit = self.culprit
        report["root_cause_commit"] = (
            culprit.ref
            if culprit is not None and culprit.kind == "commit" and self.verdict in ("ROOT_CAUSE", "PROBABLE_CAUSE")
            else "none"
        )
        for hypothesis in report["hypotheses"]:
            hypothesis["title"] = hypothesis["title"] or hypothesis["statement"]
            hypothesis["score"] = hypothesis["confidence"]
        return report


# --- TRIAGE --------------------------------------------------------------------------------

Severity = Literal["critical", "high", "medium", "low"]


class Triage(_Model):
    """TRIAGE's answer: what is failing, where it started, since when, and where to look next."""

    symptom: str = Field(min_length=1, description="What is failing, in one sentence, as the alert and metrics show.")
    symptom_evidence: list[Evidence] = Field(
        default_factory=list, description="The facts the symptom is read from, each citing its call_ids."
    )
    severity: Severity = Field(
        description="critical: customers cannot complete the core flow; high: a large share of requests fail;"
        " medium: degraded but working; low: barely noticeable."
    )
    affected_services: list[str] = Field(
        default_factory=list, max_length=30, description="The services the tools show failing or degraded."
    )
    first_failing_service: str = Field(
        default="",
        description="The service whose metrics left their baseline first, when the tools show one; empty"
        " when they do not. Needs first_failing_evidence.",
    )
    first_failing_evidence: list[Evidence] = Field(
        default_factory=list, description="With first_failing_service: the facts showing the order, cited."
    )
    onset: AwareDatetime | None = Field(
        default=None,
        description="When the symptom began (with a timezone), only when the evidence shows it differs from"
        " the context's onset; null to keep the context's. Needs onset_evidence.",
    )
    onset_evidence: list[Evidence] = Field(
        default_factory=list, description="With onset: the facts showing when the symptom began, cited."
    )
    gather_services: list[str] = Field(
        default_factory=list,
        max_length=30,
        description="The services whose logs, traces, metrics and changes the next steps should read first.",
    )

    @model_validator(mode="after")
    def _changes_are_cited(self) -> Triage:
        if self.first_failing_service and not self.first_failing_evidence:
            raise ValueError("first_failing_service needs first_failing_evidence citing the calls that show it")
        if self.onset is not None and not self.onset_evidence:
            raise ValueError("onset needs onset_evidence citing the calls that show it")
        return self


# --- GATHER (context) ----------------------------------------------------------------------

ContextKind = Literal["report", "timeline", "change", "action", "impact", "other"]


class ContextFact(_Model):
    """One thing the ticket or the chat says, as said: a lead, not a verified fact."""

    kind: ContextKind = Field(
        description="report: what someone observed; timeline: when something started or was noticed;"
        " change: a deploy, commit, flag or config change someone names; action: what someone did"
        " (rollback, restart, failover, scaling); impact: who or what is affected; other."
    )
    claim: str = Field(min_length=1, description="What the source says, attributed (who said it, where).")
    at: AwareDatetime | None = Field(default=None, description="When it happened or was said, with a timezone.")
    services: list[str] = Field(default_factory=list, max_length=10, description="The services it names.")
    refs: list[str] = Field(
        default_factory=list,
        max_length=10,
        description="The commit shas, flag names, versions or config keys it names, spelled as the source does.",
    )
    call_ids: list[str] = Field(min_length=1, description="The call_ids of the ticket or chat results it is read from.")


class Context(_Model):
    """GATHER's context answer: what the ticket and chat add to the telemetry."""

    summary: str = Field(
        default="", description="What people reported, suspected and did, in a few sentences; empty when nothing."
    )
    facts: list[ContextFact] = Field(default_factory=list, max_length=30, description="Oldest first.")
    suspects: list[str] = Field(
        default_factory=list,
        max_length=10,
        description="The changes or causes people suspect (refs or short names), to be verified like any other.",
    )


# --- HYPOTHESIZE ---------------------------------------------------------------------------


class RankedHypothesis(_Model):
    """One candidate cause as HYPOTHESIZE ranks it, before anyone has verified it."""

    kind: Literal["commit", "flag", "config", "operational"]
    ref: str = Field(
        min_length=1,
        description="Commit sha as the context spells it, flag name, config key, or a short name of the"
        " operational cause (certificate expiry, disk full, traffic surge, ...).",
    )
    service: str = Field(default="", description="The service it changed or affects.")
    mechanism: str = Field(min_length=1, description="How it would produce the symptom, cause to effect.")
    evidence: list[Evidence] = Field(
        min_length=1, description="The facts that point to it, each citing the call_ids it is read from."
    )
    falsified_by: list[str] = Field(
        min_length=1,
        description="Observations that would show it wrong: what verification should look for first.",
    )
    plausibility: float = Field(ge=0.0, le=1.0, description="How likely it is from what is known now.")


class Hypotheses(_Model):
    """HYPOTHESIZE's answer: where the failure started and the candidate causes, most plausible first."""

    first_failing_service: str = Field(
        default="",
        description="Only when the evidence shows the failure started elsewhere than the context says;"
        " empty to keep the context's.",
    )
    blast_radius: list[str] = Field(
        default_factory=list, description="With first_failing_service: the services that failed after it."
    )
    failure_order_evidence: list[Evidence] = Field(
        default_factory=list, description="With first_failing_service: the facts showing the order, cited."
    )
    hypotheses: list[RankedHypothesis] = Field(
        default_factory=list, max_length=20, description="The candidate causes, most plausible first."
    )

    @model_validator(mode="after")
    def _failure_order_is_cited(self) -> Hypotheses:
        if self.first_failing_service and not self.failure_order_evidence:
            raise ValueError("first_failing_service needs failure_order_evidence citing the calls that show it")
        return self


# --- VERIFY --------------------------------------------------------------------------------

CheckOutcome = Literal["pass", "fail", "unknown"]
VerificationStatus = Literal["verified", "rejected", "unverified"]


class ChecklistItem(_Model):
    """One check of a hypothesis and what it showed."""

    check: str = Field(
        min_length=1,
        description="timing, location, signature, mechanism, substance, still_deployed, or another check the"
        " hypothesis's falsifiers call for.",
    )
    outcome: CheckOutcome = Field(description="unknown when the tools could not settle it.")
    detail: str = Field(min_length=1, description="What was compared and what it showed.")
    call_ids: list[str] = Field(
        default_factory=list, description="The call_ids of the results the check read; required for pass and fail."
    )


class VerifiedHypothesis(_Model):
    """A hypothesis after its checks."""

    kind: Literal["commit", "flag", "config", "operational"]
    ref: str = Field(min_length=1, description="As the context names it.")
    service: str = ""
    checklist: list[ChecklistItem] = Field(min_length=1)
    status: VerificationStatus = Field(
        description="verified: the checks show it explains the symptom; rejected: a check rules it out;"
        " unverified: the checks could not settle it."
    )
    reason: str = Field(min_length=1, description="Why this status, naming the deciding checks.")


class Verification(_Model):
    """VERIFY's answer: a checklist per hypothesis, and whether the question is settled."""

    hypotheses: list[VerifiedHypothesis] = Field(default_factory=list)
    converged: bool = Field(
        description="True when one verified hypothesis explains the symptom clearly better than every other."
    )
    again: bool = Field(
        description="True when verifying the candidates still waiting could settle what this iteration did"
        " not; false when converged."
    )
    summary: str = Field(min_length=1, description="What the checks showed, in two or three sentences.")

    @model_validator(mode="after")
    def _consistent(self) -> Verification:
        if self.converged and not any(h.status == "verified" for h in self.hypotheses):
            raise ValueError("converged needs a hypothesis with status verified")
        if self.converged and self.again:
            raise ValueError("again must be false when converged")
        return self


def inline_refs(schema: dict[str, Any]) -> dict[str, Any]:
    """`schema` with every local `$ref` replaced by its definition and `$defs` removed: some
    OpenAI-compatible servers (grammar-constrained local models) do not resolve references.
    The models here are not recursive."""
    defs = schema.get("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                target = copy.deepcopy(defs[ref.removeprefix("#/$defs/")])
                siblings = {k: v for k, v in node.items() if k != "$ref"}
                return resolve({**target, **siblings})
            return {k: resolve(v) for k, v in node.items() if k != "$defs"}
        if isinstance(node, list):
            return [resolve(item) for item in node]
        return node

    resolved: dict[str, Any] = resolve(schema)
    return resolved


def submit_tool(model: type[BaseModel], *, name: str = SUBMIT_TOOL, description: str = "") -> ToolSpec:
    """The tool through which the model hands in `model`; its input schema is the model's."""
    return ToolSpec(
        name=name,
        description=description
        or (
            "Submit your final answer. Call this exactly once, when you are done investigating; every"
            " evidence item and check must cite the call_ids of the tool results it rests on."
        ),
        input_schema=inline_refs(model.model_json_schema(by_alias=True)),
    )

"""The structured output a model submits through a tool, validated with pydantic.

Field names follow what the rule reasoner's `conclude()` returns (verdict, confidence, summary,
first_failing_service, blast_radius, culprit, operational_signal, remediation {class, steps},
hypotheses with checks, evidence {claim, call_ids}, timeline {at, event}), so the orchestrator's
report renderer reads either reasoner's findings. Every claim carries the ids of the tool calls
it rests on; `citations.check_citations` drops those that cite nothing real.
"""

from __future__ import annotations

import copy
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

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

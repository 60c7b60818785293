"""Scoring findings against a RootCauseBench ground truth (../shared/benchmarks/README.md).

Primary: the root-cause commit, exact (a full sha, or "none" for operational causes).
Secondary: first failing service (exact), blast radius (Jaccard; two empty sets score 1), and
remediation class (exact).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class CaseScore:
    case: str
    commit_correct: bool
    expected_commit: str
    found_commit: str
    verdict: str
    confidence: float
    first_failing_correct: bool
    blast_radius_jaccard: float
    remediation_correct: bool
    seconds: float
    tool_calls: int
    error: str = ""
    # What the investigation's LLM calls cost (0 with the rule reasoner).
    cost_usd: float = 0.0


def jaccard(left: Iterable[str], right: Iterable[str]) -> float:
    a, b = set(left), set(right)
    return 1.0 if not a and not b else len(a & b) / len(a | b)


def score_case(
    case: str,
    findings: Mapping[str, Any],
    truth: Mapping[str, Any],
    *,
    seconds: float,
    tool_calls: int,
    cost_usd: float = 0.0,
) -> CaseScore:
    expected = str(truth.get("root_cause_commit", "none")).lower()
    found = str(findings.get("root_cause_commit", "none")).lower()
    return CaseScore(
        case=case,
        commit_correct=found == expected,
        expected_commit=expected,
        found_commit=found,
        verdict=str(findings.get("verdict", "")),
        confidence=float(findings.get("confidence", 0.0)),
        first_failing_correct=findings.get("first_failing_service") == truth.get("first_failing_service"),
        blast_radius_jaccard=round(jaccard(findings.get("blast_radius", ()), truth.get("blast_radius", ())), 3),
        remediation_correct=(findings.get("remediation") or {}).get("class") == truth.get("remediation"),
        seconds=round(seconds, 2),
        tool_calls=tool_calls,
        cost_usd=round(cost_usd, 6),
    )


def failed_case(case: str, truth: Mapping[str, Any], error: str, seconds: float) -> CaseScore:
    """A case whose investigation did not finish: it scores nothing."""
    return CaseScore(case, False, str(truth.get("root_cause_commit", "none")), "", "", 0.0, False, 0.0, False,
                     round(seconds, 2), 0, error)  # fmt: skip


def summary(scores: Sequence[CaseScore]) -> dict[str, Any]:
    """Accuracy overall and on the "none" cases, secondary scores, time per case."""
    none_cases = [s for s in scores if s.expected_commit == "none"]
    change_cases = [s for s in scores if s.expected_commit != "none"]

    def rate(items: Sequence[CaseScore]) -> float | None:
        return round(sum(s.commit_correct for s in items) / len(items), 3) if items else None

    count = len(scores) or 1
    return {
        "cases": len(scores),
        "root_cause_accuracy": rate(scores),
        "none_case_accuracy": rate(none_cases),
        "change_case_accuracy": rate(change_cases),
        "first_failing_service_accuracy": round(sum(s.first_failing_correct for s in scores) / count, 3),
        "blast_radius_jaccard_mean": round(sum(s.blast_radius_jaccard for s in scores) / count, 3),
        "remediation_accuracy": round(sum(s.remediation_correct for s in scores) / count, 3),
        "seconds_per_case_mean": round(sum(s.seconds for s in scores) / count, 2),
        "seconds_per_case_max": max((s.seconds for s in scores), default=0.0),
        "tool_calls_per_case_mean": round(sum(s.tool_calls for s in scores) / count, 1),
        "cost_usd_per_case_mean": round(sum(s.cost_usd for s in scores) / count, 6),
        "cost_usd_total": round(sum(s.cost_usd for s in scores), 6),
        "failed_cases": [s.case for s in scores if s.error],
        "per_case": [asdict(s) for s in scores],
    }


def table(scores: Sequence[CaseScore]) -> str:
    """A fixed-width table for the terminal."""
    header = (
        f"{'case':40} {'commit':7} {'verdict':16} {'found':9} {'first':6} {'blast':6} {'fix':4} {'secs':>6}"
        f" {'cost $':>8}"
    )
    lines = [header, "-" * len(header)]
    for s in scores:
        lines.append(
            f"{s.case[:40]:40} {'ok' if s.commit_correct else 'WRONG':7} {(s.verdict or 'ERROR')[:16]:16} "
            f"{s.found_commit[:8] or '-':9} {'ok' if s.first_failing_correct else 'no':6} "
            f"{s.blast_radius_jaccard:<6.2f} {'ok' if s.remediation_correct else 'no':4} {s.seconds:6.1f}"
            f" {s.cost_usd:8.4f}"
        )
    return "\n".join(lines)

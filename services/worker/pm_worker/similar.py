"""Similar past incidents given to a HYPOTHESIZE step (the orchestrator's `similar_incidents`
input), and known issues given to HYPOTHESIZE and RECOMMEND (its `knowledge` input): what the
step records of them in its output.

The orchestrator passes the closest conclusive past incidents whose similarity reached
SIMILARITY_MIN_SCORE, or none and the reason it abstained. The step's output says which it
was, so the investigation's record (and its bundle) shows whether past incidents informed it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# A summary shown in the step's output is cut here; the full one is in the past report.
SUMMARY_CHARS = 500


def hypothesis_context(given: Any) -> dict[str, Any]:
    """The step's record of its `similar_incidents` input: {used: [...], abstained, reason, min_score}."""
    if not isinstance(given, Mapping):
        return {"used": [], "abstained": True, "reason": "the similar_incidents input was not an object"}
    used = []
    for match in given.get("matches") or []:
        if not isinstance(match, Mapping) or not match.get("investigation_id"):
            continue
        used.append(
            {
                "investigation_id": str(match["investigation_id"]),
                "ticket_id": str(match.get("ticket_id", "")),
                "similarity_score": float(match.get("similarity_score") or 0.0),
                "verdict": str(match.get("verdict", "")),
                "summary": str(match.get("summary", ""))[:SUMMARY_CHARS],
            }
        )
    abstained = not used
    reason = str(given.get("reason") or "") if abstained else ""
    record: dict[str, Any] = {"used": used, "abstained": abstained, "reason": reason or ("" if used else "none given")}
    if isinstance(given.get("min_score"), int | float):
        record["min_score"] = float(given["min_score"])
    return record


def knowledge_context(given: Any) -> dict[str, Any]:
    """The step's record of its `knowledge` input (the active knowledge entries of the
    investigation's services): {entries: [{id, service, category, title, says}], services, reason}."""
    if not isinstance(given, Mapping):
        return {"entries": [], "services": [], "reason": "the knowledge input was not an object"}
    entries = [
        {k: str(entry.get(k, ""))[:SUMMARY_CHARS] for k in ("id", "service", "category", "title", "says")}
        for entry in given.get("entries") or []
        if isinstance(entry, Mapping) and entry.get("id")
    ]
    record: dict[str, Any] = {"entries": entries, "services": [str(s) for s in given.get("services") or []]}
    if not entries:
        record["reason"] = str(given.get("reason") or "no active knowledge entry for these services")
    return record

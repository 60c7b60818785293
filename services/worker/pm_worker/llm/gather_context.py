"""GATHER's context part by a model: what the ticket and the chat add to the telemetry.

The rule reasoner's context part has read the investigation's ticket (when its id is an issue
key) and the chat messages naming the alerted service in the window, each with its call id. The
model reads them, may look further through the role's tools (the ticket again, other searches in
chat), and submits `Context`: attributed, cited facts (what people reported, when they noticed,
which changes they named, what they did) and the suspects they named.

People's words are leads, not evidence: the facts go to the notes the hypothesis agent reads as
`reported_context`, never into the state's evidence or the candidates' scores, so a confident
wrong guess in a chat channel cannot become a verdict without the telemetry behind it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from pm_grpc.tool_results import ticket_field
from pm_worker.llm.citations import ContextReview
from pm_worker.llm.triage import triage_notes
from pm_worker.rules.reasoner import LOOKBACK, Case
from pm_worker.rules.signals import iso

MAX_TEXT = 2000  # characters of any one ticket field or chat message shown


def _short(value: Any) -> Any:
    """`value` with long strings cut (a ticket's description, a chat message)."""
    if isinstance(value, str):
        return value if len(value) <= MAX_TEXT else value[:MAX_TEXT] + " [cut]"
    if isinstance(value, Mapping):
        return {str(k): _short(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_short(v) for v in value[:50]]
    return value


def has_context(case: Case) -> bool:
    """Whether the rule reasoner found anything for the model to read."""
    return bool(case.tickets or case.messages)


def reported(case: Case, notes: Mapping[str, Any]) -> dict[str, Any] | None:
    """What people said, for the hypothesis agent: the context agent's cited facts when a model
    read them, else what the rule reasoner found (the ticket and the first messages); None when
    there is nothing."""
    found = notes.get("context")
    if isinstance(found, Mapping):
        return dict(found)
    if not has_context(case):
        return None
    return {
        "tickets": [_short(t) for t in case.tickets],
        "ticket_call_ids": case.calls.get("ticket", []),
        "messages": [_short(m) for m in case.messages[:20]],
        "chat_call_ids": case.calls.get("chat", []),
    }


def context(case: Case, notes: Mapping[str, Any]) -> str:
    """The ticket and chat as the context agent reads them."""
    anchor = case.fired_at or case.onset
    data = {
        "alert": case.alert,
        "alert_call_ids": case.calls.get("alert", []),
        "fired_at": iso(case.fired_at) if case.fired_at else None,
        "onset": iso(case.onset) if case.onset else None,
        "window": (
            {"start": iso(case.onset - LOOKBACK), "end": iso(anchor + timedelta(minutes=15))}
            if case.onset is not None and anchor is not None
            else None
        ),
        **({"triage_agent": triage} if (triage := triage_notes(notes)) else {}),
        "tickets": [_short(t) for t in case.tickets],
        "ticket_call_ids": case.calls.get("ticket", []),
        "messages": [_short(m) for m in case.messages],  # at most reasoner.MAX_MESSAGES
        "chat_call_ids": case.calls.get("chat", []),
        "problems": case.problems,
    }
    return (
        "The investigation's ticket and the chat messages naming the alerted service in the window, as"
        " JSON, with the call_ids they were read from. Other agents read the logs, metrics, traces and"
        " changes at the same time.\n\n" + json.dumps(data, indent=1, default=str)
    )


def notes(review: ContextReview) -> dict[str, Any]:
    """The reviewed answer as the later agents read it."""
    answer = review.answer
    return {
        "summary": answer.summary,
        "facts": [fact.model_dump(mode="json") for fact in answer.facts],
        "suspects": list(answer.suspects),
    }


MAX_REPORTED_MESSAGES = 10


def report_view(case: Case, notes: Mapping[str, Any]) -> dict[str, Any] | None:
    """What people said, for the report's "What people reported" section: the context agent's
    facts and suspects when a model read the ticket and chat, else the ticket and the first
    messages as found; None when there is nothing."""
    found = notes.get("context")
    if isinstance(found, Mapping):
        facts = [
            {k: fact.get(k) for k in ("kind", "claim", "at", "call_ids") if fact.get(k)}
            for fact in found.get("facts", [])
            if isinstance(fact, Mapping)
        ]
        return {"source": "context agent", "summary": found.get("summary", ""), "facts": facts,
                "suspects": list(found.get("suspects", []))}  # fmt: skip
    if not has_context(case):
        return None
    ticket_calls = case.calls.get("ticket", [])
    chat_calls = case.calls.get("chat", [])
    return {
        "source": "as found",
        "facts": [
            *(
                {
                    "kind": "ticket",
                    "claim": f"ticket {t.get('key', '?')}: {ticket_field(t, 'summary') or '?'}"
                    f" ({ticket_field(t, 'status') or '?'})",
                    "call_ids": ticket_calls,
                }
                for t in case.tickets
            ),
            *(
                {
                    "kind": "chat",
                    "claim": f"{m.get('user', '?')}{' in #' + str(m['channel']) if m.get('channel') else ''}:"
                    f" {str(m.get('text', ''))[:300]}",
                    "at": m.get("ts") or m.get("timestamp"),
                    "call_ids": chat_calls,
                }
                for m in case.messages[:MAX_REPORTED_MESSAGES]
            ),
        ],
        "suspects": [],
    }

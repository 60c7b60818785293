"""The investigation report, rendered from the findings of the RECOMMEND step.

Markdown is the source; HTML is the same document with the Markdown subset we emit (headings,
paragraphs, lists, tables, code spans) converted and every value escaped. Evidence items and
hypothesis checks cite the mcp_tool_calls ids they rest on, as `[call:<id>]`.
"""

from __future__ import annotations

import html
import re
from collections.abc import Mapping, Sequence
from typing import Any


def _cite(ids: Sequence[str]) -> str:
    return " ".join(f"`[call:{i}]`" for i in sorted(set(ids)) if i)


def _short(hypothesis: Mapping[str, Any]) -> str:
    """A commit sha shortened to 12 characters; flag names and other refs whole."""
    ref = str(hypothesis.get("ref", ""))
    return ref[:12] if hypothesis.get("kind") == "commit" else ref


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _reported(said: Any) -> list[str]:
    """The "What people reported" section: the ticket and chat, as leads apart from the evidence."""
    if not isinstance(said, Mapping) or not (said.get("facts") or said.get("summary")):
        return []
    lines = [
        "",
        "## What people reported",
        "",
        "_From the ticket and chat: leads, not evidence. The verdict above does not rest on them._",
        "",
    ]
    if said.get("summary"):
        lines += [str(said["summary"]), ""]
    for fact in said.get("facts") or []:
        if not isinstance(fact, Mapping):
            continue
        at = f" ({fact['at']})" if fact.get("at") else ""
        kind = f"{fact['kind']}: " if fact.get("kind") else ""
        lines.append(f"- {kind}{fact.get('claim', '')}{at} {_cite(fact.get('call_ids') or [])}".rstrip())
    if said.get("suspects"):
        lines += ["", "Suspected by people: " + ", ".join(f"`{_cell(s)}`" for s in said["suspects"])]
    return lines


def render_markdown(investigation: Mapping[str, Any], findings: Mapping[str, Any]) -> str:
    """The report as Markdown."""
    verdict = findings.get("verdict", "INCONCLUSIVE")
    confidence = float(findings.get("confidence", 0.0))
    culprit = findings.get("culprit") or None
    remediation = findings.get("remediation") or {}
    lines = [
        f"# Investigation {investigation.get('ticket_id', '')}",
        "",
        f"**Verdict:** {verdict} · **Confidence:** {confidence:.0%}"
        f" · **Investigation:** `{investigation.get('id', '')}`"
        + (f" · **Hypothesis iterations:** {findings['iterations']}" if findings.get("iterations") else ""),
        "",
    ]
    if findings.get("partial"):
        lines += [f"> **Partial report.** The investigation was cut short: {findings['partial']}.", ""]
    lines += [
        "## Summary",
        "",
        str(findings.get("summary", "")),
        "",
    ]
    alert = findings.get("alert") or {}
    if alert:
        lines += [
            "## Alert",
            "",
            f"{alert.get('service', '?')} · {alert.get('metric', '?')} observed {alert.get('observed', '?')}"
            f" (threshold {alert.get('threshold', '?')}) at {alert.get('fired_at', '?')}: {alert.get('summary', '')}",
            "",
        ]
    lines += [
        "## Where it started",
        "",
        f"- Onset: {findings.get('onset') or 'not found'}",
        f"- First failing service: {findings.get('first_failing_service') or 'not found'}",
        f"- Blast radius: {', '.join(findings.get('blast_radius') or []) or 'none found'}",
        "",
        "## Cause",
        "",
    ]
    if culprit:
        lines += [
            f"- {culprit.get('kind', 'change')} `{culprit.get('ref', '')}` on {culprit.get('service', '?')}"
            f" at {culprit.get('at', '?')}: {culprit.get('title', '')}",
            "",
        ]
    elif findings.get("unverified_candidates"):
        signal = findings.get("operational_signal") or ""
        lines += [
            f"No verified change explains this; {findings['unverified_candidates']} candidate change(s) were not"
            " verified." + (f" Operational signal: {signal}." if signal else ""),
            "",
        ]
    else:
        signal = findings.get("operational_signal") or ""
        lines += [
            "No change explains this."
            + (f" Operational signal: {signal}." if signal else " No operational signal was found either."),
            "",
        ]
    lines += ["## Fix plan", "", f"Class: **{remediation.get('class', 'investigate')}**", ""]
    lines += [f"{n}. {step}" for n, step in enumerate(remediation.get("steps") or [], start=1)]
    lines += ["", "## Evidence", ""]
    for item in findings.get("evidence") or []:
        lines.append(f"- {item.get('claim', '')} {_cite(item.get('call_ids') or [])}".rstrip())
    lines += _reported(findings.get("reported_context"))
    lines += [
        "",
        "## Hypotheses",
        "",
        "| change | service | iteration | score | status | why |",
        "|---|---|---|---|---|---|",
    ]
    for hypothesis in findings.get("hypotheses") or []:
        status = hypothesis.get("status", "")
        why = {"confirmed": "every check passed", "supported": "best supported; not every check passed"}.get(
            status, hypothesis.get("rejected_because", "")
        )
        lines.append(
            f"| `{_cell(_short(hypothesis))}` {_cell(hypothesis.get('title', ''))} "
            f"| {_cell(hypothesis.get('service', ''))} | {hypothesis.get('iteration') or '-'}"
            f" | {hypothesis.get('score', 0)} "
            f"| {_cell(hypothesis.get('status', ''))} | {_cell(why)} |"
        )
    lines += ["", "### Checks of the leading hypotheses", ""]
    for hypothesis in (findings.get("hypotheses") or [])[:3]:
        lines.append(f"- `{_short(hypothesis)}` {hypothesis.get('title', '')}")
        for check in hypothesis.get("checks") or []:
            mark = "pass" if check.get("passed") else "fail"
            lines.append(
                f"  - {check.get('name')}: {mark} — {check.get('detail', '')}"
                f" {_cite(check.get('call_ids') or [])}".rstrip()
            )
    lines += ["", "## Timeline", "", "| at | event |", "|---|---|"]
    lines += [f"| {_cell(e.get('at', ''))} | {_cell(e.get('event', ''))} |" for e in findings.get("timeline") or []]
    problems = findings.get("problems") or []
    if problems:
        lines += ["", "## Gaps", "", *[f"- {p}" for p in problems]]
    lines.append("")
    return "\n".join(lines)


_INLINE_CODE = re.compile(r"`([^`]*)`")
_BOLD = re.compile(r"\*\*([^*]+)\*\*")


def _inline(text: str) -> str:
    escaped = html.escape(text, quote=False)
    escaped = _INLINE_CODE.sub(lambda m: f"<code>{m.group(1)}</code>", escaped)
    return _BOLD.sub(lambda m: f"<strong>{m.group(1)}</strong>", escaped)


def render_html(markdown: str, title: str) -> str:
    """The Markdown subset of `render_markdown` as a standalone HTML page."""
    out = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto;line-height:1.4}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.2em .5em}code{background:#f4f4f4}</style>",
        "</head><body>",
    ]
    in_list: str | None = None
    table: list[list[str]] = []

    def close() -> None:
        nonlocal in_list, table
        if in_list:
            out.append(f"</{in_list}>")
            in_list = None
        if table:
            head, *rows = (r for r in table if not all(set(c) <= {"-"} for c in r))
            out.append("<table><tr>" + "".join(f"<th>{_inline(c)}</th>" for c in head) + "</tr>")
            out.extend("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in row) + "</tr>" for row in rows)
            out.append("</table>")
            table = []

    for line in markdown.splitlines():
        if line.startswith("|"):
            if in_list:
                out.append(f"</{in_list}>")
                in_list = None
            cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]
            table.append(cells)
            continue
        if table:
            close()
        heading = re.match(r"^(#{1,3}) (.*)$", line)
        item = re.match(r"^(\s*)(- |\d+\. )(.*)$", line)
        if heading:
            close()
            level = len(heading.group(1))
            out.append(f"<h{level}>{_inline(heading.group(2))}</h{level}>")
        elif item:
            kind = "ol" if item.group(2)[0].isdigit() else "ul"
            if in_list != kind:
                close()
                out.append(f"<{kind}>")
                in_list = kind
            out.append(f"<li>{_inline(item.group(3))}</li>")
        elif line.strip():
            close()
            out.append(f"<p>{_inline(line)}</p>")
        else:
            close()
    close()
    out.append("</body></html>")
    return "\n".join(out)

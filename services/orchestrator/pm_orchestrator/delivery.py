"""Delivery of a finished investigation: once per target, retried with backoff.

When an investigation completes or fails, the engine records one `deliveries` row per target in
the same transaction (`record_deliveries`; the table's unique key makes it once per
investigation and target). This loop sends the pending ones after commit:

- `callback` (the request's `callback_url`): a signed JSON POST of
  `{investigation_id, ticket_id, status, verdict, confidence, summary, error, report_url}` with
  `Idempotency-Key: <delivery id>` (the same on every attempt), `X-PM-Timestamp` (unix seconds)
  and, when the secret `callback-signing-secret` is set (Vault, else CALLBACK_SIGNING_SECRET),
  `X-PM-Signature: sha256=<hex HMAC-SHA256 of "<timestamp>.<body>">`;
- `slack` (a Slack slash command's `response_url`): the result as a message in the channel;
- `jira` (a comment on the ticket) and `chat` (a post to PUBLISH_CHAT_CHANNEL): through the
  registry's write tools (`publish.ticket_comment`, `publish.chat_message`) as the `delivery`
  role. The idempotency key is `delivery:<id>:<attempt>`; the attempt is counted in the same
  transaction that records the outcome, so a sender that dies after the call and before the
  commit repeats the same key and the registry replays the first call instead of posting twice.

HTTP: a 2xx answer delivers it; 408, 429, 5xx and network errors are retried with backoff (2 s,
4 s, 8 s ...) up to `max_attempts`; any other answer fails it at once. Registry: an `ok` outcome
delivers it; tool errors, timeouts and an unavailable server are retried the same way; a refusal
(no such tool, not allowed, bad arguments) fails it at once. Rows are claimed with FOR UPDATE
SKIP LOCKED, so replicas never send one twice at the same time.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import json
import logging
import re
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import grpc
import httpx
from google.protobuf import json_format, struct_pb2
from opentelemetry import trace
from opentelemetry.trace import StatusCode

from pm.registry.v1 import registry_pb2, registry_pb2_grpc
from pm_orchestrator.rows import json_object
from pm_secrets import SecretSource
from pm_telemetry import bind_investigation, parent_context, trace_context

log = logging.getLogger(__name__)

SIGNING_SECRET = "callback-signing-secret"
RETRYABLE = {408, 429}
DELIVERY_ROLE = "delivery"
CAPABILITY = {"jira": "publish.ticket_comment", "chat": "publish.chat_message"}
# Ticket ids that name a real ticket (not the PD-/GRAFANA- ids intake makes for alerts).
_TICKET_KEY = re.compile(r"^[A-Z][A-Z0-9_]*-\d+$")
_TICKET_SOURCES = ("api", "batch", "jira_webhook", "slack_command")
# Registry refusals no retry can fix.
_PERMANENT = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.UNAUTHENTICATED,
}

_CLAIM = """
SELECT d.id, d.target, d.target_ref, d.attempts, i.id AS investigation_id, i.ticket_id, i.status, i.verdict,
       i.confidence, i.summary, i.error, i.trace_context
FROM deliveries d JOIN investigations i ON i.id = d.investigation_id
WHERE d.status = 'pending' AND d.next_attempt_at <= now()
ORDER BY d.next_attempt_at
LIMIT $1
FOR UPDATE OF d SKIP LOCKED
"""


@dataclass(frozen=True, slots=True)
class Publishing:
    """Where results are published besides the callback (docs/engine.md, "Delivery")."""

    # Comment on the investigation's ticket through the registry (publish.ticket_comment).
    ticket_comments: bool = False
    # Post to this chat channel through the registry (publish.chat_message); "" for none.
    chat_channel: str = ""
    # The write tools' arguments: templates over {ticket_id}, {channel} and {text}.
    ticket_arguments: Mapping[str, str] = field(
        default_factory=lambda: {"issue_key": "{ticket_id}", "comment": "{text}"}
    )
    chat_arguments: Mapping[str, str] = field(default_factory=lambda: {"channel_id": "{channel}", "text": "{text}"})
    # Prefer this registry server's tools ("" for whichever offers the capability).
    server: str = ""
    # Where people reach the REST API, for links in messages ("" for relative paths).
    public_base_url: str = ""


async def record_deliveries(conn: asyncpg.Connection, investigation: Mapping[str, Any], publishing: Publishing) -> None:
    """The ended investigation's deliveries, once per target, sent after commit by the loop."""
    targets: list[tuple[str, str]] = []
    if investigation["callback_url"]:
        targets.append(("callback", str(investigation["callback_url"])))
    context = json_object(investigation["trigger_context"])
    response_url = str((context.get("slack") or {}).get("response_url") or "")
    if response_url.startswith("https://") or response_url.startswith("http://"):
        targets.append(("slack", response_url))
    ticket = str(investigation["ticket_id"])
    if publishing.ticket_comments and investigation["trigger_source"] in _TICKET_SOURCES and _TICKET_KEY.match(ticket):
        targets.append(("jira", ticket))
    if publishing.chat_channel:
        targets.append(("chat", publishing.chat_channel))
    for target, ref in targets:
        await conn.execute(
            "INSERT INTO deliveries (id, investigation_id, target, target_ref) VALUES ($1, $2, $3, $4)"
            " ON CONFLICT (investigation_id, target, target_ref) DO NOTHING",
            uuid.uuid4(),
            investigation["id"],
            target,
            ref,
        )


@functools.cache
def _tracer() -> trace.Tracer:
    return trace.get_tracer(__name__)


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """The X-PM-Signature value for `body` sent at `timestamp`."""
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def report_path(investigation_id: str) -> str:
    return f"/api/v1/investigations/{investigation_id}/report"


def payload(row: Mapping[str, Any]) -> dict[str, Any]:
    investigation_id = str(row["investigation_id"])
    return {
        "investigation_id": investigation_id,
        "ticket_id": row["ticket_id"],
        "status": row["status"],
        "verdict": row["verdict"],
        "confidence": float(row["confidence"]) if row["confidence"] is not None else None,
        "summary": row["summary"],
        "error": row["error"],
        "report_url": report_path(investigation_id),
    }


def message(row: Mapping[str, Any], public_base_url: str = "") -> str:
    """The result as a short chat or comment text (Slack mrkdwn, readable as plain text)."""
    link = f"{public_base_url.rstrip('/')}{report_path(str(row['investigation_id']))}"
    if row["status"] == "failed":
        head = f":warning: The investigation of *{row['ticket_id']}* failed: {row['error'] or 'no reason recorded'}"
        return f"{head}\nDetails: {link}"
    confidence = f"{float(row['confidence']):.0%}" if row["confidence"] is not None else "?"
    return (
        f":mag: Investigation of *{row['ticket_id']}*: *{row['verdict'] or 'INCONCLUSIVE'}*"
        f" (confidence {confidence})\n{row['summary'] or ''}\nReport: {link}"
    )


@dataclass(frozen=True, slots=True)
class Attempt:
    """How one attempt went: `error` is empty when delivered."""

    error: str = ""
    retryable: bool = False
    response_status: int | None = None


class Deliverer:
    """Sends due deliveries until cancelled."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        secrets: SecretSource,
        registry: grpc.aio.Channel | None = None,
        publishing: Publishing | None = None,
        *,
        max_attempts: int = 5,
        timeout_seconds: float = 10.0,
        backoff_seconds: float = 2.0,
        poll_seconds: float = 1.0,
    ) -> None:
        self._pool = pool
        self._secrets = secrets
        self._registry: Any = registry_pb2_grpc.RegistryServiceStub(registry) if registry is not None else None
        self._publishing = publishing or Publishing()
        self._max_attempts = max_attempts
        self._timeout = timeout_seconds
        self._backoff = backoff_seconds
        self._poll = poll_seconds

    async def run(self) -> None:
        async with httpx.AsyncClient(timeout=self._timeout, follow_redirects=False) as client:
            while True:
                try:
                    await self.send_due(client)
                except (asyncpg.PostgresError, OSError) as exc:
                    log.warning("delivery: %s", exc)
                await asyncio.sleep(self._poll)

    async def send_due(self, client: httpx.AsyncClient, batch: int = 20) -> int:
        """Send what is due; returns how many were attempted."""
        async with self._pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(_CLAIM, batch)
            for row in rows:
                # Each attempt continues the investigation's trace (the request's, kept on its row).
                with (
                    _tracer().start_as_current_span(
                        "delivery.send",
                        context=parent_context(json_object(row["trace_context"])),
                        attributes={
                            "pm.investigation_id": str(row["investigation_id"]),
                            "pm.delivery.target": row["target"],
                            "pm.delivery.attempt": row["attempts"] + 1,
                        },
                    ) as span,
                    bind_investigation(str(row["investigation_id"])),
                ):
                    outcome = await self._attempt(client, row)
                    span.set_attribute("pm.delivery.outcome", "delivered" if not outcome.error else "failed")
                    if outcome.error:
                        span.set_status(StatusCode.ERROR, "retryable" if outcome.retryable else "failed")
                    if outcome.response_status is not None:
                        span.set_attribute("http.response.status_code", outcome.response_status)
                    await self._record(conn, row, outcome)
        return len(rows)

    async def _attempt(self, client: httpx.AsyncClient, row: asyncpg.Record) -> Attempt:
        target = row["target"]
        if target == "callback":
            secret = await self._secrets.get(SIGNING_SECRET)
            return await self._callback(client, row, secret.get_secret_value() if secret else "")
        if target == "slack":
            body = {"response_type": "in_channel", "replace_original": False, "text": self._text(row)}
            return await self._post(client, row["target_ref"], json.dumps(body).encode(), {})
        if target in CAPABILITY:
            return await self._publish(row)
        return Attempt(f"unknown delivery target {target!r}")

    def _text(self, row: Mapping[str, Any]) -> str:
        return message(row, self._publishing.public_base_url)

    async def _callback(self, client: httpx.AsyncClient, row: asyncpg.Record, secret: str) -> Attempt:
        body = json.dumps(payload(row), sort_keys=True).encode()
        timestamp = str(int(time.time()))
        # traceparent lets the receiver continue the investigation's trace.
        headers = {**trace_context(), "idempotency-key": str(row["id"]), "x-pm-timestamp": timestamp}
        if secret:
            headers["x-pm-signature"] = signature(secret, timestamp, body)
        return await self._post(client, row["target_ref"], body, headers)

    async def _post(self, client: httpx.AsyncClient, url: str, body: bytes, headers: Mapping[str, str]) -> Attempt:
        try:
            response = await client.post(url, content=body, headers={"content-type": "application/json", **headers})
        except httpx.HTTPError as exc:
            # The URL stays out of the error: a Slack response_url is a credential of sorts.
            return Attempt(f"{type(exc).__name__}: {str(exc).replace(url, '<target url>')}"[:500], retryable=True)
        status = response.status_code
        if 200 <= status < 300:
            return Attempt(response_status=status)
        return Attempt(f"HTTP {status}", retryable=status in RETRYABLE or status >= 500, response_status=status)

    async def _publish(self, row: asyncpg.Record) -> Attempt:
        if self._registry is None:
            return Attempt("no registry to publish through (REGISTRY_ADDR)")
        capability = CAPABILITY[row["target"]]
        try:
            listed = await self._registry.ListTools(
                registry_pb2.ListToolsRequest(capability=capability, agent_role=DELIVERY_ROLE), timeout=self._timeout
            )
            tools = sorted(listed.tools, key=lambda t: (t.server != self._publishing.server, t.server, t.name))
            if not tools:
                return Attempt(f"no registry tool offers {capability} to the delivery role", retryable=True)
            tool = tools[0]
            values = {"ticket_id": row["ticket_id"], "channel": row["target_ref"], "text": self._text(row)}
            template = self._publishing.ticket_arguments if row["target"] == "jira" else self._publishing.chat_arguments
            arguments = {name: value.format(**values) for name, value in template.items()}
            reply = await self._registry.CallTool(
                registry_pb2.CallToolRequest(
                    server=tool.server,
                    tool=tool.name,
                    arguments=json_format.ParseDict(arguments, struct_pb2.Struct()),
                    investigation_id=str(row["investigation_id"]),
                    agent_role=DELIVERY_ROLE,
                    agent_name="orchestrator",
                    phase="deliver",
                    idempotency_key=f"delivery:{row['id']}:{row['attempts'] + 1}",
                ),
                timeout=self._timeout + 5,
            )
        except grpc.aio.AioRpcError as exc:
            return Attempt(
                f"registry: {exc.code().name}: {exc.details()}"[:500], retryable=exc.code() not in _PERMANENT
            )
        if reply.outcome == registry_pb2.CALL_OUTCOME_OK:
            return Attempt()
        outcome = registry_pb2.CallOutcome.Name(reply.outcome).removeprefix("CALL_OUTCOME_").lower()
        return Attempt(
            f"{tool.server}/{tool.name} ({outcome}, call {reply.call_id}): {reply.error_message}"[:500],
            retryable=reply.outcome != registry_pb2.CALL_OUTCOME_DENIED,
        )

    async def _record(self, conn: asyncpg.Connection, row: asyncpg.Record, outcome: Attempt) -> None:
        attempts = row["attempts"] + 1
        if not outcome.error:
            await conn.execute(
                "UPDATE deliveries SET status = 'delivered', attempts = $2, response_status = $3, last_error = NULL,"
                " delivered_at = now() WHERE id = $1",
                row["id"],
                attempts,
                outcome.response_status,
            )
            return
        final = not outcome.retryable or attempts >= self._max_attempts
        await conn.execute(
            "UPDATE deliveries SET status = $2, attempts = $3, response_status = $4, last_error = $5,"
            " next_attempt_at = now() + make_interval(secs => $6) WHERE id = $1",
            row["id"],
            "failed" if final else "pending",
            attempts,
            outcome.response_status,
            outcome.error,
            self._backoff * 2 ** (attempts - 1),
        )
        log.warning(
            "%s delivery %s for investigation %s: %s",
            row["target"],
            "failed for good" if final else "will be retried",
            row["investigation_id"],
            outcome.error,
            extra={"investigation_id": str(row["investigation_id"]), "attempts": attempts, "target": row["target"]},
        )

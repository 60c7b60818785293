"""gRPC servicer of the ingest service: request metadata and bodies in, replies out.

REST requests arrive through Envoy's transcoder with their HTTP headers as gRPC metadata and
their body untouched in an HttpBody; native gRPC clients fill the typed fields instead. The HTTP
status each reply needs (202, 409, ...) is set as response metadata (pm_grpc.set_http_status).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from google.protobuf.message import Message

from pm.ingest.v1 import ingest_pb2, ingest_pb2_grpc
from pm_auth import CATEGORY_INVESTIGATION, AuthProvider, RateLimiter, rate_limited_error
from pm_errors import NotFound, PmError
from pm_grpc import request_headers, set_http_status
from pm_grpc.http import Context
from pm_ingest.bodies import InvestigateBatchBody, InvestigateBody, parse_body, parse_json_object, validation_failed
from pm_ingest.intake import Caller, Reply, Submissions, check_callback_host, request_digest
from pm_ingest.settings import IngestSettings
from pm_ingest.webhooks import HANDLERS, Inbound, Webhooks
from pm_streams.outbox import OutboxRelay

R = TypeVar("R", bound=Message)


def remote_addr(headers: Mapping[str, str], context: Context) -> str | None:
    """The client address Envoy saw, else the gRPC peer."""
    external = headers.get("x-envoy-external-address")
    if external:
        return external[:100]
    forwarded = headers.get("x-forwarded-for")
    if forwarded:
        return forwarded.split(",")[0].strip()[:100]
    peer = context.peer()
    return peer[:100] if peer else None


def _reply(context: Context, reply: Reply, message_type: type[R]) -> R:
    set_http_status(context, reply.status)
    return message_type(**{k: v for k, v in reply.body.items() if v is not None})


def _typed(fields: Mapping[str, Any]) -> dict[str, Any]:
    """A gRPC request's typed fields as the JSON object a REST client would have sent."""
    return {k: v for k, v in fields.items() if v not in ("", None, [])}


class IngestServicer(ingest_pb2_grpc.IngestServiceServicer):
    """pm.ingest.v1.IngestService."""

    def __init__(
        self,
        settings: IngestSettings,
        auth: AuthProvider,
        limiter: RateLimiter,
        submissions: Submissions,
        webhooks: Webhooks,
        relay: OutboxRelay,
    ) -> None:
        self._settings = settings
        self._auth = auth
        self._limiter = limiter
        self._submissions = submissions
        self._webhooks = webhooks
        self._relay = relay

    async def _submit(
        self,
        context: Context,
        action: str,
        http_body: Any,
        typed: Mapping[str, Any],
        run: Callable[[Caller, dict[str, Any], str, str | None], Awaitable[Reply]],
    ) -> Reply:
        headers = request_headers(context)
        request_id = headers.get("x-request-id")
        addr = remote_addr(headers, context)
        caller = Caller("anonymous", "none", request_id, addr)
        try:
            identity = await self._auth.authenticate(headers)
            caller = Caller.of(identity, request_id, addr)
            decision = await self._limiter.hit(identity.subject, CATEGORY_INVESTIGATION)
            if not decision.allowed:
                raise rate_limited_error(decision)
            if http_body.data or http_body.content_type:
                raw = bytes(http_body.data)
                data = parse_json_object(raw, http_body.content_type)
            else:
                data = _typed(typed)
                raw = json.dumps(data, sort_keys=True).encode()
            idempotency_key = headers.get("idempotency-key")
            if idempotency_key is not None and not 1 <= len(idempotency_key) <= 200:
                raise validation_failed(
                    [{"path": ["Idempotency-Key"], "message": "must be 1 to 200 characters", "code": "invalid_header"}]
                )
            reply = await run(caller, data, request_digest(raw), idempotency_key)
        except PmError as err:
            self._submissions.rejected(caller, "api", action, err)
            raise
        self._relay.notify()
        return reply

    async def Investigate(
        self, request: ingest_pb2.InvestigateRequest, context: Context
    ) -> ingest_pb2.InvestigateResponse:
        async def run(caller: Caller, data: dict[str, Any], digest: str, key: str | None) -> Reply:
            body = parse_body(InvestigateBody, data)
            check_callback_host(body.callback_url, self._settings.callback_hosts)
            return await self._submissions.investigate(
                caller,
                ticket_id=body.ticket_id,
                domain=body.domain,
                mode=body.mode,
                callback_url=body.callback_url,
                idempotency_key=key,
                digest=digest,
                budget=body.budget.limits() if body.budget else None,
            )

        typed = {
            "ticket_id": request.ticket_id,
            "domain": request.domain,
            "mode": request.mode,
            "callback_url": request.callback_url,
            "budget": _budget(request),
        }
        reply = await self._submit(context, "investigate", request.http_body, typed, run)
        return _reply(context, reply, ingest_pb2.InvestigateResponse)

    async def InvestigateBatch(
        self, request: ingest_pb2.InvestigateBatchRequest, context: Context
    ) -> ingest_pb2.InvestigateBatchResponse:
        async def run(caller: Caller, data: dict[str, Any], digest: str, key: str | None) -> Reply:
            body = parse_body(InvestigateBatchBody, data)
            check_callback_host(body.callback_url, self._settings.callback_hosts)
            return await self._submissions.batch(
                caller,
                ticket_ids=body.ticket_ids,
                domain=body.domain,
                mode=body.mode,
                callback_url=body.callback_url,
                idempotency_key=key,
                digest=digest,
                budget=body.budget.limits() if body.budget else None,
            )

        typed = {
            "ticket_ids": list(request.ticket_ids),
            "domain": request.domain,
            "mode": request.mode,
            "callback_url": request.callback_url,
            "budget": _budget(request),
        }
        reply = await self._submit(context, "investigate_batch", request.http_body, typed, run)
        return _reply(context, reply, ingest_pb2.InvestigateBatchResponse)

    def _inbound(self, context: Context, body: Any) -> Inbound:
        headers = request_headers(context)
        return Inbound(
            headers=headers,
            body=bytes(body.data),
            content_type=body.content_type,
            request_id=headers.get("x-request-id"),
            remote_addr=remote_addr(headers, context),
        )

    async def _webhook(
        self, context: Context, handle: Callable[[Inbound], Awaitable[Reply]], body: Any, response: type[R]
    ) -> R:
        reply = await handle(self._inbound(context, body))
        self._relay.notify()
        return _reply(context, reply, response)

    async def ReceiveJiraWebhook(
        self, request: ingest_pb2.ReceiveJiraWebhookRequest, context: Context
    ) -> ingest_pb2.ReceiveJiraWebhookResponse:
        return await self._webhook(context, self._webhooks.jira, request.body, ingest_pb2.ReceiveJiraWebhookResponse)

    async def ReceiveSlackCommand(
        self, request: ingest_pb2.ReceiveSlackCommandRequest, context: Context
    ) -> ingest_pb2.ReceiveSlackCommandResponse:
        return await self._webhook(context, self._webhooks.slack, request.body, ingest_pb2.ReceiveSlackCommandResponse)

    async def ReceivePagerDutyWebhook(
        self, request: ingest_pb2.ReceivePagerDutyWebhookRequest, context: Context
    ) -> ingest_pb2.ReceivePagerDutyWebhookResponse:
        response = ingest_pb2.ReceivePagerDutyWebhookResponse
        return await self._webhook(context, self._webhooks.pagerduty, request.body, response)

    async def ReceiveGrafanaAlert(
        self, request: ingest_pb2.ReceiveGrafanaAlertRequest, context: Context
    ) -> ingest_pb2.ReceiveGrafanaAlertResponse:
        return await self._webhook(
            context, self._webhooks.grafana, request.body, ingest_pb2.ReceiveGrafanaAlertResponse
        )

    async def ReceiveDeployEvent(
        self, request: ingest_pb2.ReceiveDeployEventRequest, context: Context
    ) -> ingest_pb2.ReceiveDeployEventResponse:
        return await self._webhook(context, self._webhooks.deploy, request.body, ingest_pb2.ReceiveDeployEventResponse)

    async def DescribeWebhook(
        self, request: ingest_pb2.DescribeWebhookRequest, context: Context
    ) -> ingest_pb2.DescribeWebhookResponse:
        handler = HANDLERS.get(request.source)
        if handler is None:
            raise NotFound("Unknown webhook source", details={"known": sorted(HANDLERS)})
        return ingest_pb2.DescribeWebhookResponse(status="ok", handler=handler)


def _budget(request: ingest_pb2.InvestigateRequest | ingest_pb2.InvestigateBatchRequest) -> dict[str, Any] | None:
    """A gRPC caller's budget as a request body's (zero means unset)."""
    if not request.HasField("budget"):
        return None
    given = {
        "deadline_seconds": request.budget.deadline_seconds,
        "max_tool_calls": request.budget.max_tool_calls,
        "max_cost_usd": request.budget.max_cost_usd,
    }
    return {k: v for k, v in given.items() if v}

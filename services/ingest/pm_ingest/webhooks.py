"""Webhooks from Jira, Slack, PagerDuty, Grafana and CI/CD: signatures over the exact bytes
received, the predecessor's filters and answers, race-free dedup.

Every source authenticates by signature with a secret read from Vault or the environment; a
source without a configured secret is refused (503, naming the variable) unless it is listed in
WEBHOOK_INSECURE_SOURCES for local use. Every rejection is counted by source and reason and
audited, and never echoes a secret.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs

from google.protobuf.timestamp_pb2 import Timestamp
from prometheus_client import CollectorRegistry, Counter

from pm.events.v1 import events_pb2
from pm_auth import CachedSecrets
from pm_errors import InvalidArgument, PmError, Unauthenticated, Unavailable
from pm_ingest import signatures
from pm_ingest.bodies import parse_json_object, validation_failed
from pm_ingest.intake import PRIORITY_ALERT, PRIORITY_TICKET, Caller, Reply, request_digest
from pm_ingest.settings import IngestSettings
from pm_ingest.store import ActiveConflict, AlertDuplicate, Audit, AuditLog, DomainResolver, IntakeStore, StoredResponse
from pm_intake import new_investigation
from pm_streams import STREAM_DEPLOYS

log = logging.getLogger(__name__)

SOURCE_LABELS = {
    "jira": "Jira webhook",
    "slack": "Slack integration",
    "pagerduty": "PagerDuty webhook",
    "grafana-alert": "Grafana alert webhook",
    "deploy": "Deploy webhook",
}
SECRET_VARIABLES = {
    "jira": "JIRA_WEBHOOK_SECRET",
    "slack": "SLACK_SIGNING_SECRET",
    "pagerduty": "PAGERDUTY_WEBHOOK_SECRET",
    "grafana-alert": "GRAFANA_WEBHOOK_SECRET or GRAFANA_WEBHOOK_TOKEN",
    "deploy": "DEPLOY_WEBHOOK_SECRET",
}
HANDLERS = {
    "jira": "jira-webhook",
    "slack": "slack-webhook",
    "pagerduty": "pagerduty-webhook",
    "grafana-alert": "grafana-alert-webhook",
    "deploy": "cicd-deploy-webhook",
}

_JIRA_KEY = re.compile(r"^[A-Za-z][A-Za-z0-9_]*-[0-9]{1,12}$")
_SLACK_TICKET = re.compile(r"^\s*([A-Za-z][A-Za-z0-9_]*-[0-9]{1,12})\b")
_SLUG = re.compile(r"\s+")


def _slug(value: str) -> str:
    return _SLUG.sub("-", value.strip().lower())[:200]


def _obj(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _str(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


class WebhookRejected(PmError):
    """A webhook refused before its content was looked at (signature, configuration)."""


@dataclass(frozen=True, slots=True)
class Inbound:
    """One webhook request as received."""

    headers: Mapping[str, str]
    body: bytes
    content_type: str
    request_id: str | None
    remote_addr: str | None


class Webhooks:
    """The five webhook endpoints."""

    def __init__(
        self,
        settings: IngestSettings,
        store: IntakeStore,
        audit: AuditLog,
        secrets: CachedSecrets,
        domains: DomainResolver,
        registry: CollectorRegistry,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._settings = settings
        self._store = store
        self._audit = audit
        self._secrets = secrets
        self._domains = domains
        self._clock = clock
        self.rejections = Counter(
            "pm_webhook_rejections",
            "Webhook requests refused, by source and reason.",
            ["source", "reason"],
            registry=registry,
        )
        self.decisions = Counter(
            "pm_webhook_requests",
            "Webhook requests that passed authentication, by source and outcome.",
            ["source", "outcome"],
            registry=registry,
        )

    # -- authentication ---------------------------------------------------------------------

    def _reject(self, source: str, reason: str, inbound: Inbound, err: PmError) -> PmError:
        self.rejections.labels(source, reason).inc()
        log.warning("webhook rejected", extra={"source": source, "reason": reason, "remote_addr": inbound.remote_addr})
        self._audit.record(
            Audit(
                identity=f"webhook:{source}",
                auth_method="none",
                source=source,
                action="webhook",
                outcome="rejected",
                reason=reason,
                request_id=inbound.request_id,
                remote_addr=inbound.remote_addr,
            ),
            datetime.now(UTC),
        )
        return err

    # Each verifier returns True when the source has a secret configured (and the signature
    # matched), False when it has none; a bad signature raises SignatureRejected.

    async def _verify_jira(self, inbound: Inbound) -> bool:
        secret = await self._secrets.get("jira-webhook-secret")
        if secret:
            signatures.verify_hex_signature(secret.encode(), inbound.body, inbound.headers.get("x-hub-signature"))
        return bool(secret)

    async def _verify_slack(self, inbound: Inbound) -> bool:
        secret = await self._secrets.get("slack-signing-secret")
        if secret:
            ts, sig = inbound.headers.get("x-slack-request-timestamp"), inbound.headers.get("x-slack-signature")
            if not ts or not sig:
                raise self._reject(
                    "slack",
                    signatures.REASON_MISSING_HEADER,
                    inbound,
                    InvalidArgument("Missing Slack signature headers"),
                )
            signatures.verify_slack(
                secret.encode(),
                inbound.body,
                ts,
                sig,
                now=self._clock(),
                tolerance_seconds=self._settings.slack_timestamp_tolerance_seconds,
            )
        return bool(secret)

    async def _verify_pagerduty(self, inbound: Inbound) -> bool:
        secret = await self._secrets.get("pagerduty-webhook-secret")
        if secret:
            signatures.verify_pagerduty(secret.encode(), inbound.body, inbound.headers.get("x-pagerduty-signature"))
        return bool(secret)

    async def _verify_grafana(self, inbound: Inbound) -> bool:
        secret = await self._secrets.get("grafana-webhook-secret")
        token = await self._secrets.get("grafana-webhook-token")
        signature = inbound.headers.get(self._settings.grafana_signature_header.lower())
        if secret and (signature is not None or not token):
            signatures.verify_grafana_hmac(
                secret.encode(),
                inbound.body,
                signature,
                inbound.headers.get(self._settings.grafana_timestamp_header.lower()),
                now=self._clock(),
                tolerance_seconds=self._settings.slack_timestamp_tolerance_seconds,
            )
        elif token:
            signatures.verify_bearer_token(token, inbound.headers.get("authorization"))
        return bool(secret or token)

    async def _verify_deploy(self, inbound: Inbound) -> bool:
        secret = await self._secrets.get("deploy-webhook-secret")
        if secret:
            signatures.verify_hex_signature(
                secret.encode(),
                inbound.body,
                inbound.headers.get(self._settings.deploy_signature_header.lower()),
                prefix_required=True,
            )
        return bool(secret)

    async def _authenticate(self, source: str, inbound: Inbound) -> str:
        """Verify the source's signature; returns the audit auth method ("signature" or "insecure")."""
        verify = {
            "jira": self._verify_jira,
            "slack": self._verify_slack,
            "pagerduty": self._verify_pagerduty,
            "grafana-alert": self._verify_grafana,
            "deploy": self._verify_deploy,
        }[source]
        try:
            if await verify(inbound):
                return "signature"
        except signatures.SignatureRejected as exc:
            message = "Invalid request signature" if source == "slack" else "Invalid webhook signature"
            if exc.reason == signatures.REASON_STALE:
                message = exc.message
            raise self._reject(source, exc.reason, inbound, Unauthenticated(message)) from None
        if source in self._settings.insecure_sources:
            return "insecure"
        label = SOURCE_LABELS[source]
        message = (
            f"{label} not configured"
            if source == "slack"
            else f"{label} not configured: set {SECRET_VARIABLES[source]} (or list '{source}' in "
            "WEBHOOK_INSECURE_SOURCES for local use)"
        )
        raise self._reject(source, "not_configured", inbound, Unavailable(message))

    async def _json(self, source: str, inbound: Inbound) -> dict[str, Any]:
        try:
            return parse_json_object(inbound.body, inbound.content_type)
        except PmError as err:
            raise self._reject(source, "invalid_body", inbound, err) from None

    def _caller(self, source: str, method: str, inbound: Inbound) -> Caller:
        return Caller(f"webhook:{source}", method, inbound.request_id, inbound.remote_addr)

    def _done(self, source: str, outcome: str, reply: Reply) -> Reply:
        self.decisions.labels(source, outcome).inc()
        return reply

    async def _once(
        self, source: str, delivery_id: str | None, inbound: Inbound, handle: Callable[[], Awaitable[Reply]]
    ) -> Reply:
        """Run `handle` unless this delivery id was seen; a retry gets the first answer."""
        if not delivery_id:
            return await handle()
        key = f"{source}:delivery:{delivery_id[:200]}"
        digest = request_digest(inbound.body)
        async with self._store.transaction() as intake:
            replay = await intake.replayed(key, source, digest, self._settings.delivery_dedup_window_seconds)
            if replay is not None:
                self.decisions.labels(source, "replayed").inc()
                return Reply(replay.status, replay.body)
        try:
            reply = await handle()
        except BaseException:
            # Refused or failed: nothing was recorded, so the sender's retry is handled afresh.
            async with self._store.autocommit() as intake:
                await intake.forget(key)
            raise
        async with self._store.autocommit() as intake:
            await intake.remember(key, StoredResponse(digest, reply.status, reply.body), None)
        return reply

    # -- Jira -------------------------------------------------------------------------------

    async def _signed_json(
        self,
        source: str,
        inbound: Inbound,
        delivery_header: str,
        handle: Callable[[dict[str, Any], str, Inbound], Awaitable[Reply]],
    ) -> Reply:
        """Verify, parse a JSON object, then handle it once per sender delivery id."""
        method = await self._authenticate(source, inbound)
        payload = await self._json(source, inbound)

        async def once() -> Reply:
            return await handle(payload, method, inbound)

        return await self._once(source, inbound.headers.get(delivery_header), inbound, once)

    async def jira(self, inbound: Inbound) -> Reply:
        """issue_created, or issue_updated that adds the trigger label."""
        return await self._signed_json("jira", inbound, "x-atlassian-webhook-identifier", self._jira)

    def _jira_ignored(self, payload: dict[str, Any]) -> str | None:
        """Why a Jira event starts nothing, or None when it does."""
        event = payload.get("webhookEvent")
        if not isinstance(event, str) or not event:
            return "no webhookEvent field"
        if event == "jira:issue_updated":
            if not self._label_added(payload):
                return f"issue_updated without the {self._settings.jira_trigger_label} label being added"
        elif event != "jira:issue_created":
            return f"event type {event[:100]} not handled"
        issue = payload.get("issue")
        if not isinstance(issue, dict) or issue.get("key") in (None, ""):
            return "missing issue.key"
        return None

    async def _jira(self, payload: dict[str, Any], method: str, inbound: Inbound) -> Reply:
        ignored = self._jira_ignored(payload)
        if ignored is not None:
            return self._done("jira", "ignored", Reply(200, {"status": "ignored", "reason": ignored}))
        event = str(payload["webhookEvent"])
        key = payload["issue"]["key"]
        if not isinstance(key, str) or not _JIRA_KEY.match(key):
            problem: dict[str, object] = {
                "path": ["issue", "key"],
                "message": "issue.key must look like PROJ-123",
                "code": "invalid_issue_key",
            }
            raise self._reject("jira", "invalid_body", inbound, validation_failed([problem]))
        ticket = key.upper()
        project = ticket.rpartition("-")[0]
        projects = self._settings.jira_projects
        if projects and project not in projects:
            return self._done(
                "jira", "ignored", Reply(200, {"status": "ignored", "reason": f"project {project} not in filter"})
            )
        domain = await self._domains.for_jira_project(project) or project.lower()
        user = _obj(payload.get("user"))
        requester = _str(user.get("displayName")) or _str(user.get("accountId")) or "jira"
        inv = new_investigation(
            ticket_id=ticket,
            domain=domain,
            mode="balanced",
            trigger_source="jira_webhook",
            priority=PRIORITY_TICKET,
            requested_by=f"jira:{requester[:100]}",
            trigger_context={"jira": {"event": event, "project": project}},
        )
        caller = self._caller("jira", method, inbound)
        try:
            async with self._store.autocommit() as intake:
                await intake.create([inv], caller.audit("jira", "webhook", "accepted", details={"ticket_id": ticket}))
        except ActiveConflict as exc:
            existing = str(exc.active[0].investigation_id) if exc.active else None
            return self._done(
                "jira", "deduplicated", Reply(200, {"status": "deduplicated", "existing_investigation_id": existing})
            )
        # Jira auto-assignment needs the Jira tools of the registry; until they are wired it is skipped.
        return self._done(
            "jira",
            "accepted",
            Reply(
                200,
                {"status": "accepted", "investigation_id": str(inv.id), "ticket_id": ticket, "assignment": "skipped"},
            ),
        )

    def _label_added(self, payload: dict[str, Any]) -> bool:
        label = self._settings.jira_trigger_label
        changelog = payload.get("changelog")
        items = changelog.get("items") if isinstance(changelog, dict) else None
        if not isinstance(items, list):
            return False
        for item in items:
            if not isinstance(item, dict) or item.get("field") != "labels":
                continue
            before = str(item.get("fromString") or "").split()
            after = str(item.get("toString") or "").split()
            if label in after and label not in before:
                return True
        return False

    # -- Slack ------------------------------------------------------------------------------

    async def slack(self, inbound: Inbound) -> Reply:
        """`/investigate KEY-123`: ephemeral replies; the result is posted to response_url later."""
        method = await self._authenticate("slack", inbound)
        if inbound.content_type and not inbound.content_type.lower().startswith("application/x-www-form-urlencoded"):
            raise self._reject(
                "slack", "invalid_body", inbound, InvalidArgument("Expected a form-encoded slash command")
            )
        try:
            form = {k: v[0] for k, v in parse_qs(inbound.body.decode("utf-8"), keep_blank_values=True).items()}
        except (UnicodeDecodeError, ValueError):
            raise self._reject("slack", "invalid_body", inbound, InvalidArgument("Malformed form body")) from None
        command = form.get("command", "/investigate")[:50]
        match = _SLACK_TICKET.match(form.get("text", ""))
        if match is None:
            usage = f"Usage: {command} TICKET-123 — starts an investigation of the ticket and posts the result here."
            return self._done("slack", "usage", Reply(200, {"response_type": "ephemeral", "text": usage}))
        ticket = match.group(1).upper()
        user = form.get("user_name") or form.get("user_id") or "slack-user"
        context = {
            "response_url": form.get("response_url", ""),
            "channel_id": form.get("channel_id", ""),
            "channel_name": form.get("channel_name", ""),
            "user_id": form.get("user_id", ""),
            "user_name": form.get("user_name", ""),
            "command": command,
        }
        event = events_pb2.InvestigationRequested(slack=events_pb2.SlackContext(**context))
        inv = new_investigation(
            ticket_id=ticket,
            domain=None,
            mode="balanced",
            trigger_source="slack_command",
            priority=PRIORITY_TICKET,
            requested_by=f"slack:{user[:100]}",
            trigger_context={"slack": context},
            event_context=event,
        )
        caller = self._caller("slack", method, inbound)
        try:
            async with self._store.autocommit() as intake:
                await intake.create(
                    [inv], caller.audit("slack", "slash_command", "accepted", details={"ticket_id": ticket})
                )
        except ActiveConflict as exc:
            if not exc.active:
                raise
            active = exc.active[0]
            text = f":mag: Investigation for *{ticket}* is already {active.status} (ID: `{active.investigation_id}`)."
            return self._done("slack", "deduplicated", Reply(200, {"response_type": "ephemeral", "text": text}))
        text = f":rocket: Investigation started for *{ticket}* (ID: `{inv.id}`).\nI'll post results here when done."
        return self._done("slack", "accepted", Reply(200, {"response_type": "ephemeral", "text": text}))

    # -- PagerDuty --------------------------------------------------------------------------

    async def pagerduty(self, inbound: Inbound) -> Reply:
        """incident.triggered with high urgency; one investigation per incident inside the window."""
        return await self._signed_json("pagerduty", inbound, "x-webhook-id", self._pagerduty)

    async def _pagerduty(self, payload: dict[str, Any], method: str, inbound: Inbound) -> Reply:
        event = payload.get("event")
        if not isinstance(event, dict):
            raise self._reject("pagerduty", "invalid_body", inbound, InvalidArgument("Missing event in payload"))
        event_type = event.get("event_type")
        data = _obj(event.get("data"))
        if event_type != "incident.triggered":
            return self._done(
                "pagerduty",
                "ignored",
                Reply(200, {"status": "ignored", "reason": f"event type {str(event_type)[:100]} not handled"}),
            )
        urgency = data.get("urgency")
        if urgency != "high":
            return self._done(
                "pagerduty",
                "ignored",
                Reply(200, {"status": "ignored", "reason": f"urgency {str(urgency)[:20]} is not high"}),
            )
        incident_id = _str(data.get("id"))
        number = data.get("number")
        if incident_id is None and not isinstance(number, int):
            raise self._reject(
                "pagerduty", "invalid_body", inbound, InvalidArgument("Missing incident id in event.data")
            )
        ticket = f"PD-{number}" if isinstance(number, int) and not isinstance(number, bool) else f"PD-{incident_id}"
        service = _obj(data.get("service"))
        service_name = _str(service.get("summary")) or _str(service.get("name")) or ""
        domain = (await self._domains.for_service(service_name) if service_name else None) or (
            _slug(service_name) if service_name else None
        )
        context = events_pb2.PagerDutyContext(
            incident_id=incident_id or "",
            incident_number=number
            if isinstance(number, int) and not isinstance(number, bool) and 0 <= number < 2**31
            else 0,
            incident_title=(_str(data.get("title")) or "")[:500],
            incident_url=(_str(data.get("html_url")) or "")[:2000],
            service_id=_str(service.get("id")) or "",
            service_name=service_name[:200],
            urgency="high",
        )
        occurred = _parse_time(event.get("occurred_at"))
        if occurred is not None:
            context.occurred_at.FromDatetime(occurred)
        inv = new_investigation(
            ticket_id=ticket[:200],
            domain=domain,
            mode="fast",
            trigger_source="pagerduty",
            priority=PRIORITY_ALERT,
            requested_by="pagerduty",
            trigger_context={
                "pagerduty": {"incident_id": incident_id, "service": service_name, "title": context.incident_title}
            },
            event_context=events_pb2.InvestigationRequested(pagerduty=context),
        )
        caller = self._caller("pagerduty", method, inbound)
        fingerprint = f"pagerduty:incident:{incident_id or ticket}"
        try:
            async with self._store.autocommit() as intake:
                audit = caller.audit("pagerduty", "webhook", "accepted", details={"ticket_id": ticket})
                await intake.create_alert(
                    inv, audit, fingerprint, "pagerduty", self._settings.alert_dedup_window_seconds
                )
        except (ActiveConflict, AlertDuplicate) as exc:
            existing = (
                exc.investigation_id
                if isinstance(exc, AlertDuplicate)
                else (exc.active[0].investigation_id if exc.active else None)
            )
            body = {
                "status": "duplicate",
                "investigation_id": str(existing) if existing else None,
                "ticket_id": ticket,
                "message": "An investigation already exists for this incident",
            }
            return self._done("pagerduty", "duplicate", Reply(200, body))
        body = {
            "investigation_id": str(inv.id),
            "ticket_id": ticket,
            "domain": domain,
            "status": "queued",
            "message": "Investigation queued for PagerDuty incident",
        }
        return self._done("pagerduty", "accepted", Reply(202, body))

    # -- Grafana ----------------------------------------------------------------------------

    async def grafana(self, inbound: Inbound) -> Reply:
        """Each firing alert on its own, with a result per alert."""
        method = await self._authenticate("grafana-alert", inbound)
        payload = await self._json("grafana-alert", inbound)
        alerts = payload.get("alerts")
        if not isinstance(alerts, list):
            return self._done(
                "grafana-alert", "ignored", Reply(200, {"status": "ignored", "reason": "No alerts in payload"})
            )
        results: list[dict[str, Any]] = []
        for alert in alerts[:100]:
            results.append(await self._grafana_alert(alert, method, inbound))
        counts = {
            s: sum(1 for r in results if r["status"] == s) for s in ("triggered", "skipped", "deduplicated", "error")
        }
        body = {
            "status": "processed",
            "total": len(results),
            "triggered": counts["triggered"],
            "skipped": counts["skipped"] + counts["deduplicated"],
            "errors": counts["error"],
            "results": results,
        }
        return self._done("grafana-alert", "processed", Reply(200, body))

    async def _grafana_alert(self, alert: object, method: str, inbound: Inbound) -> dict[str, Any]:
        if not isinstance(alert, dict):
            return {"alert": "", "service": "", "status": "skipped", "reason": "alert is not an object"}
        labels = (
            {str(k): str(v) for k, v in alert.get("labels", {}).items()}
            if isinstance(alert.get("labels"), dict)
            else {}
        )
        annotations = (
            {str(k): str(v) for k, v in alert.get("annotations", {}).items()}
            if isinstance(alert.get("annotations"), dict)
            else {}
        )
        name = labels.get("alertname", "")[:200]
        service = (labels.get("service") or labels.get("job") or "")[:200]
        result: dict[str, Any] = {"alert": name, "service": service}
        if alert.get("status") != "firing":
            return {**result, "status": "skipped", "reason": f"status {str(alert.get('status'))[:20]} is not firing"}
        if not service:
            return {**result, "status": "skipped", "reason": "no service or job label"}
        fingerprint = (
            _str(alert.get("fingerprint"))
            or hashlib.sha256(json.dumps(sorted(labels.items())).encode()).hexdigest()[:16]
        )
        fingerprint = re.sub(r"[^A-Za-z0-9_.-]", "", fingerprint)[:64] or "unknown"
        ticket = f"GRAFANA-{fingerprint}"
        domain = await self._domains.for_service(service) or _slug(service)
        dashboard = _str(alert.get("dashboardURL")) or labels.get("dashboard_url", "")
        context = events_pb2.GrafanaContext(
            alert_name=name,
            service_name=service,
            dashboard_url=dashboard[:2000],
            alert_status="firing",
            fingerprint=fingerprint,
            labels=labels,
            annotations=annotations,
        )
        values = alert.get("values")
        if isinstance(values, dict):
            for k, v in values.items():
                if isinstance(v, int | float) and not isinstance(v, bool):
                    context.values[str(k)] = float(v)
        starts = _parse_time(alert.get("startsAt"))
        if starts is not None:
            context.starts_at.FromDatetime(starts)
        inv = new_investigation(
            ticket_id=ticket,
            domain=domain,
            mode="fast",
            trigger_source="grafana_alert",
            priority=PRIORITY_ALERT,
            requested_by="grafana",
            trigger_context={"grafana": {"alert": name, "service": service, "fingerprint": fingerprint}},
            event_context=events_pb2.InvestigationRequested(grafana=context),
        )
        caller = self._caller("grafana-alert", method, inbound)
        try:
            async with self._store.autocommit() as intake:
                audit = caller.audit("grafana-alert", "webhook", "accepted", details={"ticket_id": ticket})
                await intake.create_alert(
                    inv, audit, f"grafana:{fingerprint}", "grafana-alert", self._settings.alert_dedup_window_seconds
                )
        except (AlertDuplicate, ActiveConflict) as exc:
            if isinstance(exc, AlertDuplicate):
                reason, existing = "alert already investigated inside its window", exc.investigation_id
            else:
                reason = "an investigation is already active"
                existing = exc.active[0].investigation_id if exc.active else None
            return {**result, "status": "deduplicated", "reason": reason, "investigation_id": str(existing or "")}
        except Exception:  # - one alert's failure must not sink the others
            log.exception("grafana alert %s failed", fingerprint)
            return {**result, "status": "error", "reason": "Internal processing error"}
        return {**result, "status": "triggered", "investigation_id": str(inv.id)}

    # -- CI/CD deploys ----------------------------------------------------------------------

    async def deploy(self, inbound: Inbound) -> Reply:
        """Record a deploy and schedule its post-deploy check."""
        method = await self._authenticate("deploy", inbound)
        payload = await self._json("deploy", inbound)
        problems: list[dict[str, object]] = []
        for required in ("service", "version"):
            value = payload.get(required)
            if not isinstance(value, str) or not value.strip() or len(value) > 200:
                problems.append(
                    {"path": [required], "message": "Required non-empty string (max 200)", "code": "invalid_type"}
                )
        optional = ("deployer", "environment", "pipeline_url", "commit_url", "commit_sha", "deployed_at", "delivery_id")
        for name in optional:
            if name in payload and payload[name] is not None and not isinstance(payload[name], str):
                problems.append({"path": [name], "message": "Expected a string", "code": "invalid_type"})
        if "metadata" in payload and payload["metadata"] is not None and not isinstance(payload["metadata"], dict):
            problems.append({"path": ["metadata"], "message": "Expected an object", "code": "invalid_type"})
        deployed_at = datetime.now(UTC)
        if isinstance(payload.get("deployed_at"), str):
            parsed = _parse_time(payload["deployed_at"])
            if parsed is None:
                problems.append(
                    {"path": ["deployed_at"], "message": "Expected an ISO 8601 timestamp", "code": "invalid_date"}
                )
            else:
                deployed_at = parsed
        if problems:
            raise self._reject("deploy", "invalid_body", inbound, validation_failed(problems))
        service = payload["service"].strip()
        version = payload["version"].strip()
        environment = (_str(payload.get("environment")) or "production").lower()[:100]
        allowed = self._settings.deploy_environment_filter
        if allowed and environment not in allowed:
            reason = f"environment {environment} is not checked (DEPLOY_ENVIRONMENTS)"
            return self._done("deploy", "ignored", Reply(200, {"status": "ignored", "reason": reason}))
        delivery = inbound.headers.get(self._settings.deploy_delivery_header.lower()) or _str(
            payload.get("delivery_id")
        )
        domain = await self._domains.for_service(service) or _slug(service)
        delay_ms = self._settings.post_deploy_check_delay_ms
        deploy_id = uuid.uuid4()
        check_at = datetime.now(UTC) + timedelta(milliseconds=delay_ms)
        context = events_pb2.DeployContext(
            service=service,
            version=version,
            environment=environment,
            deployer=(_str(payload.get("deployer")) or "unknown")[:200],
            commit_sha=(_str(payload.get("commit_sha")) or "")[:100],
            pipeline_url=(_str(payload.get("pipeline_url")) or "")[:2000],
            commit_url=(_str(payload.get("commit_url")) or "")[:2000],
        )
        context.deployed_at.FromDatetime(deployed_at)
        check_ts = Timestamp()
        check_ts.FromDatetime(check_at)
        event_id = uuid.uuid4()
        event = events_pb2.DeployRecorded(
            event_id=str(event_id), deploy_id=str(deploy_id), deploy=context, domain=domain, check_at=check_ts
        )
        record = {
            "id": deploy_id,
            "service": service,
            "version": version,
            "environment": environment,
            "deployer": context.deployer,
            "deployed_at": deployed_at,
            "commit_sha": context.commit_sha or None,
            "pipeline_url": context.pipeline_url or None,
            "commit_url": context.commit_url or None,
            "domain": domain,
            "metadata": payload.get("metadata") or {},
            "delivery_id": delivery[:200] if delivery else None,
            "check_due_at": check_at,
        }
        caller = self._caller("deploy", method, inbound)
        audit = caller.audit("deploy", "webhook", "accepted", details={"service": service, "version": version})
        async with self._store.autocommit() as intake:
            recorded = await intake.record_deploy(record, audit, event.SerializeToString(), event_id, STREAM_DEPLOYS)
        body = {
            "status": "accepted" if recorded else "duplicate",
            "service": service,
            "version": version,
            "domain": domain,
            "health_check_delay_ms": delay_ms,
            "message": f"Deploy recorded. Health check scheduled in {delay_ms // 1000}s."
            if recorded
            else "Deploy already recorded for this delivery.",
        }
        return self._done("deploy", "accepted" if recorded else "duplicate", Reply(200, body))


def _parse_time(value: object) -> datetime | None:
    if not isinstance(value, str) or not value or len(value) > 64:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)

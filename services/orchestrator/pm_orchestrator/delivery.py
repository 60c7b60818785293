"""Delivery of a finished investigation to its callback URL: a signed JSON POST, once.

When an investigation completes or fails and has a `callback_url`, the engine records a
`deliveries` row in the same transaction (one per investigation and URL). This loop sends the
pending ones:

- body (the predecessor's fields, plus the error of a failed one):
  `{investigation_id, ticket_id, status, verdict, confidence, summary, error, report_url}`;
- headers: `Idempotency-Key: <delivery id>` (the same on every attempt), `X-PM-Timestamp` (unix
  seconds) and, when the secret `callback-signing-secret` is set (Vault, else
  CALLBACK_SIGNING_SECRET), `X-PM-Signature: sha256=<hex HMAC-SHA256 of "<timestamp>.<body>">`;
- a 2xx answer delivers it; 408, 429, 5xx and network errors are retried with backoff (2 s,
  4 s, 8 s ...) up to `max_attempts`; any other answer fails it at once. Rows are claimed with
  FOR UPDATE SKIP LOCKED, so replicas never send one twice at the same time.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
from typing import Any

import asyncpg
import httpx

from pm_secrets import SecretSource

log = logging.getLogger(__name__)

SIGNING_SECRET = "callback-signing-secret"
RETRYABLE = {408, 429}

_CLAIM = """
SELECT d.id, d.target_ref, d.attempts, i.id AS investigation_id, i.ticket_id, i.status, i.verdict, i.confidence,
       i.summary, i.error
FROM deliveries d JOIN investigations i ON i.id = d.investigation_id
WHERE d.status = 'pending' AND d.target = 'callback' AND d.next_attempt_at <= now()
ORDER BY d.next_attempt_at
LIMIT $1
FOR UPDATE OF d SKIP LOCKED
"""


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """The X-PM-Signature value for `body` sent at `timestamp`."""
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def payload(row: asyncpg.Record) -> dict[str, Any]:
    investigation_id = str(row["investigation_id"])
    return {
        "investigation_id": investigation_id,
        "ticket_id": row["ticket_id"],
        "status": row["status"],
        "verdict": row["verdict"],
        "confidence": float(row["confidence"]) if row["confidence"] is not None else None,
        "summary": row["summary"],
        "error": row["error"],
        "report_url": f"/api/v1/investigations/{investigation_id}/report",
    }


class CallbackSender:
    """Sends due callback deliveries until cancelled."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        secrets: SecretSource,
        *,
        max_attempts: int = 5,
        timeout_seconds: float = 10.0,
        backoff_seconds: float = 2.0,
        poll_seconds: float = 1.0,
    ) -> None:
        self._pool = pool
        self._secrets = secrets
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
                    log.warning("callback delivery: %s", exc)
                await asyncio.sleep(self._poll)

    async def send_due(self, client: httpx.AsyncClient, batch: int = 20) -> int:
        """Send what is due; returns how many were attempted."""
        secret = await self._secrets.get(SIGNING_SECRET)
        async with self._pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(_CLAIM, batch)
            for row in rows:
                await self._attempt(conn, client, row, secret.get_secret_value() if secret else "")
        return len(rows)

    async def _attempt(
        self, conn: asyncpg.Connection, client: httpx.AsyncClient, row: asyncpg.Record, secret: str
    ) -> None:
        body = json.dumps(payload(row), sort_keys=True).encode()
        timestamp = str(int(time.time()))
        headers = {"content-type": "application/json", "idempotency-key": str(row["id"]), "x-pm-timestamp": timestamp}
        if secret:
            headers["x-pm-signature"] = signature(secret, timestamp, body)
        attempts = row["attempts"] + 1
        status: int | None = None
        try:
            response = await client.post(row["target_ref"], content=body, headers=headers)
            status = response.status_code
            error = "" if 200 <= status < 300 else f"HTTP {status}"
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"[:500]
        if not error:
            await conn.execute(
                "UPDATE deliveries SET status = 'delivered', attempts = $2, response_status = $3, last_error = NULL,"
                " delivered_at = now() WHERE id = $1",
                row["id"],
                attempts,
                status,
            )
            return
        retryable = status is None or status in RETRYABLE or status >= 500
        final = not retryable or attempts >= self._max_attempts
        await conn.execute(
            "UPDATE deliveries SET status = $2, attempts = $3, response_status = $4, last_error = $5,"
            " next_attempt_at = now() + make_interval(secs => $6) WHERE id = $1",
            row["id"],
            "failed" if final else "pending",
            attempts,
            status,
            error,
            self._backoff * 2 ** (attempts - 1),
        )
        log.warning(
            "callback %s for investigation %s: %s",
            "failed for good" if final else "will be retried",
            row["investigation_id"],
            error,
            extra={"investigation_id": str(row["investigation_id"]), "attempts": attempts},
        )

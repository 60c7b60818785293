"""What every public servicer of the orchestrator shares: authentication and rate limits like
intake, id and paging checks with the predecessor's 400s, and the audit trail of writes.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping

import asyncpg

from pm.common.v1 import types_pb2
from pm_auth import CATEGORY_QUERY, AuthProvider, Identity, RateLimiter, rate_limited_error
from pm_grpc import request_headers
from pm_grpc.bodies import problem, validation_failed
from pm_grpc.http import Context

MAX_PAGE_SIZE = 100


class ApiBase:
    """Holds the pool and the access checks; subclasses add the RPCs."""

    def __init__(self, pool: asyncpg.Pool, auth: AuthProvider, limiter: RateLimiter) -> None:
        self._pool = pool
        self._auth = auth
        self._limiter = limiter

    async def _identity(self, context: Context, category: str = CATEGORY_QUERY) -> Identity:
        identity = await self._auth.authenticate(request_headers(context))
        decision = await self._limiter.hit(identity.subject, category)
        if not decision.allowed:
            raise rate_limited_error(decision)
        return identity

    async def _caller(self, context: Context, category: str = CATEGORY_QUERY) -> str:
        return (await self._identity(context, category)).subject


def parse_id(value: str, what: str) -> uuid.UUID:
    """A path id, or 400 {"error": "Invalid <what> id"}."""
    try:
        return uuid.UUID(value)
    except ValueError:
        raise validation_failed([problem(["id"], f"Invalid {what} id", "invalid_uuid")]) from None


def paging(page: int, limit: int) -> tuple[int, int]:
    """(page, limit) with the predecessor's defaults (1, 20) and bounds (page >= 1, limit 1..100)."""
    page = page or 1
    limit = limit or 20
    problems = []
    if page < 1:
        problems.append(problem(["page"], "must be at least 1", "too_small"))
    if not 1 <= limit <= MAX_PAGE_SIZE:
        problems.append(problem(["limit"], f"must be between 1 and {MAX_PAGE_SIZE}", "out_of_range"))
    if problems:
        raise validation_failed(problems)
    return page, limit


def pagination(page: int, limit: int, total: int) -> types_pb2.Pagination:
    return types_pb2.Pagination(page=page, limit=limit, total=total, total_pages=-(-total // limit))


async def fetch_page(
    pool: asyncpg.Pool,
    table: str,
    filters: Mapping[str, object],
    page: int,
    limit: int,
    *,
    columns: str = "*",
    order: str = "created_at DESC, id",
) -> tuple[list[asyncpg.Record], types_pb2.Pagination]:
    """One page of `table`'s rows matching every filter given (column = value; empty values are
    no filter), in `order`, and the pagination of all that match. Table, columns and order are
    the caller's constants; only the values come from the request, always as parameters."""
    given = [(column, value) for column, value in filters.items() if value not in (None, "")]
    clause = " AND ".join(f"{column} = ${n}" for n, (column, _) in enumerate(given, 1)) or "true"
    values = [value for _, value in given]
    total = await pool.fetchval(f"SELECT count(*) FROM {table} WHERE {clause}", *values)
    rows = await pool.fetch(
        f"SELECT {columns} FROM {table} WHERE {clause} ORDER BY {order}"
        f" LIMIT ${len(values) + 1} OFFSET ${len(values) + 2}",
        *values,
        limit,
        (page - 1) * limit,
    )
    return list(rows), pagination(page, limit, int(total))


async def audit(
    conn: asyncpg.Connection,
    identity: Identity,
    context: Context,
    action: str,
    resource_type: str,
    resource_id: object,
    details: Mapping[str, object] | None = None,
) -> None:
    """Record an accepted write in audit_log, in the caller's transaction."""
    headers = request_headers(context)
    await conn.execute(
        "INSERT INTO audit_log (identity, auth_method, source, action, resource_type, resource_id, outcome,"
        " request_id, remote_addr, details) VALUES ($1, $2, 'api', $3, $4, $5, 'accepted', $6, $7, $8)",
        identity.subject,
        identity.method,
        action,
        resource_type,
        str(resource_id),
        headers.get("x-request-id"),
        headers.get("x-forwarded-for", "").split(",")[0].strip() or None,
        dict(details or {}),
    )

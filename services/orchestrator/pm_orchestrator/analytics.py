"""Accuracy and calibration from feedback; spending per period and per investigation.

Each rated investigation counts once, judged by its latest feedback (in the requested window):
a second opinion replaces the first rather than counting twice. Only `accurate` counts as
correct; `partially_accurate` is reported but counts as not correct.

Calibration compares the confidence an investigation stated with how often such statements
were right, in the predecessor's brackets [0, 0.5), [0.5, 0.6), ... [0.9, 1.0]. A bracket's
calibration_score is |mean stated confidence - observed accuracy|; the expected calibration
error (ECE) is those gaps weighted by the share of predictions in each bracket.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from pm.analytics.v1 import analytics_pb2, analytics_pb2_grpc
from pm.common.v1 import types_pb2
from pm_auth import AuthProvider, RateLimiter
from pm_errors import NotFound
from pm_grpc.bodies import problem, validation_failed
from pm_grpc.http import Context
from pm_orchestrator.api import ApiBase, parse_id
from pm_orchestrator.engine import Budget

# The cost summary's window when the request gives no `from`.
DEFAULT_COST_WINDOW = dt.timedelta(days=30)
_USAGE = """coalesce(sum(input_tokens), 0) AS input_tokens, coalesce(sum(output_tokens), 0) AS output_tokens,
coalesce(sum(cache_creation_tokens), 0) AS cache_creation_tokens,
coalesce(sum(cache_read_tokens), 0) AS cache_read_tokens,
coalesce(sum(cost_usd), 0) AS cost_usd, coalesce(sum(tool_calls), 0) AS tool_calls"""

# Lower bounds of the calibration brackets; the last one includes 1.0.
BRACKETS = (0.0, 0.5, 0.6, 0.7, 0.8, 0.9)

_LATEST = """
SELECT DISTINCT ON (f.investigation_id)
       f.investigation_id, f.rating, f.submitted_at, coalesce(i.domain, 'unknown') AS domain, i.confidence
FROM feedback f JOIN investigations i ON i.id = f.investigation_id
WHERE ($1 = '' OR i.domain = $1)
  AND ($2::timestamptz IS NULL OR f.submitted_at >= $2)
  AND ($3::timestamptz IS NULL OR f.submitted_at < $3)
ORDER BY f.investigation_id, f.submitted_at DESC, f.id DESC
"""


def parse_bound(name: str, value: str, *, upper: bool) -> dt.datetime | None:
    """An inclusive bound as an instant: a date means the whole day (so `to` ends at the next midnight)."""
    if not value:
        return None
    try:
        if len(value) == 10:
            day = dt.date.fromisoformat(value)
            start = dt.datetime.combine(day, dt.time(), dt.UTC)
            return start + dt.timedelta(days=1) if upper else start
        instant = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise validation_failed(
            [problem([name], "must be an ISO 8601 date (YYYY-MM-DD) or timestamp", "invalid_date")]
        ) from None
    if instant.tzinfo is None:
        instant = instant.replace(tzinfo=dt.UTC)
    # A timestamp bound is inclusive: `< to + 1 µs`.
    return instant + dt.timedelta(microseconds=1) if upper else instant


@dataclass
class Tally:
    total: int = 0
    accurate: int = 0
    partially_accurate: int = 0
    inaccurate: int = 0

    def add(self, rating: str) -> None:
        self.total += 1
        setattr(self, rating, getattr(self, rating) + 1)

    def period(self, week: dt.date, domain: str = "") -> analytics_pb2.AccuracyPeriod:
        return analytics_pb2.AccuracyPeriod(
            period=week.isoformat(),
            total=self.total,
            accurate=self.accurate,
            partially_accurate=self.partially_accurate,
            inaccurate=self.inaccurate,
            accuracy_rate=round(self.accurate / self.total, 4) if self.total else 0.0,
            domain=domain,
        )


def _week(instant: dt.datetime) -> dt.date:
    day = instant.astimezone(dt.UTC).date()
    return day - dt.timedelta(days=day.weekday())


def calibration(points: Sequence[tuple[float, bool]]) -> analytics_pb2.GetCalibrationResponse:
    """Brackets and ECE for (stated confidence, was it accurate) pairs."""
    response = analytics_pb2.GetCalibrationResponse(total_predictions=len(points))
    ece = 0.0
    for n, low in enumerate(BRACKETS):
        high = BRACKETS[n + 1] if n + 1 < len(BRACKETS) else 1.0
        inside = [(c, ok) for c, ok in points if low <= c < high or (high == 1.0 and c == 1.0)]
        bracket = response.data.add(
            confidence_range=f"{low:.1f}-{high:.1f}",
            predictions=len(inside),
            actually_accurate=sum(ok for _, ok in inside),
        )
        if inside:
            mean = sum(c for c, _ in inside) / len(inside)
            observed = bracket.actually_accurate / len(inside)
            gap = abs(mean - observed)
            bracket.mean_confidence = round(mean, 4)
            bracket.observed_accuracy = round(observed, 4)
            bracket.calibration_score = round(gap, 4)
            ece += len(inside) / len(points) * gap
    response.expected_calibration_error = round(ece, 4)
    return response


def usage(row: Mapping[str, Any]) -> types_pb2.Usage:
    """Usage from a row with the token, cost and call columns (llm_calls where the row has it)."""
    return types_pb2.Usage(
        input_tokens=int(row["input_tokens"]),
        output_tokens=int(row["output_tokens"]),
        cache_creation_input_tokens=int(row["cache_creation_tokens"]),
        cache_read_input_tokens=int(row["cache_read_tokens"]),
        cost_usd=round(float(row["cost_usd"]), 6),
        tool_calls=int(row["tool_calls"]),
        llm_calls=int(row["llm_calls"]) if "llm_calls" in row else 0,
    )


class AnalyticsServicer(ApiBase, analytics_pb2_grpc.AnalyticsServiceServicer):
    """pm.analytics.v1.AnalyticsService."""

    def __init__(self, pool: asyncpg.Pool, auth: AuthProvider, limiter: RateLimiter, budget: Budget) -> None:
        super().__init__(pool, auth, limiter)
        self._budget = budget

    async def GetAccuracy(
        self, request: analytics_pb2.GetAccuracyRequest, context: Context
    ) -> analytics_pb2.GetAccuracyResponse:
        await self._caller(context)
        start = parse_bound("from", getattr(request, "from"), upper=False)
        end = parse_bound("to", request.to, upper=True)
        if start is not None and end is not None and start >= end:
            raise validation_failed([problem(["from"], "must not be after `to`", "invalid_range")])
        rows = await self._pool.fetch(_LATEST, request.domain, start, end)
        weeks: dict[dt.date, Tally] = {}
        by_domain: dict[tuple[dt.date, str], Tally] = {}
        for row in rows:
            week = _week(row["submitted_at"])
            weeks.setdefault(week, Tally()).add(row["rating"])
            by_domain.setdefault((week, row["domain"]), Tally()).add(row["rating"])
        return analytics_pb2.GetAccuracyResponse(
            data=[weeks[w].period(w) for w in sorted(weeks)],
            by_domain=[by_domain[k].period(*k) for k in sorted(by_domain)],
        )

    async def GetCalibration(
        self, request: analytics_pb2.GetCalibrationRequest, context: Context
    ) -> analytics_pb2.GetCalibrationResponse:
        await self._caller(context)
        rows = await self._pool.fetch(_LATEST, request.domain, None, None)
        # confidence is a 4-byte real: 0.9 reads back as 0.8999999762, so round before bracketing.
        points = [
            (round(float(r["confidence"]), 6), r["rating"] == "accurate") for r in rows if r["confidence"] is not None
        ]
        return calibration(points)

    async def GetCostSummary(
        self, request: analytics_pb2.GetCostSummaryRequest, context: Context
    ) -> analytics_pb2.GetCostSummaryResponse:
        """Spending of the investigations created in [from, to] (default: the last 30 days)."""
        await self._caller(context)
        end = parse_bound("to", request.to, upper=True) or dt.datetime.now(dt.UTC)
        start = parse_bound("from", getattr(request, "from"), upper=False) or end - DEFAULT_COST_WINDOW
        if start >= end:
            raise validation_failed([problem(["from"], "must not be after `to`", "invalid_range")])
        window = "created_at >= $1 AND created_at < $2 AND ($3 = '' OR domain = $3)"
        args = (start, end, request.domain)
        total = await self._pool.fetchrow(
            f"SELECT count(*) AS investigations, {_USAGE} FROM investigations WHERE {window}", *args
        )
        domains = await self._pool.fetch(
            f"SELECT coalesce(domain, 'unknown') AS key, count(*) AS investigations, {_USAGE}"
            f" FROM investigations WHERE {window} GROUP BY 1 ORDER BY cost_usd DESC, key",
            *args,
        )
        models = await self._pool.fetch(
            f"SELECT r.model AS key, count(DISTINCT r.investigation_id) AS investigations,"
            f" coalesce(sum(r.llm_calls), 0) AS llm_calls, {_USAGE.replace('sum(', 'sum(r.')}"
            f" FROM agent_runs r WHERE r.model <> 'none' AND r.investigation_id IN"
            f" (SELECT id FROM investigations WHERE {window}) GROUP BY 1 ORDER BY cost_usd DESC, key",
            *args,
        )
        count = int(total["investigations"])
        response = analytics_pb2.GetCostSummaryResponse(
            total=usage(total),
            investigations=count,
            average_cost_usd=round(float(total["cost_usd"]) / count, 6) if count else 0.0,
            by_domain=[analytics_pb2.CostBreakdown(key=r["key"], usage=usage(r), investigations=r["investigations"])
                       for r in domains],
            by_model=[analytics_pb2.CostBreakdown(key=r["key"], usage=usage(r), investigations=r["investigations"])
                      for r in models],
        )  # fmt: skip
        getattr(response, "from").FromDatetime(start)
        response.to.FromDatetime(end)
        return response

    async def GetInvestigationCost(
        self, request: analytics_pb2.GetInvestigationCostRequest, context: Context
    ) -> analytics_pb2.GetInvestigationCostResponse:
        """What one investigation spent, by agent run, against its cost budget."""
        await self._caller(context)
        investigation_id: uuid.UUID = parse_id(request.id, "investigation")
        row = await self._pool.fetchrow(
            f"SELECT budget, {_USAGE} FROM investigations WHERE id = $1 GROUP BY id", investigation_id
        )
        if row is None:
            raise NotFound("Investigation not found", details={"id": request.id})
        runs = await self._pool.fetch(
            "SELECT step_id, phase, agent_name, model, input_tokens, output_tokens, cache_creation_tokens,"
            " cache_read_tokens, cost_usd, tool_calls, llm_calls, duration_ms FROM agent_runs"
            " WHERE investigation_id = $1 ORDER BY completed_at, id",
            investigation_id,
        )
        total = usage(row)
        total.llm_calls = sum(int(r["llm_calls"]) for r in runs)
        return analytics_pb2.GetInvestigationCostResponse(
            investigation_id=str(investigation_id),
            total=total,
            steps=[
                analytics_pb2.StepCost(
                    step_id=str(r["step_id"]),
                    phase=r["phase"],
                    agent=r["agent_name"],
                    model=r["model"],
                    usage=usage(r),
                    duration_ms=r["duration_ms"],
                )
                for r in runs
            ],  # fmt: skip
            budget_usd=float(self._budget.limits(row["budget"] or {})["max_cost_usd"]),
        )

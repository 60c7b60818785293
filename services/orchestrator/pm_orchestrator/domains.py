"""Domain configs over the predecessor's /api/v1/domains paths, on the real domain_configs table.

A domain names a service area: its services, the MCP servers its investigations may use, and
`settings`, validated against the domain config schema (company, repo, Jira project, primary
services, Slack channels, Grafana and PagerDuty links, Jira assignment rules, the health
check's threshold). Intake resolves an investigation's domain from these configs: by Jira
project for tickets, by service or PagerDuty service for alerts.

Paths take the domain's id or its name. A Jira project belongs to one domain at most.
"""

from __future__ import annotations

import re
import uuid
from typing import Annotated, Any

import asyncpg
from google.protobuf import struct_pb2
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from pm.domain.v1 import domain_pb2, domain_pb2_grpc
from pm_auth import Identity
from pm_errors import AlreadyExists, Conflict, NotFound
from pm_grpc import set_http_status
from pm_grpc.bodies import parse_body, request_object
from pm_grpc.http import Context
from pm_orchestrator.api import ApiBase, audit

Text = Annotated[str, StringConstraints(min_length=1, max_length=200)]
Name = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")]
GithubOrg = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9-]{0,38}$")]
GithubRepo = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._-]{1,100}$")]
JiraProject = Annotated[str, StringConstraints(pattern=r"^[A-Za-z][A-Za-z0-9_]{0,49}$")]


def _url(value: str | None) -> str | None:
    if value is not None and not re.fullmatch(r"https?://[^\s/$.?#][^\s]*", value):
        raise ValueError("must be an absolute http(s) URL")
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class PrimaryService(_Strict):
    name: Text
    artifact_id: Text | None = None


class SlackChannels(_Strict):
    alerts: Text | None = None
    dev: Text | None = None
    incidents: Text | None = None


class AssignmentTarget(_Strict):
    group: Text | None = None
    assignee_account_id: Text | None = None
    assignee_email: Annotated[str, StringConstraints(pattern=r"^[^@\s]+@[^@\s]+$", max_length=200)] | None = None


class AssignmentRule(AssignmentTarget):
    match_issue_types: list[Text] = Field(default_factory=list, max_length=50)
    match_keywords_any: list[Text] = Field(default_factory=list, max_length=200)


class JiraAssignment(_Strict):
    enabled: bool = False
    cc_bug_issue_types: list[Text] = Field(default_factory=list, max_length=50)
    group_field_name: Text | None = None
    group_field_key: Text | None = None
    rules: list[AssignmentRule] = Field(default_factory=list, max_length=100)
    default: AssignmentTarget | None = None


class DomainSettings(_Strict):
    """The domain config schema (every key optional on a domain; onboarding requires the core ones)."""

    company: Text | None = None
    division: Text | None = None
    side: Text | None = None
    repo: Text | None = None
    github_org: GithubOrg | None = None
    github_repo: GithubRepo | None = None
    jira_project: JiraProject | None = None
    artifact_prefix: Text | None = None
    primary_services: list[PrimaryService] = Field(default_factory=list, max_length=200)
    jira_url: str | None = None
    slack_channels: SlackChannels | None = None
    toggle_prefix: Text | None = None
    grafana_url: str | None = None
    grafana_app_analytics_dashboard: Text | None = None
    request_id_format: Text | None = None
    language: Text | None = None
    build_system: Text | None = None
    monorepo: bool | None = None
    jira_assignment: JiraAssignment | None = None
    cloud_api_url: str | None = None
    pagerduty_services: list[Text] = Field(default_factory=list, max_length=200)
    health_check_threshold_multiplier: Annotated[float, Field(gt=0, le=1000)] | None = None

    _urls = field_validator("jira_url", "grafana_url", "cloud_api_url")(_url)


class DomainBody(_Strict):
    name: Name
    description: Annotated[str, StringConstraints(max_length=2000)] = ""
    services: list[Text] = Field(default_factory=list, max_length=500)
    mcp_servers: list[Text] = Field(default_factory=list, max_length=100)
    settings: DomainSettings = Field(default_factory=DomainSettings)

    @field_validator("services", "mcp_servers")
    @classmethod
    def _distinct(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("must not repeat an entry")
        return value


def domain_to_proto(row: Any) -> domain_pb2.Domain:
    settings = struct_pb2.Struct()
    settings.update(row["settings"] or {})
    message = domain_pb2.Domain(
        id=str(row["id"]),
        name=row["name"],
        description=row["description"],
        services=list(row["services"]),
        mcp_servers=list(row["mcp_servers"]),
        settings=settings,
    )
    message.created_at.FromDatetime(row["created_at"])
    message.updated_at.FromDatetime(row["updated_at"])
    return message


def _body(request: Any) -> DomainBody:
    """The domain from a REST body ({name, ...}) or a gRPC caller's DomainInput."""
    data = request_object(request)
    if "domain" in data and request.http_body.ByteSize() == 0:
        data = data["domain"]
    return parse_body(DomainBody, data)


def _settings(body: DomainBody) -> dict[str, Any]:
    return body.settings.model_dump(exclude_none=True, exclude_defaults=True)


async def _check_unique(conn: asyncpg.Connection, body: DomainBody, own: uuid.UUID | None) -> None:
    """A domain's name is unique, and so is the Jira project it claims (409 otherwise)."""
    if await conn.fetchval("SELECT 1 FROM domain_configs WHERE name = $1 AND id IS DISTINCT FROM $2", body.name, own):
        raise AlreadyExists("Domain already exists", details={"name": body.name})
    if body.settings.jira_project is None:
        return
    other = await conn.fetchval(
        "SELECT name FROM domain_configs WHERE jira_project = upper($1) AND id IS DISTINCT FROM $2",
        body.settings.jira_project,
        own,
    )
    if other is not None:
        raise Conflict(
            "Jira project already belongs to another domain",
            details={"jira_project": body.settings.jira_project.upper(), "domain": other},
        )


async def insert_domain(
    pool: asyncpg.Pool, identity: Identity, context: Context, body: DomainBody, action: str = "domain.create"
) -> Any:
    """Store a new domain and audit it as `action` in one transaction; 409 when its name or its
    Jira project is taken. Returns the stored row."""
    async with pool.acquire() as conn, conn.transaction():
        # Serialise writers so the Jira project check and the insert see the same table.
        await conn.execute("LOCK TABLE domain_configs IN SHARE ROW EXCLUSIVE MODE")
        await _check_unique(conn, body, None)
        try:
            row = await conn.fetchrow(
                "INSERT INTO domain_configs (id, name, description, services, mcp_servers, settings, created_by)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING *",
                uuid.uuid4(),
                body.name,
                body.description,
                body.services,
                body.mcp_servers,
                _settings(body),
                identity.subject,
            )
        except asyncpg.UniqueViolationError:
            raise AlreadyExists("Domain already exists", details={"name": body.name}) from None
        await audit(conn, identity, context, action, "domain", row["id"], {"name": body.name})
    return row


class DomainServicer(ApiBase, domain_pb2_grpc.DomainServiceServicer):
    """pm.domain.v1.DomainService."""

    async def _find(self, conn: asyncpg.Connection | asyncpg.Pool, key: str, lock: bool = False) -> Any:
        try:
            column, value = "id", uuid.UUID(key)
        except ValueError:
            column, value = "name", key  # type: ignore[assignment]
        row = await conn.fetchrow(
            f"SELECT * FROM domain_configs WHERE {column} = $1{' FOR UPDATE' if lock else ''}", value
        )
        if row is None:
            raise NotFound("Domain not found", details={"id": key[:200]})
        return row

    async def ListDomains(
        self, request: domain_pb2.ListDomainsRequest, context: Context
    ) -> domain_pb2.ListDomainsResponse:
        await self._caller(context)
        rows = await self._pool.fetch("SELECT * FROM domain_configs ORDER BY name")
        return domain_pb2.ListDomainsResponse(data=[domain_to_proto(r) for r in rows])

    async def GetDomain(self, request: domain_pb2.GetDomainRequest, context: Context) -> domain_pb2.Domain:
        await self._caller(context)
        return domain_to_proto(await self._find(self._pool, request.id))

    async def CreateDomain(self, request: domain_pb2.CreateDomainRequest, context: Context) -> domain_pb2.Domain:
        identity = await self._identity(context)
        row = await insert_domain(self._pool, identity, context, _body(request))
        set_http_status(context, 201)
        return domain_to_proto(row)

    async def UpdateDomain(self, request: domain_pb2.UpdateDomainRequest, context: Context) -> domain_pb2.Domain:
        identity = await self._identity(context)
        body = _body(request)
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute("LOCK TABLE domain_configs IN SHARE ROW EXCLUSIVE MODE")
            current = await self._find(conn, request.id, lock=True)
            await _check_unique(conn, body, current["id"])
            try:
                row = await conn.fetchrow(
                    "UPDATE domain_configs SET name = $2, description = $3, services = $4, mcp_servers = $5,"
                    " settings = $6, updated_at = now() WHERE id = $1 RETURNING *",
                    current["id"],
                    body.name,
                    body.description,
                    body.services,
                    body.mcp_servers,
                    _settings(body),
                )
            except asyncpg.UniqueViolationError:
                raise AlreadyExists("Domain already exists", details={"name": body.name}) from None
            await audit(
                conn, identity, context, "domain.update", "domain", row["id"],
                {"name": body.name, "previous_name": current["name"]},
            )  # fmt: skip
        return domain_to_proto(row)

    async def DeleteDomain(
        self, request: domain_pb2.DeleteDomainRequest, context: Context
    ) -> domain_pb2.DeleteDomainResponse:
        identity = await self._identity(context)
        async with self._pool.acquire() as conn, conn.transaction():
            current = await self._find(conn, request.id, lock=True)
            await conn.execute("DELETE FROM domain_configs WHERE id = $1", current["id"])
            await audit(conn, identity, context, "domain.delete", "domain", current["id"], {"name": current["name"]})
        set_http_status(context, 204)
        return domain_pb2.DeleteDomainResponse()

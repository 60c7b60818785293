"""Onboarding a repository as a domain: POST /api/v1/onboard (a draft) and /api/v1/onboard/confirm.

`Onboard` reads the repository through the registry's code tools as the `onboarding` role: a
tool with capability `code.tree` lists directories and one with `code.read` (on the same server)
reads files, each called with `path` (repository-relative, "" for the root) and, when the tool's
schema asks for them, `owner` and `repo` from github_repo. Discovery (pm_orchestrator.discovery)
turns what was read into languages, build systems and services, each with the files behind it.
The draft config is filled from the request and those facts; when no code tool is configured or
the repository cannot be read, the draft comes from the request alone and the response says
plainly why nothing was detected. Onboard writes nothing; the registry records its tool calls
(mcp_tool_calls, role `onboarding`, agent = the caller).

`ConfirmOnboarding` validates the reviewed config against the domain config schema with the
onboarding keys required and stores it as a domain named after `repo`, exactly as CreateDomain
would (409 when the name or the Jira project is taken), audited as `domain.onboard`.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Annotated, Any

import asyncpg
import grpc
from google.protobuf import json_format, struct_pb2
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from pm.domain.v1 import domain_pb2, domain_pb2_grpc
from pm.registry.v1 import registry_pb2, registry_pb2_grpc
from pm_auth import AuthProvider, RateLimiter
from pm_errors import InvalidArgument
from pm_grpc import set_http_status
from pm_grpc.bodies import parse_body, problem, request_object
from pm_grpc.http import Context
from pm_grpc.tool_results import tool_result_data
from pm_orchestrator.api import ApiBase
from pm_orchestrator.discovery import (
    DEFAULT_LIMITS,
    DETECTED,
    NOT_DETECTED,
    PARTIAL,
    UNKNOWN,
    Discovery,
    Entry,
    Limits,
    ReadFailed,
    discover,
    not_detected,
)
from pm_orchestrator.domains import (
    DomainBody,
    DomainSettings,
    GithubOrg,
    GithubRepo,
    JiraProject,
    Name,
    PrimaryService,
    Text,
    insert_domain,
)

log = logging.getLogger(__name__)

ONBOARDING_ROLE = "onboarding"
TREE, READ = "code.tree", "code.read"
FORMAT_ERROR = 'github_repo must be in "org/repo" format'
# The whole detection stays well inside the edge's 30 s route timeout.
DETECTION_SECONDS = 20.0
CALL_SECONDS = 8.0
_ORG = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,38}")
_REPO = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class OnboardBody(_Strict):
    github_repo: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    jira_project: JiraProject


class OnboardingConfig(DomainSettings):
    """The domain config schema with the keys onboarding requires."""

    company: Text
    division: Text
    side: Text
    repo: Name
    github_org: GithubOrg
    github_repo: GithubRepo
    jira_project: JiraProject
    artifact_prefix: Text
    primary_services: list[PrimaryService] = Field(min_length=1, max_length=200)

    @field_validator("primary_services")
    @classmethod
    def _distinct_names(cls, value: list[PrimaryService]) -> list[PrimaryService]:
        names = [s.name for s in value]
        if len(set(names)) != len(names):
            raise ValueError("service names must not repeat")
        return value


class ConfirmBody(_Strict):
    config: OnboardingConfig


def _without_empty(value: Any) -> Any:
    """`value` with empty strings, zeros, empty lists and empty objects left out of every object:
    the draft /onboard returns carries every field of DomainConfig, unset ones as empty values,
    and sending it back must mean "unset" for those (booleans are kept as they are)."""
    if isinstance(value, dict):
        kept = {k: _without_empty(v) for k, v in value.items()}
        return {k: v for k, v in kept.items() if not _empty(v)}
    if isinstance(value, list):
        return [_without_empty(v) for v in value]
    return value


def _empty(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    return value is None or value in ("", 0, [], {})


def split_repository(value: str) -> tuple[str, str]:
    """("org", "repo") from "org/repo", or 400 naming the expected format."""
    parts = value.split("/")
    if len(parts) != 2 or not _ORG.fullmatch(parts[0]) or not _REPO.fullmatch(parts[1]):
        raise InvalidArgument(
            FORMAT_ERROR, details={"details": [problem(["github_repo"], FORMAT_ERROR, "invalid_format")]}
        )
    return parts[0], parts[1]


def artifact_prefix(org: str, repo: str, discovery: Discovery) -> str:
    """The group a root pom.xml or build.gradle names, else com.<org without dashes>.<repo with
    dashes as dots>, lower-cased (the predecessor's guess)."""
    if discovery.artifact_group:
        return discovery.artifact_group
    return f"com.{org.replace('-', '')}.{repo.replace('-', '.')}".lower()


def draft_config(org: str, repo: str, jira_project: str, discovery: Discovery) -> dict[str, Any]:
    """The config to review: the request, the detected facts, and defaults a person confirms."""
    prefix = artifact_prefix(org, repo, discovery)
    services = [s.name for s in discovery.services] or [repo]
    draft: dict[str, Any] = {
        "company": org,
        "division": repo,
        "side": "Server",
        "repo": repo,
        "github_org": org,
        "github_repo": repo,
        "jira_project": jira_project.upper(),
        "artifact_prefix": prefix,
        "primary_services": [{"name": name, "artifact_id": f"{prefix}.{name}"} for name in services],
        "monorepo": discovery.monorepo,
    }
    if discovery.language != UNKNOWN:
        draft["language"] = discovery.language
    if discovery.build_system != UNKNOWN:
        draft["build_system"] = discovery.build_system
    return draft


def detected_facts(discovery: Discovery, sources: Sequence[str]) -> domain_pb2.DetectedFacts:
    return domain_pb2.DetectedFacts(
        language=discovery.language,
        build_system=discovery.build_system,
        monorepo=discovery.monorepo,
        services=[s.name for s in discovery.services],
        evidence_files=list(discovery.evidence_files),
        status=discovery.status,
        limitations=list(discovery.limitations),
        languages=list(discovery.languages),
        build_systems=list(discovery.build_systems),
        service_details=[
            domain_pb2.DetectedService(
                name=s.name,
                path=s.path,
                language=s.language,
                build_system=s.build_system,
                evidence_files=list(s.evidence),
            )
            for s in discovery.services
        ],
        sources=list(sources),
        listings=discovery.listings,
        reads=discovery.reads,
        evidence=[domain_pb2.FactEvidence(fact=f.fact, value=f.value, files=list(f.files)) for f in discovery.facts],
    )


def summary(discovery: Discovery, sources: Sequence[str]) -> str:
    """One sentence for people about what was detected."""
    if discovery.status == NOT_DETECTED:
        reason = discovery.limitations[0] if discovery.limitations else "nothing could be read."
        return f"Detection was not possible, so the draft comes from the request alone. {reason}"
    services = len(discovery.services)
    shape = f"{services} service{'s' if services != 1 else ''}" + (" (monorepo)" if discovery.monorepo else "")
    text = (
        f"Detected language {discovery.language}, build system {discovery.build_system} and {shape}"
        f" from {discovery.listings} listings and {discovery.reads} reads through {', '.join(sources)}."
    )
    if discovery.limitations:
        text += f" Some facts may be missing: see the {len(discovery.limitations)} limitations."
    return text


def _entries(payload: dict[str, Any]) -> tuple[list[Entry], bool]:
    """The directory entries of a listing (`tool_result_data` of a list, or of an object with
    `entries`), and whether it was cut."""
    items = payload.get("entries", payload.get("items"))
    if not isinstance(items, list):
        raise ReadFailed("the listing is not a list of entries")
    entries = []
    for item in items:
        if not isinstance(item, dict):
            continue
        name, kind = item.get("name"), item.get("type")
        # A name is one path segment; anything else is not an entry of this directory.
        if isinstance(name, str) and name not in ("", ".", "..") and "/" not in name and kind in ("dir", "file"):
            entries.append(Entry(name, kind))
    return entries, bool(payload.get("truncated"))


def _text(reply: Any) -> str:
    payload = tool_result_data(reply)
    if isinstance(payload.get("text"), str):
        return str(payload["text"])
    resources = [item.text for item in reply.content if item.type == "resource" and item.text]
    return "".join(resources or [item.text for item in reply.content if item.text])


class RegistryRepository:
    """A RepositoryReader over the registry's code tools, within one deadline."""

    def __init__(
        self,
        stub: Any,
        tree: registry_pb2.ToolInfo,
        read: registry_pb2.ToolInfo | None,
        org: str,
        repo: str,
        caller: str,
        deadline: float,
    ) -> None:
        self._stub = stub
        self._tree = tree
        self._read = read
        self._org = org
        self._repo = repo
        self._caller = caller
        self._deadline = deadline
        self.cut: list[str] = []

    def _arguments(self, tool: registry_pb2.ToolInfo, path: str) -> struct_pb2.Struct:
        properties = json_format.MessageToDict(tool.input_schema).get("properties") or {}
        arguments: dict[str, Any] = {"path": path}
        if "owner" in properties:
            arguments["owner"] = self._org
        if "repo" in properties:
            arguments["repo"] = self._repo
        return json_format.ParseDict(arguments, struct_pb2.Struct())

    async def _call(self, tool: registry_pb2.ToolInfo, path: str) -> Any:
        remaining = self._deadline - time.monotonic()
        if remaining <= 0.5:
            raise ReadFailed(f"out of time (discovery stops after {DETECTION_SECONDS:.0f} s)")
        timeout = min(CALL_SECONDS, remaining - 0.25)
        try:
            reply = await self._stub.CallTool(
                registry_pb2.CallToolRequest(
                    server=tool.server,
                    tool=tool.name,
                    arguments=self._arguments(tool, path),
                    timeout_ms=int(timeout * 1000),
                    agent_role=ONBOARDING_ROLE,
                    agent_name=self._caller,
                    phase="onboard",
                ),
                timeout=timeout + 0.25,
            )
        except grpc.aio.AioRpcError as exc:
            raise ReadFailed(_rpc_error(exc)) from None
        if reply.outcome != registry_pb2.CALL_OUTCOME_OK:
            outcome = registry_pb2.CallOutcome.Name(reply.outcome).removeprefix("CALL_OUTCOME_").lower()
            raise ReadFailed(f"{tool.server}/{tool.name} answered {outcome}: {reply.error_message[:300]}")
        return reply

    async def list(self, path: str) -> Sequence[Entry]:
        entries, cut = _entries(tool_result_data(await self._call(self._tree, path)))
        if cut:
            self.cut.append(path)
        return entries

    async def read(self, path: str) -> str:
        if self._read is None:
            raise ReadFailed(f"no tool offers {READ} to the {ONBOARDING_ROLE} role on server {self._tree.server!r}")
        return _text(await self._call(self._read, path))


def _rpc_error(exc: grpc.aio.AioRpcError) -> str:
    """A registry error for people, without the channel's internal addresses."""
    code, details = exc.code(), exc.details() or ""
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return "the registry did not answer in time"
    # The registry's own UNAVAILABLE names the MCP server; any other comes from the channel.
    if code == grpc.StatusCode.UNAVAILABLE and not details.startswith("MCP server"):
        return "the registry could not be reached (UNAVAILABLE)"
    return f"{code.name}: {details[:300]}"


def _takes_path(tool: registry_pb2.ToolInfo) -> bool:
    properties = json_format.MessageToDict(tool.input_schema).get("properties") or {}
    return "path" in properties


class OnboardingServicer(ApiBase, domain_pb2_grpc.OnboardingServiceServicer):
    """pm.domain.v1.OnboardingService."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        auth: AuthProvider,
        limiter: RateLimiter,
        registry: grpc.aio.Channel | None,
        *,
        limits: Limits = DEFAULT_LIMITS,
        budget_seconds: float = DETECTION_SECONDS,
    ) -> None:
        super().__init__(pool, auth, limiter)
        self._registry: Any = registry_pb2_grpc.RegistryServiceStub(registry) if registry is not None else None
        self._limits = limits
        self._budget = budget_seconds

    async def _detect(self, org: str, repo: str, caller: str, context: Context) -> tuple[Discovery, list[str]]:
        """Discovery through the registry's code tools, or why it was not possible."""
        if self._registry is None:
            return not_detected("No registry is configured (REGISTRY_ADDR), so the repository could not be read."), []
        budget = self._budget
        remaining = context.time_remaining()
        if remaining is not None:
            budget = min(budget, remaining - 1.0)
        deadline = time.monotonic() + budget
        try:
            offered = [
                list(
                    (
                        await self._registry.ListTools(
                            registry_pb2.ListToolsRequest(capability=capability, agent_role=ONBOARDING_ROLE),
                            timeout=min(CALL_SECONDS, max(budget, 0.5)),
                        )
                    ).tools
                )
                for capability in (TREE, READ)
            ]
        except grpc.aio.AioRpcError as exc:
            log.warning("onboarding: listing code tools failed: %s %s", exc.code().name, exc.details())
            return not_detected(f"The code tools could not be looked up: {_rpc_error(exc)}."), []
        trees = [t for t in offered[0] if _takes_path(t)]
        reads = [t for t in offered[1] if _takes_path(t)]
        if offered[0] and not trees:
            names = ", ".join(sorted(f"{t.server}/{t.name}" for t in offered[0]))
            return not_detected(f"The {TREE} tools ({names}) take no `path` argument, so they cannot be walked."), []
        if not trees:
            return (
                not_detected(
                    f"No registry tool offers {TREE} (directory listing) to the {ONBOARDING_ROLE} role, so the"
                    f" repository could not be read. Map a code server's listing tool to {TREE} and its file"
                    f" tool to {READ} in MCP_SERVERS_FILE and give the {ONBOARDING_ROLE} role both."
                ),
                [],
            )
        # Both tools from one server, so the files read are those of the tree listed.
        read_servers = {t.server for t in reads}
        tree = sorted(trees, key=lambda t: (t.server not in read_servers, t.server, t.name))[0]
        read = next((t for t in sorted(reads, key=lambda t: t.name) if t.server == tree.server), None)
        reader = RegistryRepository(self._registry, tree, read, org, repo, caller, deadline)
        discovery = await discover(reader, repo, self._limits)
        notes: list[str] = []
        if read is None:
            notes.append(
                f"Server {tree.server!r} offers no {READ} tool to the {ONBOARDING_ROLE} role, so no manifest was"
                " read: build tools named only inside manifests could not be told apart."
            )
        if not {"owner", "repo"} <= set((json_format.MessageToDict(tree.input_schema).get("properties") or {}).keys()):
            notes.append(
                f"{tree.server}/{tree.name} takes no repository argument: it reads the repository that server"
                f" serves, taken to be {org}/{repo}."
            )
        status = discovery.status
        if reader.cut:
            # Entries beyond the server's own limit were never seen: the facts may miss some.
            notes.append(f"The server cut the listing of {', '.join(p or '/' for p in reader.cut[:5])}.")
            status = PARTIAL if status == DETECTED else status
        sources = [f"{tree.server}/{tree.name}"] + ([f"{read.server}/{read.name}"] if read is not None else [])
        return replace(discovery, status=status, limitations=discovery.limitations + tuple(notes)), sources

    async def Onboard(self, request: domain_pb2.OnboardRequest, context: Context) -> domain_pb2.OnboardResponse:
        identity = await self._identity(context)
        body = parse_body(OnboardBody, request_object(request))
        org, repo = split_repository(body.github_repo)
        discovery, sources = await self._detect(org, repo, identity.subject, context)
        draft = json_format.ParseDict(draft_config(org, repo, body.jira_project, discovery), domain_pb2.DomainConfig())
        return domain_pb2.OnboardResponse(
            draft=draft, detected=detected_facts(discovery, sources), message=summary(discovery, sources)
        )

    async def ConfirmOnboarding(
        self, request: domain_pb2.ConfirmOnboardingRequest, context: Context
    ) -> domain_pb2.ConfirmOnboardingResponse:
        identity = await self._identity(context)
        data = request_object(request)
        if isinstance(data.get("config"), dict):
            data["config"] = _without_empty(data["config"])
        config = parse_body(ConfirmBody, data).config
        body = DomainBody(
            name=config.repo,
            description=f"Domain config for {config.github_org}/{config.github_repo} ({config.jira_project.upper()})",
            services=[s.name for s in config.primary_services],
            settings=DomainSettings.model_validate(config.model_dump(exclude_none=True)),
        )
        row = await insert_domain(self._pool, identity, context, body, action="domain.onboard")
        set_http_status(context, 201)
        return domain_pb2.ConfirmOnboardingResponse(domain_id=str(row["id"]), status="onboarded")

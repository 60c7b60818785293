"""Onboarding over REST, end to end: POST /api/v1/onboard reads a real repository through the real
registry and the sandbox MCP server's code tools (stdio), through real Envoy into the real
orchestrator on real PostgreSQL; /onboard/confirm stores the reviewed draft as a domain. Without
code tools, or without a registry, the draft comes from the request alone and says why."""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from e2e.edge import start_edge
from integration.sandbox import CHILD_PYTHONPATH, registry_config, until_connected
from pm_db import apply_migrations
from pm_registry.app import SPEC as REGISTRY
from pm_sandbox.fixture import write_snapshot
from pm_sandbox.server import CODE_TOOL_CAPABILITIES
from pm_secrets import VaultSecretSource
from pm_testing import free_port, fresh_database, running_service, stack_env, unique_name

API_KEY = "pm-onboarding-key-7c1e"
AUTH = {"x-api-key": API_KEY}
FORMAT_ERROR = 'github_repo must be in "org/repo" format'

# A pnpm workspace with a Go, a TypeScript and a Poetry service, plus what discovery must skip.
REPOSITORY = {
    "package.json": json.dumps({"name": "shop", "private": True}),
    "pnpm-lock.yaml": "lockfileVersion: '9.0'\n",
    "pnpm-workspace.yaml": "packages:\n  - 'services/*'\n",
    "Makefile": "build:\n\tpnpm -r build\n",
    "README.md": "# shop\n",
    "docs/runbook.md": "# runbook\n",
    "node_modules/left-pad/package.json": "{}",
    "services/payments/go.mod": "module github.com/acme/shop/services/payments\n\ngo 1.22\n",
    "services/payments/main.go": "package main\n\nfunc main() {}\n",
    "services/payments/internal/retry/retry.go": "package retry\n",
    "services/payments/Dockerfile": "FROM golang:1.22 AS build\n",
    "services/web/package.json": json.dumps({"name": "web", "devDependencies": {"typescript": "5.4.5"}}),
    "services/web/tsconfig.json": "{}\n",
    "services/web/src/index.ts": "export const ok = true;\n",
    "services/web/Dockerfile": "FROM node:20\n",
    "services/ledger/pyproject.toml": '[tool.poetry]\nname = "ledger"\nversion = "0.1.0"\n',
    "services/ledger/ledger/__init__.py": "",
    "services/ledger/Dockerfile": "FROM python:3.12\n",
}


def write_repository(root: Path) -> Path:
    for path, text in REPOSITORY.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)
    # A link out of the repository: listed as a symlink by the sandbox, never followed.
    (root.parent / "outside").mkdir()
    (root.parent / "outside" / "go.mod").write_text("module outside\n")
    (root / "services" / "escape").symlink_to(root.parent / "outside")
    return root


def code_servers_file(snapshot: Path, repository: Path) -> str:
    """A registry servers file: the sandbox serving `repository` with only its code tools, and the
    onboarding role allowed to read code."""
    args = ["-m", "pm_sandbox", "--data", str(snapshot), "--repository", str(repository)]
    tools = "".join(f"      {tool}: {{capabilities: [{cap}]}}\n" for tool, cap in CODE_TOOL_CAPABILITIES.items())
    return (
        "servers:\n  - name: sandbox\n    transport: stdio\n"
        f"    command: {sys.executable}\n    args: {json.dumps(args)}\n"
        f'    env: {{PYTHONPATH: "{CHILD_PYTHONPATH}"}}\n    tools:\n{tools}'
        "roles:\n  onboarding: [code.tree, code.read]\n"
    )


@dataclass
class Onboarding:
    client: httpx.AsyncClient
    conn: asyncpg.Connection


@asynccontextmanager
async def onboarding_edge(tmp_path: Path, servers: str | None) -> AsyncIterator[Onboarding]:
    """The edge with a registry serving `servers`, or with no reachable registry (None)."""
    async with AsyncExitStack() as stack:
        env = stack_env()
        dsn = await stack.enter_async_context(fresh_database(env))
        await apply_migrations(dsn)
        prefix = unique_name("pm-onboarding-")
        await VaultSecretSource(env.vault_addr, env.vault_token, prefix=prefix).put("api-keys", API_KEY)
        shared = {"VAULT_PATH_PREFIX": prefix, "RATE_LIMIT_QUERY_PER_MINUTE": "10000"}
        orchestrator = dict(shared)
        if servers is not None:
            config = tmp_path / "servers.yaml"
            config.write_text(servers)
            port = free_port()
            registry_env = {
                **env.service_environ(database_url=dsn),
                "GRPC_LISTEN": f"127.0.0.1:{port}",
                "METRICS_LISTEN": f"127.0.0.1:{free_port()}",
                "MCP_SERVERS_FILE": str(config),
            }
            registry = await stack.enter_async_context(running_service(REGISTRY, registry_env))
            await until_connected(registry)
            orchestrator["REGISTRY_ADDR"] = f"127.0.0.1:{port}"
        edge = await start_edge(stack, tmp_path, dsn, ingest_environ=shared, orchestrator_environ=orchestrator)
        conn = await asyncpg.connect(dsn)
        stack.push_async_callback(conn.close)
        yield Onboarding(edge.client, conn)


async def onboard(client: httpx.AsyncClient, body: dict[str, Any]) -> httpx.Response:
    return await client.post("/api/v1/onboard", json=body, headers=AUTH)


async def test_onboarding_detects_the_repository_through_the_code_tools_and_confirm_stores_the_draft(
    tmp_path: Path,
) -> None:
    repository = write_repository(tmp_path / "repo")
    servers = code_servers_file(write_snapshot(tmp_path / "case"), repository)
    async with onboarding_edge(tmp_path, servers) as edge:
        response = await onboard(edge.client, {"github_repo": "acme/shop", "jira_project": "shop"})
        assert response.status_code == 200, response.text
        body = response.json()
        detected = body["detected"]
        assert detected["status"] == "detected", detected["limitations"]
        assert detected["services"] == ["ledger", "payments", "web"]
        assert detected["monorepo"] is True
        assert detected["language"] == "typescript"
        assert set(detected["languages"]) == {"typescript", "go", "python"}
        assert detected["build_system"] == "pnpm"
        assert detected["build_systems"] == ["pnpm", "poetry", "go modules"]
        details = {s["name"]: s for s in detected["service_details"]}
        assert {n: (s["path"], s["language"], s["build_system"]) for n, s in details.items()} == {
            "ledger": ("services/ledger", "python", "poetry"),
            "payments": ("services/payments", "go", "go modules"),
            "web": ("services/web", "typescript", "pnpm"),
        }
        assert details["payments"]["evidence_files"] == ["services/payments/Dockerfile", "services/payments/go.mod"]
        assert details["web"]["evidence_files"] == [
            "pnpm-lock.yaml",
            "services/web/Dockerfile",
            "services/web/package.json",
            "services/web/tsconfig.json",
        ]
        facts = {(e["fact"], e["value"]): e["files"] for e in detected["evidence"]}
        # Poetry is named only inside the pyproject: it was read through code.read.
        assert facts[("build_system", "poetry")] == ["services/ledger/pyproject.toml"]
        assert facts[("build_system", "pnpm")] == ["package.json", "pnpm-lock.yaml", "services/web/package.json"]
        assert facts[("language", "go")] == ["services/payments/go.mod"]
        assert set(detected["evidence_files"]) == {
            "package.json",
            "pnpm-lock.yaml",
            "services/ledger/Dockerfile",
            "services/ledger/pyproject.toml",
            "services/payments/Dockerfile",
            "services/payments/go.mod",
            "services/web/Dockerfile",
            "services/web/package.json",
            "services/web/tsconfig.json",
        }
        assert not any("node_modules" in f or "escape" in f or "outside" in f for f in detected["evidence_files"])
        assert detected["sources"] == ["sandbox/list_files", "sandbox/get_file_contents"]
        assert detected["reads"] == 1
        # What could not be established is said, not guessed.
        assert detected["limitations"] == [
            "Directories more than 3 levels below the root were not listed.",
            "sandbox/list_files takes no repository argument: it reads the repository that server serves,"
            " taken to be acme/shop.",
        ]
        assert body["message"].startswith("Detected language typescript, build system pnpm and 3 services (monorepo)")

        draft = body["draft"]
        assert {k: draft[k] for k in ("company", "division", "side", "repo", "github_org", "github_repo")} == {
            "company": "acme",
            "division": "shop",
            "side": "Server",
            "repo": "shop",
            "github_org": "acme",
            "github_repo": "shop",
        }
        assert (draft["jira_project"], draft["artifact_prefix"]) == ("SHOP", "com.acme.shop")
        assert draft["primary_services"] == [
            {"name": "ledger", "artifact_id": "com.acme.shop.ledger"},
            {"name": "payments", "artifact_id": "com.acme.shop.payments"},
            {"name": "web", "artifact_id": "com.acme.shop.web"},
        ]
        assert (draft["language"], draft["build_system"], draft["monorepo"]) == ("typescript", "pnpm", True)

        # Every listing and read went through the registry as the onboarding role, and was recorded.
        calls = await edge.conn.fetch(
            "SELECT tool_name, capability, status, agent_role, agent_name, investigation_id, arguments"
            " FROM mcp_tool_calls ORDER BY created_at"
        )
        assert len(calls) == detected["listings"] + detected["reads"]
        assert {(c["tool_name"], c["capability"], c["status"], c["agent_role"]) for c in calls} == {
            ("list_files", "code.tree", "ok", "onboarding"),
            ("get_file_contents", "code.read", "ok", "onboarding"),
        }
        assert all(c["investigation_id"] is None and c["agent_name"].startswith("key:") for c in calls)
        listed = {json.loads(c["arguments"])["path"] for c in calls if c["tool_name"] == "list_files"}
        assert {"", "services", "services/web", "services/web/src", "docs"} <= listed
        assert not any(p.startswith("node_modules") for p in listed)
        # The draft is not stored.
        assert await edge.conn.fetchval("SELECT count(*) FROM domain_configs") == 0

        # Confirming the reviewed draft stores it as a domain named after the repository.
        draft["slack_channels"] = {"incidents": "#shop-incidents"}
        confirmed = await edge.client.post("/api/v1/onboard/confirm", json={"config": draft}, headers=AUTH)
        assert confirmed.status_code == 201, confirmed.text
        assert confirmed.json()["status"] == "onboarded"
        domain_id = confirmed.json()["domain_id"]
        domain = (await edge.client.get("/api/v1/domains/shop", headers=AUTH)).json()
        assert domain["id"] == domain_id
        assert domain["description"] == "Domain config for acme/shop (SHOP)"
        assert domain["services"] == ["ledger", "payments", "web"]
        assert domain["mcp_servers"] == []
        # The draft's empty fields (every DomainConfig field is in the JSON) are left unset.
        assert domain["settings"] == {
            "company": "acme",
            "division": "shop",
            "side": "Server",
            "repo": "shop",
            "github_org": "acme",
            "github_repo": "shop",
            "jira_project": "SHOP",
            "artifact_prefix": "com.acme.shop",
            "primary_services": draft["primary_services"],
            "slack_channels": {"incidents": "#shop-incidents"},
            "language": "typescript",
            "build_system": "pnpm",
            "monorepo": True,
        }
        assert (draft["jira_url"], draft["health_check_threshold_multiplier"]) == ("", 0)
        audited = await edge.conn.fetchrow(
            "SELECT action, identity, details FROM audit_log WHERE resource_id = $1", domain_id
        )
        assert audited["action"] == "domain.onboard"
        assert API_KEY not in audited["identity"]

        again = await edge.client.post("/api/v1/onboard/confirm", json={"config": draft}, headers=AUTH)
        assert again.status_code == 409
        assert again.json() == {"error": "Domain already exists", "name": "shop"}
        other = {**draft, "repo": "shop-v2", "github_repo": "shop-v2"}
        taken = await edge.client.post("/api/v1/onboard/confirm", json={"config": other}, headers=AUTH)
        assert taken.status_code == 409
        assert taken.json() == {
            "error": "Jira project already belongs to another domain",
            "jira_project": "SHOP",
            "domain": "shop",
        }
        assert await edge.conn.fetchval("SELECT count(*) FROM domain_configs") == 1


async def test_without_code_tools_the_draft_comes_from_the_request_and_says_why(tmp_path: Path) -> None:
    # The registry runs the sandbox with its observability tools only: nothing offers code.tree.
    servers = registry_config(write_snapshot(tmp_path / "case"))
    async with onboarding_edge(tmp_path, servers) as edge:
        response = await onboard(edge.client, {"github_repo": "acme/billing-api", "jira_project": "BILL"})
        assert response.status_code == 200, response.text
        body = response.json()
        detected = body["detected"]
        assert detected["status"] == "not_detected"
        assert (detected["language"], detected["build_system"]) == ("unknown", "unknown")
        assert (detected["services"], detected["evidence_files"], detected["sources"]) == ([], [], [])
        assert detected["listings"] == 0
        assert detected["limitations"][0].startswith(
            "No registry tool offers code.tree (directory listing) to the onboarding role"
        )
        assert body["message"].startswith("Detection was not possible, so the draft comes from the request alone.")
        draft = body["draft"]
        assert draft["primary_services"] == [{"name": "billing-api", "artifact_id": "com.acme.billing.api.billing-api"}]
        assert (draft["language"], draft["build_system"], draft["monorepo"]) == ("", "", False)
        assert await edge.conn.fetchval("SELECT count(*) FROM mcp_tool_calls") == 0


async def test_bad_requests_are_refused_and_an_unreachable_registry_is_said_plainly(tmp_path: Path) -> None:
    async with onboarding_edge(tmp_path, None) as edge:
        response = await onboard(edge.client, {"github_repo": "acme/shop", "jira_project": "SHOP"})
        assert response.status_code == 200, response.text
        assert response.json()["detected"]["limitations"] == [
            "The code tools could not be looked up: the registry could not be reached (UNAVAILABLE)."
        ]
        assert response.json()["detected"]["status"] == "not_detected"

        for repo in ("acme", "acme/shop/x", "/shop", "acme/", "ac me/shop", "acme/..", "-acme/shop", ""):
            refused = await onboard(edge.client, {"github_repo": repo, "jira_project": "SHOP"})
            assert refused.status_code == 400, repo
            expected = "Validation failed" if repo == "" else FORMAT_ERROR
            assert refused.json()["error"] == expected, (repo, refused.json())
            assert refused.json()["details"][0]["path"] == ["github_repo"], repo
        missing = await onboard(edge.client, {})
        assert missing.status_code == 400
        assert {tuple(d["path"]) for d in missing.json()["details"]} == {("github_repo",), ("jira_project",)}
        unknown = await onboard(edge.client, {"github_repo": "acme/shop", "jira_project": "SHOP", "branch": "main"})
        assert unknown.status_code == 400
        assert unknown.json()["details"] == [
            {"path": ["branch"], "message": "Unknown field", "code": "extra_forbidden"}
        ]
        bad_jira = await onboard(edge.client, {"github_repo": "acme/shop", "jira_project": "12 3"})
        assert bad_jira.status_code == 400
        assert bad_jira.json()["details"][0]["path"] == ["jira_project"]
        assert (await edge.client.post("/api/v1/onboard", json={"github_repo": "acme/shop"})).status_code == 401

        config = {
            "company": "acme",
            "division": "payments",
            "side": "Server",
            "repo": "payments",
            "github_org": "acme",
            "github_repo": "payments",
            "jira_project": "PAY",
            "artifact_prefix": "com.acme.payments",
            "primary_services": [{"name": "payments-api", "artifact_id": "com.acme.payments.api"}],
        }
        bad: dict[str, tuple[dict[str, Any], set[tuple[Any, ...]]]] = {
            "no config": ({}, {("config",)}),
            "missing keys": (
                {"config": {"company": "acme"}},
                {
                    ("config", key)
                    for key in (
                        "division",
                        "side",
                        "repo",
                        "github_org",
                        "github_repo",
                        "jira_project",
                        "artifact_prefix",
                        "primary_services",
                    )
                },  # fmt: skip
            ),
            "no services": ({"config": {**config, "primary_services": []}}, {("config", "primary_services")}),
            "repeated services": (
                {"config": {**config, "primary_services": [{"name": "a"}, {"name": "a"}]}},
                {("config", "primary_services")},
            ),
            "unknown key": ({"config": {**config, "cloud_region": "eu"}}, {("config", "cloud_region")}),
            "unknown top-level key": ({"config": config, "force": True}, {("force",)}),
            "bad url": ({"config": {**config, "grafana_url": "grafana"}}, {("config", "grafana_url")}),
            "empty company": ({"config": {**config, "company": ""}}, {("config", "company")}),
        }
        for case, (payload, paths) in bad.items():
            refused = await edge.client.post("/api/v1/onboard/confirm", json=payload, headers=AUTH)
            assert refused.status_code == 400, case
            assert refused.json()["error"] == "Validation failed", case
            assert {tuple(d["path"]) for d in refused.json()["details"]} == paths, (case, refused.json())
        assert (await edge.client.post("/api/v1/onboard/confirm", json={"config": config})).status_code == 401
        assert await edge.conn.fetchval("SELECT count(*) FROM domain_configs") == 0

        confirmed = await edge.client.post("/api/v1/onboard/confirm", json={"config": config}, headers=AUTH)
        assert confirmed.status_code == 201, confirmed.text
        stored = await edge.conn.fetchrow(
            "SELECT name, services, settings, jira_project FROM domain_configs WHERE id = $1",
            uuid.UUID(confirmed.json()["domain_id"]),
        )
        assert (stored["name"], stored["services"], stored["jira_project"]) == ("payments", ["payments-api"], "PAY")
        assert json.loads(stored["settings"]) == config

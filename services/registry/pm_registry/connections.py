"""One long-lived MCP session per configured server, kept open and re-established after failures.

A `ServerConnection` owns a supervisor loop (run as a background task of the service): it
resolves the server's credentials (Vault first, then the environment), opens the transport
(streamable HTTP, SSE or stdio), initializes the session, reads the tool catalog and then
watches the session, pinging it every `PING_INTERVAL_SECONDS` and whenever a call suspects it.
When the session breaks it is closed and opened again with backoff. A server that cannot be
started or initialized is logged once per outage as `mcp server <name> skipped: <reason>` and
reported unhealthy; it never stops the registry.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import httpx2
import mcp_types
from mcp import ClientSession, StdioServerParameters
from mcp.client.sse import sse_client
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from pm_errors import ConfigurationError
from pm_registry.config import Credential, EnvRef, SecretRef, ServerConfig
from pm_secrets import SecretSource

log = logging.getLogger(__name__)

ACCESS_KEY_SECRET = "mcp-access-key"
PING_INTERVAL_SECONDS = 30.0
RECONNECT_MIN_SECONDS = 0.5
RECONNECT_MAX_SECONDS = 15.0


class ServerDown(Exception):
    """The server cannot take a call now (not connected, or the connection broke)."""


def describe_error(exc: BaseException) -> str:
    """A one-line reason for a failure, unwrapping exception groups from the transports."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    if isinstance(exc, MCPError):
        return f"MCP error {exc.error.code}: {exc.error.message}"
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class ServerConnection:
    """The session to one MCP server and what is known about it."""

    def __init__(self, config: ServerConfig, secrets: SecretSource, environ: Mapping[str, str]) -> None:
        self.config = config
        self._secrets = secrets
        self._environ = environ
        self._session: ClientSession | None = None
        self.tools: dict[str, mcp_types.Tool] = {}
        self.last_error = ""
        self.last_success_at: datetime | None = None
        self._suspect = asyncio.Event()
        self._first_attempt_done = asyncio.Event()
        self._down_logged = False
        self._http_refusal = ""

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def is_connected(self) -> bool:
        return self._session is not None

    # -- the supervisor ---------------------------------------------------------------------

    async def run(self) -> None:
        """Keep the session open until cancelled."""
        delay = RECONNECT_MIN_SECONDS
        while True:
            try:
                await self._serve_once()
                delay = RECONNECT_MIN_SECONDS
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - whatever a transport or server raises, report it and retry
                reason = describe_error(exc)
                if self._http_refusal:
                    # The SDK reports an HTTP refusal (401, 404, ...) as a generic error; name it.
                    reason = f"{self._http_refusal} ({reason})"
                    self._http_refusal = ""
                self._went_down(reason)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RECONNECT_MAX_SECONDS)

    async def _serve_once(self) -> None:
        try:
            async with self._open() as session:
                async with asyncio.timeout(self.config.timeout_seconds):
                    await session.initialize()
                    self.tools = await _list_tools(session)
                self._session = session
                self.last_error = ""
                self.last_success_at = datetime.now(UTC)
                self._first_attempt_done.set()
                log.info("mcp server %s connected", self.name, extra={"server": self.name, "tools": len(self.tools)})
                missing = sorted(set(self.config.tools) - set(self.tools))
                if missing:
                    log.warning(
                        "mcp server %s does not offer configured tools: %s",
                        self.name,
                        ", ".join(missing),
                        extra={"server": self.name},
                    )
                self._down_logged = False
                await self._watch(session)
        finally:
            self._session = None
            self._first_attempt_done.set()

    async def _watch(self, session: ClientSession) -> None:
        """Return when the session no longer answers a ping."""
        while True:
            try:
                async with asyncio.timeout(PING_INTERVAL_SECONDS):
                    await self._suspect.wait()
            except TimeoutError:
                pass
            self._suspect.clear()
            try:
                async with asyncio.timeout(min(self.config.timeout_seconds, 5.0)):
                    await session.send_ping()
            except TimeoutError:
                raise ServerDown("the server did not answer a ping") from None
            except Exception as exc:  # noqa: BLE001 - any failure of the ping means the session is gone
                raise ServerDown(f"the server did not answer a ping: {describe_error(exc)}") from None

    def _went_down(self, reason: str) -> None:
        self.last_error = reason
        if not self._down_logged:
            # One line per outage, in the form operators grep for.
            log.warning("mcp server %s skipped: %s", self.name, reason, extra={"server": self.name})
            self._down_logged = True

    def suspect(self) -> None:
        """A call failed in a way that may mean the session is broken: check it now."""
        self._suspect.set()

    # -- transports -------------------------------------------------------------------------

    @asynccontextmanager
    async def _open(self) -> AsyncIterator[ClientSession]:
        config = self.config
        async with AsyncExitStack() as stack:
            if config.transport == "stdio":
                env = {k: await self._resolve(f"env.{k}", v) for k, v in config.env.items()}
                params = StdioServerParameters(command=config.command or "", args=list(config.args), env=env)
                streams = await stack.enter_async_context(stdio_client(params))
            else:
                headers = {k: await self._resolve(f"headers.{k}", v) for k, v in config.headers.items()}
                if config.access_key_header:
                    key = await self._secrets.get(ACCESS_KEY_SECRET)
                    if key is None or not key.get_secret_value():
                        raise ConfigurationError(
                            f"access_key_header is set but MCP_ACCESS_KEY is not (Vault secret {ACCESS_KEY_SECRET})"
                        )
                    headers[config.access_key_header] = key.get_secret_value()
                url = config.url or ""
                if config.transport == "sse":
                    streams = await stack.enter_async_context(
                        sse_client(url, headers=headers, timeout=config.timeout_seconds)
                    )
                else:
                    client = await stack.enter_async_context(
                        httpx2.AsyncClient(
                            headers=headers,
                            timeout=httpx2.Timeout(config.timeout_seconds, read=300.0),
                            event_hooks={"response": [self._note_refusal]},
                        )
                    )
                    streams = await stack.enter_async_context(streamable_http_client(url, http_client=client))
            session = await stack.enter_async_context(ClientSession(streams[0], streams[1]))
            yield session

    async def _note_refusal(self, response: httpx2.Response) -> None:
        if response.status_code >= 400:
            self._http_refusal = f"HTTP {response.status_code} {response.reason_phrase} from {response.request.url}"

    async def _resolve(self, where: str, value: Credential) -> str:
        if isinstance(value, str):
            return value
        if isinstance(value, SecretRef):
            secret = await self._secrets.get(value.secret)
            if secret is None:
                raise ConfigurationError(f"{where}: secret {value.secret!r} is not set (Vault or environment)")
            return value.prefix + secret.get_secret_value()
        if isinstance(value, EnvRef):
            if value.env not in self._environ:
                raise ConfigurationError(f"{where}: environment variable {value.env} is not set")
            return value.prefix + self._environ[value.env]
        raise ConfigurationError(f"{where}: unsupported credential")  # pragma: no cover

    # -- calls ------------------------------------------------------------------------------

    async def session(self, wait_seconds: float) -> ClientSession:
        """The open session; waits up to `wait_seconds` only while the first connection is made."""
        if self._session is None and not self._first_attempt_done.is_set():
            try:
                async with asyncio.timeout(wait_seconds):
                    await self._first_attempt_done.wait()
            except TimeoutError:
                pass
        if self._session is None:
            raise ServerDown(self.last_error or "not connected yet")
        return self._session

    async def call_tool(self, tool: str, arguments: Mapping[str, Any], timeout: float) -> mcp_types.CallToolResult:
        """One attempt; raises ServerDown, TimeoutError or MCPError (a JSON-RPC error from the server)."""
        async with asyncio.timeout(timeout):
            session = await self.session(timeout)
            try:
                result = await session.call_tool(tool, dict(arguments), read_timeout_seconds=timeout)
            except (OSError, httpx2.HTTPError) as exc:
                raise ServerDown(describe_error(exc)) from None
        self.last_success_at = datetime.now(UTC)
        return result


async def _list_tools(session: ClientSession) -> dict[str, mcp_types.Tool]:
    tools: dict[str, mcp_types.Tool] = {}
    cursor: str | None = None
    while True:
        params = mcp_types.PaginatedRequestParams(cursor=cursor) if cursor else None
        page = await session.list_tools(params=params)
        tools.update({tool.name: tool for tool in page.tools})
        cursor = page.next_cursor
        if not cursor:
            return tools

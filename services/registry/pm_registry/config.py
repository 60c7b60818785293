"""The registry's YAML file: MCP servers, their tools' capabilities, and the roles' allow-lists.

```yaml
servers:
  - name: sandbox
    transport: streamable_http        # streamable_http | sse | stdio
    url: http://127.0.0.1:8765/mcp
    access_key_header: X-MCP-Access-Key   # MCP_ACCESS_KEY (Vault `mcp-access-key`) goes here
    headers:
      Authorization: {secret: grafana-token, prefix: "Bearer "}
    timeout_seconds: 20
    retries: 2                        # read-only tools only
    max_concurrency: 8
    breaker: {failures: 5, reset_seconds: 30}
    tools:
      search_logs: {capabilities: [logs.search]}
      post_comment: {capabilities: [publish.ticket_comment], access: write}
  - name: local
    transport: stdio
    command: python
    args: [-m, some_server]
    env: {API_TOKEN: {env: SOME_TOKEN}}
roles:
  gather.logs: [logs.search, logs.patterns]
  delivery: [publish.ticket_comment, publish.chat_message]
```

Credentials are never written in the file: a value is a plain string or a reference,
`{secret: <name>}` (Vault, then the environment) or `{env: <VAR>}`. Tools a server offers but the
file does not list get no capabilities, so no role can call them. Errors name the file, the path
inside it and what is wrong.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pm_errors import ConfigurationError

CAPABILITY = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$")
WRITE_ROLE = "delivery"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SecretRef(_Strict):
    """A value read from the secret source (Vault, then the environment)."""

    secret: Annotated[str, Field(min_length=1)]
    prefix: str = ""


class EnvRef(_Strict):
    """A value read from an environment variable."""

    env: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]
    prefix: str = ""


Credential = str | SecretRef | EnvRef


class ToolPolicy(_Strict):
    """What a tool does, as far as the allow-lists are concerned."""

    capabilities: list[Annotated[str, Field(pattern=CAPABILITY.pattern)]] = Field(min_length=1)
    access: Literal["read", "write"] = "read"


class Breaker(_Strict):
    """Opens after `failures` consecutive failures; one probe is let through after `reset_seconds`."""

    failures: int = Field(default=5, ge=1, le=100)
    reset_seconds: float = Field(default=30.0, gt=0, le=3600)


class ServerConfig(_Strict):
    """One MCP server."""

    name: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")]
    transport: Literal["streamable_http", "sse", "stdio"]
    url: str | None = None
    headers: dict[str, Credential] = Field(default_factory=dict)
    access_key_header: str | None = None
    command: str | None = None
    args: list[str] = Field(default_factory=list)
    env: dict[str, Credential] = Field(default_factory=dict)
    timeout_seconds: float = Field(default=20.0, gt=0, le=600)
    retries: int = Field(default=2, ge=0, le=10)
    max_concurrency: int = Field(default=8, ge=1, le=256)
    breaker: Breaker = Field(default_factory=Breaker)
    tools: dict[str, ToolPolicy] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _transport_fields(self) -> ServerConfig:
        if self.transport == "stdio":
            if not self.command:
                raise ValueError("a stdio server needs `command`")
            if self.url or self.headers or self.access_key_header:
                raise ValueError("a stdio server takes `command`, `args` and `env`, not `url` or headers")
        else:
            if not self.url or not re.match(r"^https?://[^/\s]+", self.url):
                raise ValueError(f"a {self.transport} server needs an http(s) `url`")
            if self.command or self.args or self.env:
                raise ValueError(f"a {self.transport} server takes `url` and headers, not `command`, `args` or `env`")
        return self


class RegistryConfig(_Strict):
    """The whole file."""

    servers: list[ServerConfig] = Field(default_factory=list)
    roles: dict[Annotated[str, Field(min_length=1)], list[Annotated[str, Field(pattern=CAPABILITY.pattern)]]] = Field(
        default_factory=dict
    )

    @model_validator(mode="after")
    def _consistent(self) -> RegistryConfig:
        names = [s.name for s in self.servers]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"server names must be unique: {', '.join(duplicates)}")
        return self

    def server(self, name: str) -> ServerConfig | None:
        """The server called `name`, if configured."""
        return next((s for s in self.servers if s.name == name), None)

    def capabilities(self) -> set[str]:
        """Every capability some configured tool provides."""
        return {c for s in self.servers for t in s.tools.values() for c in t.capabilities}


def _location(loc: tuple[int | str, ...], data: Any) -> str:
    parts: list[str] = []
    node = data
    for item in loc:
        if isinstance(item, int) and isinstance(node, list) and item < len(node):
            node = node[item]
            name = node.get("name") if isinstance(node, Mapping) else None
            parts.append(f"[{name}]" if isinstance(name, str) else f"[{item}]")
        else:
            node = node.get(item) if isinstance(node, Mapping) else None
            parts.append(f".{item}")
    return "".join(parts).lstrip(".") or "(top level)"


def parse_config(text: str, source: str = "<string>") -> RegistryConfig:
    """Validate the YAML text; ConfigurationError names the source, the path and the problem."""
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigurationError(f"{source}: not valid YAML: {exc}") from None
    if not isinstance(data, Mapping):
        raise ConfigurationError(f"{source}: expected a mapping with `servers` and `roles`")
    try:
        return RegistryConfig.model_validate(data)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = _location(tuple(first["loc"]), data)
        message = str(first["msg"]).removeprefix("Value error, ")
        if first["type"] == "string_pattern_mismatch":
            in_capabilities = "capabilities" in first["loc"] or first["loc"][:1] == ("roles",)
            message = "must look like area.action, e.g. logs.search" if in_capabilities else "has an invalid format"
        raise ConfigurationError(f"{source}: {where}: {message}") from None


def load_config(path: str | Path) -> RegistryConfig:
    """Read and validate the registry's YAML file."""
    file = Path(path)
    try:
        text = file.read_text()
    except OSError as exc:
        raise ConfigurationError(f"{file}: cannot read: {exc.strerror}") from None
    return parse_config(text, str(file))

"""Secret sources: Vault KV v2 through hvac, the environment, and a chain of both."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any, Protocol

import hvac
import requests
from hvac.exceptions import Forbidden, InvalidPath, VaultError
from pydantic import SecretStr

from pm_errors import Unavailable
from pm_settings import ServiceSettings


class SecretSource(Protocol):
    """Looks up secrets by logical name."""

    async def get(self, name: str) -> SecretStr | None:
        """The secret's value, or None when this source does not hold it."""
        ...

    async def ping(self) -> None:
        """Raise Unavailable when the source cannot be asked."""
        ...


def env_name(name: str) -> str:
    """`jira-webhook-secret` -> `JIRA_WEBHOOK_SECRET`."""
    return name.replace("-", "_").replace("/", "_").upper()


class EnvSecretSource:
    """Secrets from an environment mapping given at start-up."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = dict(environ)

    async def get(self, name: str) -> SecretStr | None:
        value = self._environ.get(env_name(name))
        return SecretStr(value) if value else None

    async def ping(self) -> None:
        return None


class InMemorySecretSource:
    """Secrets from a dict (unit tests)."""

    def __init__(self, values: Mapping[str, str]) -> None:
        self._values = dict(values)

    async def get(self, name: str) -> SecretStr | None:
        value = self._values.get(name)
        return SecretStr(value) if value is not None else None

    async def ping(self) -> None:
        return None


class VaultSecretSource:
    """KV v2 secrets at `<mount>/<prefix>/<name>`, key `value`, cached for `ttl_seconds`."""

    def __init__(
        self,
        addr: str,
        token: str,
        *,
        mount: str = "secret",
        prefix: str = "production-master",
        ttl_seconds: float = 60.0,
        timeout_seconds: float = 5.0,
    ) -> None:
        self._client = hvac.Client(url=addr, token=token, timeout=max(1, round(timeout_seconds)))
        self._mount = mount
        self._prefix = prefix.strip("/")
        self._ttl = ttl_seconds
        self._cache: dict[str, tuple[float, SecretStr | None]] = {}

    def _path(self, name: str) -> str:
        return f"{self._prefix}/{name}" if self._prefix else name

    def _read(self, name: str) -> SecretStr | None:
        try:
            reply: dict[str, Any] = self._client.secrets.kv.v2.read_secret_version(
                path=self._path(name), mount_point=self._mount, raise_on_deleted_version=False
            )
        except InvalidPath:
            return None
        except Forbidden as exc:
            raise Unavailable(f"vault refused to read secret {name!r} (check the token's policy)") from exc
        except (VaultError, requests.RequestException) as exc:
            raise Unavailable(f"vault unreachable: {type(exc).__name__}") from exc
        data = (reply.get("data") or {}).get("data") or {}
        value = data.get("value")
        return SecretStr(str(value)) if value not in (None, "") else None

    async def get(self, name: str) -> SecretStr | None:
        cached = self._cache.get(name)
        now = time.monotonic()
        if cached is not None and now - cached[0] < self._ttl:
            return cached[1]
        value = await asyncio.to_thread(self._read, name)
        self._cache[name] = (now, value)
        return value

    async def put(self, name: str, value: str) -> None:
        """Write a secret (used by ./pm up to seed a local Vault, and by tests)."""
        await asyncio.to_thread(
            self._client.secrets.kv.v2.create_or_update_secret,
            path=self._path(name),
            secret={"value": value},
            mount_point=self._mount,
        )
        self._cache.pop(name, None)

    async def ping(self) -> None:
        try:
            status = await asyncio.to_thread(self._client.sys.read_health_status, method="GET")
        except (VaultError, requests.RequestException) as exc:
            raise Unavailable(f"vault unreachable: {type(exc).__name__}") from exc
        if isinstance(status, dict) and status.get("sealed"):
            raise Unavailable("vault is sealed")


class ChainedSecretSource:
    """Asks each source in order; the first that holds the secret wins."""

    def __init__(self, *sources: SecretSource) -> None:
        self._sources = sources

    async def get(self, name: str) -> SecretStr | None:
        for source in self._sources:
            value = await source.get(name)
            if value is not None:
                return value
        return None

    async def ping(self) -> None:
        for source in self._sources:
            await source.ping()


def secret_source_from_settings(settings: ServiceSettings, environ: Mapping[str, str]) -> SecretSource:
    """Vault then environment when VAULT_ADDR is set; the environment alone otherwise."""
    env = EnvSecretSource(environ)
    if not settings.vault_addr:
        return env
    token = settings.vault_token.get_secret_value() if settings.vault_token else ""
    vault = VaultSecretSource(
        settings.vault_addr, token, mount=settings.vault_kv_mount, prefix=settings.vault_path_prefix
    )
    return ChainedSecretSource(vault, env)

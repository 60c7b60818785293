"""Secret sources against the real OpenBao of the test stack."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from pm_errors import Unavailable
from pm_secrets import ChainedSecretSource, EnvSecretSource, VaultSecretSource, env_name, secret_source_from_settings
from pm_settings import ServiceSettings, load_settings
from pm_testing import stack_env, unique_name


def _reveal(value: SecretStr | None) -> str:
    assert value is not None
    return value.get_secret_value()


def _vault(prefix: str, ttl: float = 60.0) -> VaultSecretSource:
    env = stack_env()
    return VaultSecretSource(env.vault_addr, env.vault_token, prefix=prefix, ttl_seconds=ttl)


def test_env_names_follow_the_operator_guide() -> None:
    assert env_name("api-keys") == "API_KEYS"
    assert env_name("jira-webhook-secret") == "JIRA_WEBHOOK_SECRET"
    assert env_name("mcp-access-key") == "MCP_ACCESS_KEY"


async def test_vault_returns_written_secret_and_none_for_missing() -> None:
    vault = _vault(unique_name("pm-test-"))
    await vault.ping()
    await vault.put("jwt-secret", "s3cr3t")
    value = await vault.get("jwt-secret")
    assert isinstance(value, SecretStr)
    assert value.get_secret_value() == "s3cr3t"
    assert "s3cr3t" not in repr(value)
    assert await vault.get("no-such-secret") is None


async def test_rotation_is_seen_after_the_cache_ttl() -> None:
    prefix = unique_name("pm-test-")
    reader = _vault(prefix, ttl=0)
    writer = _vault(prefix)
    await writer.put("api-keys", "old")
    assert _reveal(await reader.get("api-keys")) == "old"
    await writer.put("api-keys", "new")
    assert _reveal(await reader.get("api-keys")) == "new"


async def test_vault_first_then_environment() -> None:
    prefix = unique_name("pm-test-")
    vault = _vault(prefix)
    await vault.put("api-keys", "from-vault")
    chain = ChainedSecretSource(vault, EnvSecretSource({"API_KEYS": "from-env", "JWT_SECRET": "env-jwt"}))
    assert _reveal(await chain.get("api-keys")) == "from-vault"
    assert _reveal(await chain.get("jwt-secret")) == "env-jwt"
    assert await chain.get("pagerduty-webhook-secret") is None


async def test_settings_choose_vault_only_when_vault_addr_is_set() -> None:
    env = stack_env()
    prefix = unique_name("pm-test-")
    await _vault(prefix).put("mcp-access-key", "vault-key")
    without = secret_source_from_settings(load_settings(ServiceSettings, {}), {"MCP_ACCESS_KEY": "env-key"})
    assert _reveal(await without.get("mcp-access-key")) == "env-key"
    settings = load_settings(
        ServiceSettings, {"VAULT_ADDR": env.vault_addr, "VAULT_TOKEN": env.vault_token, "VAULT_PATH_PREFIX": prefix}
    )
    with_vault = secret_source_from_settings(settings, {"MCP_ACCESS_KEY": "env-key"})
    assert _reveal(await with_vault.get("mcp-access-key")) == "vault-key"


async def test_bad_token_is_unavailable_not_missing() -> None:
    env = stack_env()
    vault = VaultSecretSource(env.vault_addr, "wrong-token", prefix=unique_name("pm-test-"))
    with pytest.raises(Unavailable, match="refused"):
        await vault.get("api-keys")


async def test_unreachable_vault_is_unavailable() -> None:
    vault = VaultSecretSource("http://127.0.0.1:1", "t", timeout_seconds=1)
    with pytest.raises(Unavailable):
        await vault.ping()

"""Where secrets come from: Vault (OpenBao or HashiCorp Vault, KV v2) or the environment.

Secrets have logical names such as `api-keys`, `jwt-secret`, `jira-webhook-secret` or
`mcp-access-key`. In Vault each lives at `<mount>/<prefix>/<name>` with its value under the key
`value`; in the environment it is the upper-cased name with `-` and `/` as `_` (API_KEYS,
JWT_SECRET, ...). When VAULT_ADDR is set, Vault is asked first and the environment is the
fallback for names Vault does not hold; otherwise only the environment is used. Values are
`SecretStr` and are cached for `ttl_seconds`, so a rotated secret is picked up.
"""

from pm_secrets.sources import (
    ChainedSecretSource,
    EnvSecretSource,
    InMemorySecretSource,
    SecretSource,
    VaultSecretSource,
    env_name,
    secret_source_from_settings,
)

__all__ = [
    "ChainedSecretSource",
    "EnvSecretSource",
    "InMemorySecretSource",
    "SecretSource",
    "VaultSecretSource",
    "env_name",
    "secret_source_from_settings",
]

"""Service settings read from the environment once, at start-up.

Each service declares one frozen pydantic model derived from `ServiceSettings`; every field is
read from the upper-cased environment variable of the same name (or its alias). Required fields
have no default, so a missing one stops start-up with one line that names the variable. Secret
fields are `SecretStr`: they print as `**********` and `describe()` never shows them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

__all__ = [
    "ApiAuthSettings",
    "DatabaseSettings",
    "ObjectStoreSettings",
    "OutboxSettings",
    "RedisSettings",
    "RegistryClientSettings",
    "ServiceSettings",
    "SettingsError",
    "argument_templates",
    "load_settings",
]


class SettingsError(Exception):
    """A required setting is missing or a setting has an invalid value."""


class ServiceSettings(BaseModel):
    """Settings every service has."""

    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)

    log_level: str = Field(default="info", pattern=r"(?i)^(debug|info|warning|warn|error|critical)$")
    pm_env: str = "production"
    grpc_listen: str = "0.0.0.0:50051"
    metrics_listen: str = "0.0.0.0:9100"
    # OTLP export of spans (pm_telemetry.tracing): a base endpoint, or the traces URL itself.
    otel_exporter_otlp_endpoint: str | None = None
    otel_exporter_otlp_traces_endpoint: str | None = None
    otel_exporter_otlp_protocol: str = Field(default="http/protobuf", pattern=r"^(http/protobuf|grpc)$")
    otel_service_name: str | None = None
    # Share of the traces this process starts whose spans are recorded (a caller's decision,
    # when its trace context comes with the request, is followed).
    trace_sample_ratio: float = Field(default=1.0, ge=0.0, le=1.0)
    vault_addr: str | None = None
    vault_token: SecretStr | None = None
    vault_kv_mount: str = "secret"
    vault_path_prefix: str = "production-master"
    shutdown_grace_seconds: float = Field(default=20.0, ge=0)

    def describe(self) -> dict[str, object]:
        """Every setting with secrets masked, for the start-up log line."""
        shown: dict[str, object] = {}
        for name, value in self:
            if isinstance(value, SecretStr):
                shown[name] = "set" if value.get_secret_value() else "empty"
            elif name.endswith("_url") and isinstance(value, str):
                shown[name] = _strip_userinfo(value)
            else:
                shown[name] = value
        return shown


class DatabaseSettings(BaseModel):
    """PostgreSQL connection (DATABASE_URL, required) and pool size."""

    database_url: str
    database_pool_max: int = Field(default=20, ge=1, le=200)


class RedisSettings(BaseModel):
    """Redis for the streams (REDIS_URL, required)."""

    redis_url: str
    stream_namespace: str = ""


class ObjectStoreSettings(BaseModel):
    """S3 or S3-compatible storage; S3_BUCKET is required, the endpoint only off AWS."""

    s3_bucket: str
    s3_endpoint_url: str | None = None
    aws_region: str = "us-east-1"
    aws_access_key_id: str | None = None
    aws_secret_access_key: SecretStr | None = None


class ApiAuthSettings(BaseModel):
    """Authentication and rate limits of the public API (ingest and the orchestrator's query API)."""

    # The one JWT algorithm accepted; iss/aud are checked when set.
    jwt_algorithm: str = Field(default="HS256", pattern=r"^HS(256|384|512)$")
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    # How long API keys and secrets read from the secret source are reused.
    secrets_refresh_seconds: float = Field(default=30.0, ge=0, le=3600)
    # Rate limits per identity and category, shared by every replica through Redis; 0 = none.
    rate_limit_investigation_per_minute: int = Field(default=10, ge=0)
    rate_limit_query_per_minute: int = Field(default=100, ge=0)


class OutboxSettings(BaseModel):
    """The outbox relay of a service that announces its writes on streams (pm_streams.outbox)."""

    outbox_poll_seconds: float = Field(default=1.0, gt=0, le=60)
    outbox_batch_size: int = Field(default=200, ge=1, le=5000)


class RegistryClientSettings(BaseModel):
    """Where the MCP registry's gRPC endpoint is (REGISTRY_ADDR, required)."""

    registry_addr: str


def _strip_userinfo(url: str) -> str:
    """Hide a password embedded in a URL (postgresql://user:pass@host -> user:***@host)."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    userinfo, _, host = rest.rpartition("@")
    user = userinfo.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" if ":" in userinfo else url


S = TypeVar("S", bound=ServiceSettings)


def _env_name(name: str, alias: str | None) -> str:
    return (alias or name).upper()


def load_settings(cls: type[S], environ: Mapping[str, str]) -> S:
    """Build `cls` from `environ`; raise SettingsError naming the first bad or missing variable."""
    data: dict[str, Any] = {}
    env_of: dict[str, str] = {}
    for name, field in cls.model_fields.items():
        alias = field.validation_alias if isinstance(field.validation_alias, str) else field.alias
        env = _env_name(name, alias)
        env_of[name] = env
        if env in environ and environ[env] != "":
            data[name] = environ[env]
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        field_name = str(first["loc"][0]) if first["loc"] else "?"
        env = env_of.get(field_name, field_name.upper())
        if first["type"] == "missing":
            raise SettingsError(f"missing required setting {env}") from None
        raise SettingsError(f"invalid setting {env}: {first['msg']}") from None


def argument_templates(value: Any, placeholders: tuple[str, ...], *, required: bool = False) -> dict[str, str]:
    """A tool's arguments as templates: a JSON object (text, from the environment, or a dict) of
    argument name -> a string that may use only `placeholders`, e.g. {"issue_key": "{ticket_id}"}.
    `required`: at least one argument. Raises ValueError naming what is wrong."""
    names = ", ".join(f"{{{p}}}" for p in placeholders)
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not a JSON object: {exc}") from None
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()) or (required and not value):
        example = json.dumps({"argument": "{" + placeholders[0] + "}"})
        raise ValueError(f"expected a JSON object of strings{' (at least one)' if required else ''}, e.g. {example}")
    for name, template in value.items():
        try:
            template.format(**dict.fromkeys(placeholders, ""))
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"argument {name!r}: {template!r} may only use {names} ({exc})") from None
    return dict(value)

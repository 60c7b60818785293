"""Settings of the ingest service (environment variables, read once in main()).

Secrets (API keys, the JWT secret, webhook signing secrets) are not settings: they are read
through the secret source (Vault when VAULT_ADDR is set, then the environment) under the names
listed in SECRET_NAMES, so they can be rotated without a restart.
"""

from __future__ import annotations

from pydantic import Field, field_validator

from pm_settings import ApiAuthSettings, DatabaseSettings, OutboxSettings, RedisSettings, ServiceSettings

WEBHOOK_SOURCES = ("jira", "slack", "pagerduty", "grafana-alert", "deploy")

# Logical secret name -> what it is. The environment variable is the upper-cased name with
# dashes as underscores (api-keys -> API_KEYS); in Vault it is <mount>/<prefix>/<name>, key "value".
SECRET_NAMES = {
    "api-keys": "comma-separated API keys accepted in x-api-key",
    "jwt-secret": "HMAC secret of bearer JWTs",
    "jira-webhook-secret": "Jira webhook secret (X-Hub-Signature)",
    "slack-signing-secret": "Slack app signing secret (v0 signatures)",
    "pagerduty-webhook-secret": "PagerDuty V3 webhook subscription secret",
    "grafana-webhook-secret": "Grafana contact point HMAC secret",
    "grafana-webhook-token": "Grafana contact point bearer token (alternative to the HMAC secret)",
    "deploy-webhook-secret": "CI/CD deploy webhook HMAC secret",
}


def _csv(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


class IngestSettings(ServiceSettings, DatabaseSettings, RedisSettings, ApiAuthSettings, OutboxSettings):
    """DATABASE_URL and REDIS_URL are required; the rest has defaults."""

    grpc_listen: str = "0.0.0.0:50051"
    metrics_listen: str = "0.0.0.0:9101"

    # Webhooks.
    # Comma list of sources accepted WITHOUT a signature (local use only), e.g. "grafana-alert,deploy".
    webhook_insecure_sources: str = ""
    jira_project_filter: str = ""
    # issue_updated starts an investigation when this label is added to the issue.
    jira_trigger_label: str = "auto-investigate"
    slack_timestamp_tolerance_seconds: int = Field(default=300, ge=1, le=3600)
    grafana_signature_header: str = "x-grafana-alerting-signature"
    grafana_timestamp_header: str = "x-grafana-alerting-signature-timestamp"
    deploy_signature_header: str = "x-hub-signature-256"
    deploy_delivery_header: str = "x-github-delivery"
    # Comma list of environments whose deploys are recorded and checked; empty = all.
    deploy_environments: str = "production"
    post_deploy_check_delay_ms: int = Field(default=30_000, ge=0, le=86_400_000)

    # Dedup windows.
    alert_dedup_window_seconds: int = Field(default=7200, ge=1)
    delivery_dedup_window_seconds: int = Field(default=86_400, ge=1)

    # Callback URLs: comma list of allowed host names (exact, or ".example.com" for subdomains);
    # empty allows any http(s) host.
    callback_allowed_hosts: str = ""

    @field_validator("webhook_insecure_sources")
    @classmethod
    def _known_sources(cls, value: str) -> str:
        unknown = [s for s in _csv(value) if s not in WEBHOOK_SOURCES]
        if unknown:
            raise ValueError(f"unknown webhook source(s) {', '.join(unknown)}; known: {', '.join(WEBHOOK_SOURCES)}")
        return value

    @property
    def insecure_sources(self) -> frozenset[str]:
        """Webhook sources accepted without a signature."""
        return frozenset(_csv(self.webhook_insecure_sources))

    @property
    def jira_projects(self) -> frozenset[str]:
        """Upper-cased Jira project keys to accept; empty accepts all."""
        return frozenset(p.upper() for p in _csv(self.jira_project_filter))

    @property
    def deploy_environment_filter(self) -> frozenset[str]:
        """Lower-cased environments whose deploys are recorded; empty accepts all."""
        return frozenset(e.lower() for e in _csv(self.deploy_environments))

    @property
    def callback_hosts(self) -> tuple[str, ...]:
        """Allowed callback hosts (lower-cased)."""
        return tuple(h.lower() for h in _csv(self.callback_allowed_hosts))

"""The four services: packaging them with Pants, migrating the database, starting their pex files."""

# ruff: noqa: T201 -- a command-line front end: printing is its output.

from __future__ import annotations

import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from processes import accepts_connections, base_environ, open_log, spawn, start_ticks, wait_for
from profiles import REPO_ROOT, Profile, StackError
from statefile import ProcessRecord

DIST = REPO_ROOT / "dist"
PACKAGE_TARGETS = ("services::", "libs/pm_db:migrate")
MIGRATE_PEX = DIST / "pm-migrate.pex"
READY_TIMEOUT_SECONDS = 90.0
MIGRATE_TIMEOUT_SECONDS = 300.0

# The operator guide's variables: handed to the services unchanged when the caller sets them.
PASSTHROUGH_VARS = (
    "API_KEYS",
    "JWT_SECRET",
    "JIRA_WEBHOOK_SECRET",
    "SLACK_SIGNING_SECRET",
    "PAGERDUTY_WEBHOOK_SECRET",
    "GRAFANA_WEBHOOK_SECRET",
    "DEPLOY_WEBHOOK_SECRET",
    "ANTHROPIC_API_KEY",
    "ANTHROPIC_BASE_URL",
    "OPENAI_API_KEY",
    "OPENAI_BASE_URL",
    "OPENAI_MODEL",
    "REASONER",
    "LLM_MODEL_FAST",
    "LLM_MODEL_BALANCED",
    "LLM_MODEL_DEEP",
    "LLM_MAX_TURNS",
    "LLM_MAX_TOKENS",
    "LLM_MODE_ROLES",
    "LLM_ROLE_LIMITS",
    "MCP_ACCESS_KEY",
    "JIRA_PROJECT_FILTER",
    "HEALTH_CHECK_THRESHOLD_MULTIPLIER",
    "POST_DEPLOY_CHECK_DELAY_MS",
    "LOG_LEVEL",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "TRACE_SAMPLE_RATIO",
    # Intake (docs/intake.md).
    "GRAFANA_WEBHOOK_TOKEN",
    "JWT_ALGORITHM",
    "JWT_ISSUER",
    "JWT_AUDIENCE",
    "RATE_LIMIT_INVESTIGATION_PER_MINUTE",
    "RATE_LIMIT_QUERY_PER_MINUTE",
    "WEBHOOK_INSECURE_SOURCES",
    "JIRA_TRIGGER_LABEL",
    "DEPLOY_ENVIRONMENTS",
    "DEPLOY_SIGNATURE_HEADER",
    "DEPLOY_DELIVERY_HEADER",
    "ALERT_DEDUP_WINDOW_SECONDS",
    "DELIVERY_DEDUP_WINDOW_SECONDS",
    "CALLBACK_ALLOWED_HOSTS",
    "DATABASE_POOL_MAX",
    # Engine (docs/engine.md).
    "STEPS_PER_WORKER",
    "STEP_RECLAIM_IDLE_MS",
    "STEP_MAX_DELIVERIES",
    "INVESTIGATION_DEADLINE_SECONDS",
    "INVESTIGATION_MAX_TOOL_CALLS",
    "INVESTIGATION_MAX_COST_USD",
    "RECONCILE_INTERVAL_SECONDS",
    "RECONCILE_STALE_SECONDS",
    "MESSAGE_RECLAIM_IDLE_MS",
    "CALLBACK_SIGNING_SECRET",
    "CALLBACK_MAX_ATTEMPTS",
    # Registry (docs/registry.md).
    "MCP_SERVERS_FILE",
    "MCP_RESULT_MAX_CHARS",
    "MCP_EXCERPT_CHARS",
)
PASSTHROUGH_PREFIX = "PM_"


@dataclass(frozen=True, slots=True)
class ServiceSpec:
    """A service by name; its ports are the profile's `<name>` and `<name>-metrics`."""

    name: str
    # The service a replica runs (`ingest` for `ingest-2`); empty for the service itself.
    service: str = ""

    @property
    def pex(self) -> Path:
        return DIST / f"pm-{self.service or self.name}.pex"

    @property
    def metrics_component(self) -> str:
        return f"{self.name}-metrics"


# Start order: the registry first (workers call it), ingest last (it takes the traffic).
SERVICES = (
    ServiceSpec("registry"),
    ServiceSpec("orchestrator"),
    ServiceSpec("worker"),
    ServiceSpec("ingest"),
)


def services_for(profile: Profile) -> tuple[ServiceSpec, ...]:
    """The services of a stack, with its extra ingest replicas started right after ingest."""
    replicas = tuple(ServiceSpec(name, service="ingest") for name in profile.ingest_replicas)
    return (*SERVICES, *replicas)


@dataclass(frozen=True, slots=True)
class StackSettings:
    """What every service is told about the stack around it."""

    database_url: str
    redis_url: str
    vault_addr: str
    vault_token: str
    s3_endpoint: str
    s3_bucket: str
    api_keys: str
    jwt_secret: str


def package() -> None:
    """Build the service pex files and the migration runner with `./pants package`."""
    command = [str(REPO_ROOT / "pants"), "package", *PACKAGE_TARGETS]
    print(f"pm: packaging: ./pants package {' '.join(PACKAGE_TARGETS)}", flush=True)
    if subprocess.run(command, cwd=REPO_ROOT, check=False).returncode != 0:
        raise StackError("./pants package failed (see its output above)")
    expected = (MIGRATE_PEX, *(spec.pex for spec in SERVICES))
    missing = [str(path.relative_to(REPO_ROOT)) for path in expected if not path.is_file()]
    if missing:
        raise StackError(f"./pants package did not produce {', '.join(missing)}")


def python311() -> str:
    """The real path of `python3.11` on PATH (a pyenv shim resolves to the interpreter itself)."""
    command = ["python3.11", "-c", "import sys; print(sys.executable)"]
    try:
        result = subprocess.run(command, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError) as error:
        raise StackError(f"python3.11 is needed to run the pex files: {error}") from error
    return result.stdout.strip()


def migrate(profile: Profile, python: str, database_url: str, environ: Mapping[str, str]) -> None:
    """Apply the SQL migrations with dist/pm-migrate.pex; output goes to logs/migrate.log."""
    env = {**base_environ(environ), "DATABASE_URL": database_url, "LOG_LEVEL": environ.get("LOG_LEVEL", "info")}
    command = [python, str(MIGRATE_PEX)]
    with open_log(profile.log_file("migrate"), command) as log:
        try:
            result = subprocess.run(
                command,
                env=env,
                cwd=REPO_ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=MIGRATE_TIMEOUT_SECONDS,
                check=False,
            )
        except subprocess.TimeoutExpired as error:
            raise StackError(f"migrations did not finish in {MIGRATE_TIMEOUT_SECONDS:.0f} s") from error
    if result.returncode != 0:
        raise StackError(f"migrations failed (exit {result.returncode})")


def service_environ(
    profile: Profile, spec: ServiceSpec, settings: StackSettings, environ: Mapping[str, str]
) -> dict[str, str]:
    """The environment of one service: the stack's addresses, then the caller's passthrough variables."""
    env = base_environ(environ)
    env.update(
        {
            "LOG_LEVEL": "info",
            "PM_ENV": "development",
            "GRPC_LISTEN": profile.address(spec.name),
            "METRICS_LISTEN": profile.address(spec.metrics_component),
            "DATABASE_URL": settings.database_url,
            "REDIS_URL": settings.redis_url,
            "VAULT_ADDR": settings.vault_addr,
            "VAULT_TOKEN": settings.vault_token,
            "S3_ENDPOINT_URL": settings.s3_endpoint,
            "S3_BUCKET": settings.s3_bucket,
            # moto accepts any credentials; these are placeholders, not secrets.
            "AWS_ACCESS_KEY_ID": "local",
            "AWS_SECRET_ACCESS_KEY": "local",
            "AWS_REGION": "us-east-1",
            "REGISTRY_ADDR": profile.address("registry"),
            "OTEL_SERVICE_NAME": f"pm-{spec.service or spec.name}",
            "API_KEYS": settings.api_keys,
            "JWT_SECRET": settings.jwt_secret,
        }
    )
    env.update(passthrough(environ))
    return env


def passthrough(environ: Mapping[str, str]) -> dict[str, str]:
    """The caller's operator-guide variables and every PM_* variable."""
    return {
        name: value
        for name, value in environ.items()
        if name in PASSTHROUGH_VARS or name.startswith(PASSTHROUGH_PREFIX)
    }


def start_service(profile: Profile, spec: ServiceSpec, env: Mapping[str, str], python: str) -> ProcessRecord:
    """Start one service's pex and wait until its gRPC port accepts connections."""
    command = [python, str(spec.pex)]
    log = profile.log_file(spec.name)
    process = spawn(command, log, env, cwd=REPO_ROOT)
    port = profile.port(spec.name)
    wait_for(
        lambda: accepts_connections(port),
        what=spec.name,
        timeout=READY_TIMEOUT_SECONDS,
        alive=lambda: process.poll() is None,
    )
    return ProcessRecord(
        component=spec.name,
        pid=process.pid,
        address=profile.address(spec.name),
        log=str(log),
        command=tuple(command),
        start_ticks=start_ticks(process.pid),
        check="tcp",
    )

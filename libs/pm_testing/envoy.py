"""Real Envoy processes for tests: the descriptor set, the rendered config, the process."""

from __future__ import annotations

import asyncio
import string
import urllib.request
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path

import google.api
import grpc_tools
from grpc_tools import protoc

from pm_testing.processes import wait_for


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

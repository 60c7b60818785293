"""`./pm bench embed`: the local embedding model's load time and throughput, in the pex that ships.

Packages the orchestrator's pex, then runs `pm_embeddings.bench` inside it (PEX_MODULE) on the
model ./pm fetched into .stack/models: once with one BLAS thread, once with numpy's default
(one per core), since the orchestrator shares its cores with everything else.
"""

# ruff: noqa: T201 -- a command-line front end: printing is its output.

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping

import pexservices
from processes import base_environ
from profiles import REPO_ROOT, STACK_ROOT, StackError

MODEL_DIR = STACK_ROOT / "models" / "all-minilm-l6-v2"
ORCHESTRATOR_PEX = pexservices.DIST / "pm-orchestrator.pex"


def bench_embed(environ: Mapping[str, str], *, texts: int, rounds: int) -> int:
    """Package the orchestrator, run the benchmark with 1 and with the default BLAS threads."""
    if not (MODEL_DIR / "model.safetensors").is_file():
        raise StackError(f"the embedding model is missing from {MODEL_DIR} (build-support/fetch-embedding-model.sh)")
    command = [str(REPO_ROOT / "pants"), "package", "services/orchestrator/pm_orchestrator:pex"]
    print(f"pm: packaging: {' '.join(command[1:])}", flush=True)
    if subprocess.run(command, cwd=REPO_ROOT, check=False).returncode != 0:
        raise StackError("./pants package failed (see its output above)")
    python = pexservices.python311()
    status = 0
    for threads in ("1", str(os.cpu_count() or 1)):
        print(f"\n== BLAS threads: {threads}", flush=True)
        env = {**base_environ(environ), "PEX_MODULE": "pm_embeddings.bench", "OPENBLAS_NUM_THREADS": threads}
        run = [python, str(ORCHESTRATOR_PEX), "--model-dir", str(MODEL_DIR), "--texts", str(texts)]
        status |= subprocess.run([*run, "--rounds", str(rounds)], env=env, check=False).returncode
    return status

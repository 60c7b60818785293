"""`.stack/<profile>/state.json`: what a running stack consists of, written as each part starts."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass(frozen=True, slots=True)
class ProcessRecord:
    """One started process: what it is, how to find it again and how to check it.

    `check` names the health probe: "postgres", "redis", "http" (GET `health_url` answers 200)
    or "tcp" (the address accepts connections).
    """

    component: str
    pid: int
    address: str
    log: str
    command: tuple[str, ...]
    start_ticks: int | None
    check: str
    health_url: str = ""


@dataclass(slots=True)
class StackState:
    """The processes of one profile's stack, in start order, and the ports it was started with."""

    profile: str
    ports: dict[str, int]
    processes: list[ProcessRecord] = field(default_factory=list)


def load_state(path: Path) -> StackState | None:
    """The recorded stack, or None when nothing was recorded."""
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    processes = [ProcessRecord(**{**item, "command": tuple(item["command"])}) for item in raw["processes"]]
    return StackState(profile=raw["profile"], ports=dict(raw["ports"]), processes=processes)


def save_state(path: Path, state: StackState) -> None:
    """Write `state` atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(asdict(state), indent=2) + "\n")
    os.replace(tmp, path)


def remove_state(path: Path) -> None:
    """Forget the recorded stack."""
    path.unlink(missing_ok=True)

"""How many threads numpy's BLAS (OpenBLAS, bundled with numpy's wheels) uses in this process.

numpy starts one BLAS thread per core. In a service that shares its cores with its own event
loop and with other processes, that is slower, not faster: measured on the project's 2-core
machine under load, one thread embedded 2.4x more texts per second than two, and a single short
text took 12 ms instead of 64 ms (docs/benchmarks.md). numpy has no API for it, so the library's
own setter is called through ctypes; without a loaded OpenBLAS nothing happens.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np

__all__ = ["blas_threads", "set_blas_threads"]

# numpy's wheels ship OpenBLAS with prefixed, 64-bit-integer symbols; other builds use the plain names.
_SETTERS = ("scipy_openblas_set_num_threads64_", "openblas_set_num_threads64_", "openblas_set_num_threads")
_GETTERS = ("scipy_openblas_get_num_threads64_", "openblas_get_num_threads64_", "openblas_get_num_threads")


def _libraries() -> list[ctypes.CDLL]:
    np.ones(1)  # numpy (and with it OpenBLAS) is loaded
    try:
        with open("/proc/self/maps") as maps:
            # address perms offset dev inode [path]
            paths = {fields[5].strip() for fields in (line.split(maxsplit=5) for line in maps) if len(fields) == 6}
    except OSError:
        return []
    found = []
    for path in sorted(p for p in paths if "openblas" in Path(p).name.lower()):
        try:
            found.append(ctypes.CDLL(path))
        except OSError:
            continue
    return found


def set_blas_threads(threads: int) -> bool:
    """Make OpenBLAS use `threads` threads in this process; False when no OpenBLAS is loaded."""
    if threads < 1:
        raise ValueError("threads must be at least 1")
    done = False
    for library in _libraries():
        for symbol in _SETTERS:
            setter = getattr(library, symbol, None)
            if setter is not None:
                setter(ctypes.c_int(threads))
                done = True
                break
    return done


def blas_threads() -> int | None:
    """The threads OpenBLAS uses in this process (None when no OpenBLAS is loaded)."""
    for library in _libraries():
        for symbol in _GETTERS:
            getter = getattr(library, symbol, None)
            if getter is not None:
                getter.restype = ctypes.c_int
                return int(getter())
    return None

"""A reader of the safetensors format: an 8-byte little-endian header length, a JSON header
naming each tensor's dtype, shape and byte range, then the raw little-endian tensor bytes.

Only reading is needed (the model weights); every offset and size is checked against the file
before any array is built, so a truncated or hostile file fails with `SafetensorsError`.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping
from pathlib import Path

import numpy as np

__all__ = ["SafetensorsError", "load_safetensors", "parse_safetensors"]

# The header is a few KB for real models; the format's own reader refuses more than 100 MB.
MAX_HEADER_BYTES = 100 * 1024 * 1024
_DTYPES: Mapping[str, np.dtype] = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}


class SafetensorsError(ValueError):
    """The bytes are not a well-formed safetensors file."""


def load_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Every tensor of the safetensors file at `path`, by name (BF16 is widened to float32)."""
    return parse_safetensors(path.read_bytes())


def parse_safetensors(data: bytes) -> dict[str, np.ndarray]:
    """Every tensor of a safetensors file's bytes, by name; the arrays are read-only views of `data`
    (BF16 tensors become float32 copies)."""
    if len(data) < 8:
        raise SafetensorsError("file shorter than its 8-byte header length")
    (header_len,) = struct.unpack("<Q", data[:8])
    if header_len > MAX_HEADER_BYTES or 8 + header_len > len(data):
        raise SafetensorsError(f"header length {header_len} does not fit a {len(data)}-byte file")
    try:
        header = json.loads(data[8 : 8 + header_len])
    except (UnicodeDecodeError, ValueError) as exc:
        raise SafetensorsError(f"header is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise SafetensorsError("header is not a JSON object")
    body = memoryview(data)[8 + header_len :]
    tensors: dict[str, np.ndarray] = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        tensors[name] = _tensor(name, entry, body)
    return tensors


def _tensor(name: str, entry: object, body: memoryview) -> np.ndarray:
    if not isinstance(entry, dict):
        raise SafetensorsError(f"{name}: entry is not an object")
    dtype_name, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise SafetensorsError(f"{name}: shape {shape!r} is not a list of non-negative integers")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(o, int) for o in offsets)
        or not 0 <= offsets[0] <= offsets[1] <= len(body)
    ):
        raise SafetensorsError(f"{name}: data_offsets {offsets!r} outside the {len(body)}-byte data section")
    start, end = offsets
    count = math.prod(shape)
    if dtype_name == "BF16":
        if end - start != count * 2:
            raise SafetensorsError(f"{name}: {end - start} bytes for {count} BF16 values")
        raw = np.frombuffer(body[start:end], dtype="<u2").astype(np.uint32) << 16
        return raw.view(np.float32).reshape(shape)
    if not isinstance(dtype_name, str) or dtype_name not in _DTYPES:
        raise SafetensorsError(f"{name}: unsupported dtype {dtype_name!r}")
    dtype = _DTYPES[dtype_name]
    if end - start != count * dtype.itemsize:
        raise SafetensorsError(f"{name}: {end - start} bytes for {count} values of {dtype_name}")
    return np.frombuffer(body[start:end], dtype=dtype).reshape(shape)

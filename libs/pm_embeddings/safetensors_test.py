"""The safetensors reader: tensors come back as written; malformed files are refused."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from pm_embeddings import SafetensorsError, parse_safetensors


def _file(header: dict[str, object], data: bytes) -> bytes:
    encoded = json.dumps(header).encode()
    return struct.pack("<Q", len(encoded)) + encoded + data


def test_tensors_come_back_with_their_dtype_shape_and_values() -> None:
    weights = np.arange(6, dtype="<f4").reshape(2, 3)
    ids = np.array([[7, -1]], dtype="<i8")
    half = np.array([1.5, -2.0], dtype="<f2")
    data = weights.tobytes() + ids.tobytes() + half.tobytes()
    a, b = weights.nbytes, weights.nbytes + ids.nbytes
    header = {
        "__metadata__": {"format": "pt"},
        "w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, a]},
        "ids": {"dtype": "I64", "shape": [1, 2], "data_offsets": [a, b]},
        "h": {"dtype": "F16", "shape": [2], "data_offsets": [b, b + half.nbytes]},
    }
    tensors = parse_safetensors(_file(header, data))
    assert set(tensors) == {"w", "ids", "h"}
    np.testing.assert_array_equal(tensors["w"], weights)
    np.testing.assert_array_equal(tensors["ids"], ids)
    np.testing.assert_array_equal(tensors["h"], half)
    assert tensors["w"].dtype == np.float32


def test_bfloat16_is_widened_to_float32() -> None:
    values = np.array([1.0, -3.5, 0.15625], dtype=np.float32)
    bf16 = (values.view(np.uint32) >> 16).astype("<u2")
    tensors = parse_safetensors(_file({"b": {"dtype": "BF16", "shape": [3], "data_offsets": [0, 6]}}, bf16.tobytes()))
    np.testing.assert_array_equal(tensors["b"], values)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x01\x00", "shorter"),
        (struct.pack("<Q", 1000) + b"{}", "does not fit"),
        (struct.pack("<Q", 3) + b"[1]", "not a JSON object"),
        (struct.pack("<Q", 3) + b"{x}", "not JSON"),
        (_file({"t": {"dtype": "F32", "shape": [4], "data_offsets": [0, 8]}}, b"\x00" * 8), "8 bytes for 4 values"),
        (_file({"t": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\x00\x00"), "outside"),
        (_file({"t": {"dtype": "C64", "shape": [1], "data_offsets": [0, 8]}}, b"\x00" * 8), "unsupported dtype"),
        (_file({"t": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, b"\x00" * 4), "shape"),
    ],
)
def test_malformed_files_are_refused(data: bytes, message: str) -> None:
    with pytest.raises(SafetensorsError, match=message):
        parse_safetensors(data)

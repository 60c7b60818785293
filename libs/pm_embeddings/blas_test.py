"""The BLAS thread count can be set and read back (numpy's bundled OpenBLAS)."""

from __future__ import annotations

import pytest

from pm_embeddings.blas import blas_threads, set_blas_threads


def test_the_thread_count_is_set_and_read_back() -> None:
    before = blas_threads()
    assert before is not None, "numpy's OpenBLAS was not found in this process"
    try:
        assert set_blas_threads(1)
        assert blas_threads() == 1
        assert set_blas_threads(2)
        assert blas_threads() == 2
    finally:
        set_blas_threads(before)


def test_zero_threads_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        set_blas_threads(0)

"""Our numpy all-MiniLM-L6-v2 against sentence-transformers: the same token ids and, to float32
rounding, the same vectors (testdata/minilm_reference.json, written by
scripts/embedding_reference.py with PyTorch).

The model files are the ones ./pm fetches into .stack/models/all-minilm-l6-v2.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pm_embeddings import MiniLMEncoder, locate_model_dir

REFERENCE = Path(__file__).parent / "testdata" / "minilm_reference.json"


def model_dir() -> Path:
    """The fetched model: beside the test stack's folder (./pm test), or under ./.stack from the repo root."""
    candidates = [Path(".stack/models/all-minilm-l6-v2").resolve()]
    if os.environ.get("PM_TEST_STACK_DIR"):
        candidates.insert(0, Path(os.environ["PM_TEST_STACK_DIR"]).parent / "models" / "all-minilm-l6-v2")
    found = locate_model_dir("", candidates)
    if found is None:
        pytest.fail(f"the embedding model is missing (looked in {', '.join(map(str, candidates))}); run ./pm once")
    return found


@pytest.fixture(scope="module")
def encoder() -> MiniLMEncoder:
    return MiniLMEncoder(model_dir())


@pytest.fixture(scope="module")
def reference() -> dict[str, Any]:
    return dict(json.loads(REFERENCE.read_text()))


def test_token_ids_equal_the_reference_tokenizer(encoder: MiniLMEncoder, reference: dict[str, Any]) -> None:
    assert reference["max_seq_length"] == encoder.max_tokens == 256
    for case in reference["cases"]:
        assert encoder.tokenizer.encode(case["text"], encoder.max_tokens) == case["token_ids"], case["text"][:60]
    # The long case really was cut at the limit.
    assert max(len(case["token_ids"]) for case in reference["cases"]) == 256


def test_vectors_equal_sentence_transformers(encoder: MiniLMEncoder, reference: dict[str, Any]) -> None:
    cases = reference["cases"]
    ours = encoder.encode([case["text"] for case in cases])
    expected = np.array([case["embedding"] for case in cases], dtype=np.float64)
    cosine = (ours * expected).sum(axis=1) / np.linalg.norm(ours, axis=1) / np.linalg.norm(expected, axis=1)
    assert ours.shape == (len(cases), 384)
    assert cosine.min() >= 0.9999, cosine
    # Tighter than the cosine: the tanh approximation of GELU would still pass 0.9999, not this.
    assert np.abs(ours - expected).max() < 1e-5


def test_vectors_are_unit_length_and_independent_of_the_batch(
    encoder: MiniLMEncoder, reference: dict[str, Any]
) -> None:
    texts = [case["text"] for case in reference["cases"]]
    together = encoder.encode(texts)
    alone = np.stack([encoder.encode([text])[0] for text in texts])
    np.testing.assert_allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(together, alone, atol=1e-5)


def test_a_paraphrase_is_closer_than_an_unrelated_incident(encoder: MiniLMEncoder) -> None:
    anchor, paraphrase, unrelated = encoder.encode(
        [
            "Database connection pool exhausted after the orders service deploy",
            "orders-service ran out of DB connections once the new release went out",
            "TLS certificate for the public API expired at midnight",
        ]
    )
    assert float(anchor @ paraphrase) > float(anchor @ unrelated) + 0.2

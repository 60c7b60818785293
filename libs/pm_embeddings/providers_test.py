"""The providers: the local model as the orchestrator uses it, OpenAI's embeddings API through
its real client against a loopback server speaking that API, and finding the model files."""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pm_embeddings import (
    MODEL_FILES,
    EmbeddingsUnavailable,
    LocalMiniLM,
    MiniLMEncoder,
    ModelFilesMissing,
    OpenAIEmbeddings,
    locate_model_dir,
)
from pm_embeddings.minilm_test import model_dir


async def test_the_local_model_embeds_in_order_and_loads_once() -> None:
    local = LocalMiniLM(model_dir())
    assert (local.model, local.dimensions, local.load_seconds) == ("all-MiniLM-L6-v2", 384, None)
    texts = [
        "payments API timeouts after deploy",
        "disk full on the kafka broker",
        "payments API timeouts after deploy",
    ]
    vectors = await local.embed(texts)
    assert local.load_seconds is not None
    assert [len(v) for v in vectors] == [384, 384, 384]
    assert vectors[0] == pytest.approx(vectors[2], abs=1e-6)
    np.testing.assert_allclose(vectors, MiniLMEncoder(model_dir()).encode(texts), atol=1e-6)
    assert await local.embed([]) == []


def test_a_model_directory_without_its_files_is_refused_by_name(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelFilesMissing, match="model.safetensors, vocab.txt"):
        LocalMiniLM(tmp_path)


async def test_unreadable_weights_make_embeddings_unavailable(tmp_path: Path) -> None:
    for name in MODEL_FILES:
        if name != "model.safetensors":
            shutil.copy(model_dir() / name, tmp_path / name)
    (tmp_path / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}")
    local = LocalMiniLM(tmp_path)
    with pytest.raises(EmbeddingsUnavailable, match="could not be loaded") as caught:
        await local.embed(["x"])
    assert "header length" in str(caught.value.details["reason"])


def test_the_model_directory_is_the_configured_one_else_the_first_candidate_with_the_files(tmp_path: Path) -> None:
    empty, full = tmp_path / "empty", tmp_path / "full"
    empty.mkdir()
    full.mkdir()
    for name in MODEL_FILES:
        (full / name).write_text("x")
    assert locate_model_dir("/configured/elsewhere", [full]) == Path("/configured/elsewhere")
    assert locate_model_dir("", [empty, full]) == full
    assert locate_model_dir("", [empty]) is None


class _EmbeddingsApi(BaseHTTPRequestHandler):
    """POST /v1/embeddings like OpenAI: data items with index and embedding, out of order."""

    requests: list[dict[str, Any]]
    status: int = 200
    dimensions_override: int | None = None

    def do_POST(self) -> None:  # -- the http.server API
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        type(self).requests.append({"path": self.path, "auth": self.headers.get("authorization"), "body": body})
        if self.status != 200:
            reply: dict[str, Any] = {"error": {"message": "upstream trouble", "type": "server_error"}}
        else:
            size = self.dimensions_override or body["dimensions"]
            data = [
                {"object": "embedding", "index": i, "embedding": [float(len(text)), float(i)] + [0.0] * (size - 2)}
                for i, text in enumerate(body["input"])
            ]
            reply = {
                "object": "list",
                "data": data[::-1],
                "model": body["model"],
                "usage": {"prompt_tokens": 1, "total_tokens": 1},
            }
        encoded = json.dumps(reply).encode()
        self.send_response(self.status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(encoded)))
        self.end_headers()
        self.wfile.write(encoded)

    def log_message(self, format: str, *args: Any) -> None:  # -- the http.server API
        return


@pytest.fixture()
def api() -> Iterator[tuple[str, type[_EmbeddingsApi]]]:
    handler = type("Handler", (_EmbeddingsApi,), {"requests": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1", handler
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


async def test_openai_embeddings_asks_for_384_dimensions_and_keeps_the_order(
    api: tuple[str, type[_EmbeddingsApi]],
) -> None:
    url, handler = api
    client = OpenAIEmbeddings(api_key="sk-test-key", base_url=url)
    try:
        texts = [f"text {'x' * i}" for i in range(300)] + [""]
        vectors = await client.embed(texts)
    finally:
        await client.aclose()
    assert client.model == "text-embedding-3-small@384"
    assert [v[0] for v in vectors] == [float(len(t) or 1) for t in texts]
    assert all(len(v) == 384 for v in vectors)
    assert [len(r["body"]["input"]) for r in handler.requests] == [256, 45]
    first = handler.requests[0]
    assert first["path"] == "/v1/embeddings"
    assert first["auth"] == "Bearer sk-test-key"
    assert {k: first["body"][k] for k in ("model", "dimensions", "encoding_format")} == {
        "model": "text-embedding-3-small",
        "dimensions": 384,
        "encoding_format": "float",
    }
    assert handler.requests[1]["body"]["input"][-1] == " "


async def test_openai_errors_make_embeddings_unavailable_without_the_key(api: tuple[str, type[_EmbeddingsApi]]) -> None:
    url, handler = api
    handler.status = 503
    client = OpenAIEmbeddings(api_key="sk-secret-value", base_url=url, max_retries=0)
    try:
        with pytest.raises(EmbeddingsUnavailable, match="answered 503") as caught:
            await client.embed(["x"])
    finally:
        await client.aclose()
    assert "sk-secret" not in str(caught.value.body())


async def test_vectors_of_the_wrong_size_are_refused(api: tuple[str, type[_EmbeddingsApi]]) -> None:
    url, handler = api
    handler.dimensions_override = 1536
    client = OpenAIEmbeddings(api_key="k", base_url=url)
    try:
        with pytest.raises(EmbeddingsUnavailable, match="wrong number or size"):
            await client.embed(["x"])
    finally:
        await client.aclose()


async def test_an_unreachable_api_makes_embeddings_unavailable() -> None:
    client = OpenAIEmbeddings(api_key="k", base_url="http://127.0.0.1:1/v1", max_retries=0, timeout_seconds=2)
    try:
        with pytest.raises(EmbeddingsUnavailable, match="could not be reached"):
            await client.embed(["x"])
    finally:
        await client.aclose()

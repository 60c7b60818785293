"""The object store against the real S3-compatible server, and the in-memory twin's contract."""

from __future__ import annotations

import pytest

from pm_errors import NotFound, Unavailable
from pm_storage import InMemoryObjectStore, ObjectStore, S3ObjectStore
from pm_testing import fresh_bucket, stack_env, unique_name


def _s3(bucket: str) -> S3ObjectStore:
    return S3ObjectStore(bucket, endpoint_url=stack_env().s3_endpoint, access_key_id="test", secret_access_key="test")


async def _exercise_versions(store: ObjectStore) -> None:
    first = await store.put(
        "reports/i-1/report.md", b"# v1", content_type="text/markdown", metadata={"verdict": "INCONCLUSIVE"}
    )
    second = await store.put("reports/i-1/report.md", b"# v2", content_type="text/markdown")
    assert first.version_id != second.version_id
    latest = await store.get("reports/i-1/report.md")
    assert latest.data == b"# v2"
    assert latest.content_type == "text/markdown"
    old = await store.get("reports/i-1/report.md", version_id=first.version_id)
    assert old.data == b"# v1"
    assert old.metadata == {"verdict": "INCONCLUSIVE"}
    assert await store.exists("reports/i-1/report.md")
    assert not await store.exists("reports/i-1/missing.md")
    with pytest.raises(NotFound):
        await store.get("reports/i-1/missing.md")


async def test_s3_store_keeps_every_version() -> None:
    with fresh_bucket(stack_env()) as bucket:
        store = _s3(bucket)
        await store.ping()
        await _exercise_versions(store)


async def test_in_memory_store_behaves_like_s3() -> None:
    await _exercise_versions(InMemoryObjectStore())


async def test_ensure_bucket_creates_a_versioned_bucket() -> None:
    store = _s3(unique_name("pm-test-ensure-"))
    await store.ensure_bucket()
    await store.ensure_bucket()
    await _exercise_versions(store)


async def test_unreachable_endpoint_is_unavailable() -> None:
    store = S3ObjectStore(
        "b", endpoint_url="http://127.0.0.1:1", access_key_id="x", secret_access_key="y", timeout_seconds=1
    )
    with pytest.raises(Unavailable):
        await store.ping()

"""The backup and recovery drill, as a test: what an operator does after losing the database or a
report, on the real PostgreSQL 16 and the versioned S3-compatible bucket.

1. A completed investigation exists (run through orchestrator, worker and registry).
2. `pg_dump -Fc` of the database, `pg_restore` into a fresh one: the investigation, its report,
   hypotheses, steps and tool-call audit are all there, and the report's S3 reference resolves.
3. The report object is deleted: the bucket keeps its version, which is read back by version id
   and restored as the current object.
(Redis lost with investigations in flight is the reconciler's test in engine_test.py.)
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import asyncpg
import boto3
import pytest

from integration.engine_test import SCENARIO, _engine, _submit, _until_done
from integration.sandbox import registry_config
from pm_testing import stack_env


async def _run(program: Path, *args: str) -> None:
    """Run one of PostgreSQL's tools; fail the test with its output when it fails."""
    process = await asyncio.create_subprocess_exec(
        str(program), *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    async with asyncio.timeout(120):
        output, _ = await process.communicate()
    assert process.returncode == 0, f"{program.name} failed: {output.decode(errors='replace')[-2000:]}"


TABLES = ("investigations", "reports", "hypotheses", "investigation_steps", "agent_runs", "mcp_tool_calls")


async def test_a_dump_restores_every_investigation_and_a_deleted_report_comes_back_by_version(tmp_path: Path) -> None:
    env = stack_env()
    async with _engine(tmp_path, registry_config(SCENARIO)) as stack:
        investigation_id = await _submit(stack, "DR-1")
        row = await _until_done(stack, investigation_id)
        assert row["status"] == "completed", row["error"]
        before = {t: await stack.db.fetchval(f"SELECT count(*) FROM {t}") for t in TABLES}  # - fixed names
        report = await stack.db.fetchrow(
            "SELECT markdown, markdown_uri, object_version_id FROM reports WHERE investigation_id = $1::uuid",
            investigation_id,
        )

        # 2. Dump, restore into a fresh database, read it back.
        dump = tmp_path / "pm.dump"
        await _run(env.pg_bin / "pg_dump", "-Fc", "-f", str(dump), stack.dsn)
        restored_name = f"pm_restore_{uuid.uuid4().hex[:8]}"
        admin = await asyncpg.connect(env.pg_admin_dsn)
        try:
            await admin.execute(f'CREATE DATABASE "{restored_name}"')
            restored_dsn = env.dsn_for(restored_name)
            await _run(env.pg_bin / "pg_restore", "--no-owner", "--exit-on-error", "-d", restored_dsn, str(dump))
            restored = await asyncpg.connect(restored_dsn)
            try:
                after = {t: await restored.fetchval(f"SELECT count(*) FROM {t}") for t in TABLES}
                assert after == before
                back = await restored.fetchrow(
                    "SELECT i.status, i.verdict, r.markdown, r.markdown_uri, r.object_version_id"
                    " FROM investigations i JOIN reports r ON r.investigation_id = i.id WHERE i.id = $1::uuid",
                    investigation_id,
                )
                assert (back["status"], back["verdict"]) == ("completed", row["verdict"])
                assert back["markdown"] == report["markdown"]
                # The restored row's reference still names the stored report, version included.
                key = back["markdown_uri"].split("/", 3)[3].partition("?")[0]
                stored = await stack.store.get(key, version_id=back["object_version_id"])
                assert stored.data.decode() == report["markdown"]
            finally:
                await restored.close()
        finally:
            await admin.execute(f'DROP DATABASE IF EXISTS "{restored_name}" WITH (FORCE)')
            await admin.close()

        # 3. The report deleted from the bucket: versioning keeps it; read it by version and restore it.
        s3 = boto3.client(
            "s3",
            endpoint_url=env.s3_endpoint,
            region_name="us-east-1",
            aws_access_key_id="test",
            aws_secret_access_key="test",
        )
        bucket = stack.store.bucket
        s3.delete_object(Bucket=bucket, Key=key)
        with pytest.raises(s3.exceptions.ClientError):
            s3.head_object(Bucket=bucket, Key=key)
        versions = s3.list_object_versions(Bucket=bucket, Prefix=key)
        assert report["object_version_id"] in {v["VersionId"] for v in versions.get("Versions", [])}
        assert versions.get("DeleteMarkers"), "the delete left a marker, not a hole"
        old = s3.get_object(Bucket=bucket, Key=key, VersionId=report["object_version_id"])["Body"].read()
        assert old.decode() == report["markdown"]
        s3.copy_object(
            Bucket=bucket, Key=key, CopySource={"Bucket": bucket, "Key": key, "VersionId": report["object_version_id"]}
        )
        current = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        assert current.decode() == report["markdown"]

"""The code tools over a real directory: listings, reads, caps, and every way out of the root refused;
then both tools over a real MCP session, offered only with --repository."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from mcp import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client

from pm_sandbox.data import QueryError
from pm_sandbox.fixture import write_snapshot
from pm_sandbox.repository import Repository

CHILD_ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}


@pytest.fixture()
def tree(tmp_path: Path) -> Path:
    """A repository next to a secret it must never reveal, with links inside and outside."""
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.txt").write_text("TOP-SECRET")
    repo = tmp_path / "repo"
    (repo / "services" / "api").mkdir(parents=True)
    (repo / "services" / "api" / "go.mod").write_text("module example.com/api\n\ngo 1.22\n")
    (repo / "README.md").write_text("# demo\n")
    (repo / ".git").mkdir()
    (repo / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (repo / "link-out").symlink_to(tmp_path / "outside")
    (repo / "secret-link").symlink_to(tmp_path / "outside" / "secret.txt")
    (repo / "api-link").symlink_to(repo / "services" / "api")
    (repo / "logo.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00")
    return repo


def test_a_listing_names_each_entry_with_its_type_and_size(tree: Path) -> None:
    listed = Repository(tree).list_files("")
    assert listed["path"] == ""
    assert listed["entries"] == [
        {"name": "README.md", "type": "file", "size": 7},
        {"name": "api-link", "type": "dir"},
        {"name": "link-out", "type": "symlink"},
        {"name": "logo.png", "type": "file", "size": 11},
        {"name": "secret-link", "type": "symlink"},
        {"name": "services", "type": "dir"},
    ]  # .git is left out; links leading outside are shown, never followed
    assert Repository(tree).list_files("services/api/")["entries"] == [{"name": "go.mod", "type": "file", "size": 32}]
    assert Repository(tree).list_files("./services")["path"] == "services"
    capped = Repository(tree).list_files("", limit=2)
    assert (capped["total"], capped["truncated"], len(capped["entries"])) == (6, True, 2)


def test_a_file_is_read_as_text_and_cut_with_a_marker(tree: Path) -> None:
    repo = Repository(tree)
    assert repo.get_file_contents("services/api/go.mod")["text"].startswith("module example.com/api")
    assert repo.get_file_contents("api-link/go.mod")["size"] == 32  # a link inside the root is followed
    cut = repo.get_file_contents("services/api/go.mod", max_bytes=6)
    assert cut["truncated"] is True
    assert cut["text"] == "module\n[TRUNCATED: 26 of 32 bytes omitted]"
    with pytest.raises(QueryError, match="binary file"):
        repo.get_file_contents("logo.png")
    with pytest.raises(QueryError, match="is a directory"):
        repo.get_file_contents("services")
    with pytest.raises(QueryError, match="not a directory"):
        repo.list_files("README.md")
    with pytest.raises(QueryError, match="no such file"):
        repo.get_file_contents("services/web/package.json")
    with pytest.raises(QueryError, match="max_bytes"):
        repo.get_file_contents("README.md", max_bytes=0)


@pytest.mark.parametrize(
    "path",
    [
        "..",
        "../outside/secret.txt",
        "services/../../outside/secret.txt",
        "services/api/../../..",
        "/etc/passwd",
        str(Path("/").resolve()),
        "secret-link",
        "link-out/secret.txt",
        "link-out",
        "..\\outside\\secret.txt",
        "README.md\x00.txt",
    ],
)
def test_no_path_leaves_the_repository(tree: Path, path: str) -> None:
    repo = Repository(tree)
    with pytest.raises(QueryError) as read:
        repo.get_file_contents(path)
    with pytest.raises(QueryError) as listed:
        repo.list_files(path)
    for refused in (read.value, listed.value):
        assert "TOP-SECRET" not in str(refused)
        assert any(word in str(refused) for word in ("outside", "relative", "'..'", "NUL")), str(refused)


def test_a_fifo_is_refused_without_blocking(tree: Path) -> None:
    os.mkfifo(tree / "pipe")
    with pytest.raises(QueryError, match="not a regular file"):
        Repository(tree).get_file_contents("pipe")


def test_a_repository_must_be_an_existing_directory(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        Repository(tmp_path / "missing")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="not a directory"):
        Repository(tmp_path / "file")


async def test_the_code_tools_are_served_over_mcp_only_with_a_repository(tmp_path: Path, tree: Path) -> None:
    snapshot = write_snapshot(tmp_path / "case")
    for extra, expected in (([], False), (["--repository", str(tree)], True)):
        params = StdioServerParameters(
            command=sys.executable, args=["-m", "pm_sandbox", "--data", str(snapshot), *extra], env=CHILD_ENV
        )
        async with stdio_client(params) as streams, ClientSession(streams[0], streams[1]) as session:
            await session.initialize()
            names = {t.name for t in (await session.list_tools()).tools}
            assert ({"list_files", "get_file_contents"} <= names) is expected
            if not expected:
                continue
            listed = await session.call_tool("list_files", {"path": "services"})
            assert listed.structured_content == {
                "path": "services",
                "total": 1,
                "truncated": False,
                "entries": [{"name": "api", "type": "dir"}],
            }
            escaped = await session.call_tool("get_file_contents", {"path": "../outside/secret.txt"})
            assert escaped.is_error
            assert "'..'" in escaped.content[0].text  # type: ignore[union-attr]
            assert "TOP-SECRET" not in escaped.content[0].text  # type: ignore[union-attr]

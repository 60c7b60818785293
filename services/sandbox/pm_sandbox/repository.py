"""A source repository on disk, read-only, for the code tools (`--repository DIR`).

`list_files` lists one directory and `get_file_contents` returns the text of one file. Every
path is relative to the repository root and is resolved strictly inside it: absolute paths,
`..` segments, NUL bytes and symlinks whose target lies outside the root are refused with a
QueryError naming the problem, before anything outside the root is opened. A listing shows such
a symlink as type `symlink` without following it. Only regular files are read (never a FIFO or
a device), and a file is cut at `max_bytes` with a marker saying how much was left out.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path, PurePosixPath
from typing import Any

from pm_sandbox.data import QueryError

MAX_ENTRIES = 2000
MAX_FILE_BYTES = 200_000
# Version-control internals are not part of the code.
_HIDDEN = frozenset({".git", ".hg", ".svn"})
_BINARY_SNIFF = 8192


class Repository:
    """The tree under `root`, answering the code tools."""

    def __init__(self, root: str | Path) -> None:
        resolved = Path(root).resolve(strict=True)
        if not resolved.is_dir():
            raise ValueError(f"repository {root} is not a directory")
        self.root = resolved

    def _inside(self, path: Path) -> bool:
        return path == self.root or self.root in path.parents

    def _resolve(self, path: str) -> tuple[str, Path]:
        """(the normalised relative path, the real path inside the root), or QueryError."""
        if "\x00" in path:
            raise QueryError("path must not contain NUL bytes")
        text = path.strip()
        relative = PurePosixPath(text) if text not in ("", ".") else PurePosixPath()
        if relative.is_absolute() or "\\" in text:
            raise QueryError(f"path must be relative to the repository root, got {path[:200]!r}")
        if ".." in relative.parts:
            raise QueryError(f"path must not contain '..', got {path[:200]!r}")
        real = self.root.joinpath(*relative.parts).resolve(strict=False)
        if not self._inside(real):
            raise QueryError(f"{path[:200]!r} leads outside the repository through a symlink")
        if not real.exists():
            raise QueryError(f"no such file or directory: {str(relative)[:200]!r}")
        return ("" if str(relative) == "." else str(relative)), real

    def list_files(self, path: str = "", limit: int = 500) -> dict[str, Any]:
        """The entries of one directory of the repository ("" is the root): name, type (dir, file
        or symlink for a link leading outside the repository) and size in bytes of files."""
        if not 1 <= limit <= MAX_ENTRIES:
            raise QueryError(f"limit must be between 1 and {MAX_ENTRIES}")
        shown, real = self._resolve(path)
        if not real.is_dir():
            raise QueryError(f"{shown!r} is a file, not a directory: read it with get_file_contents")
        entries: list[dict[str, Any]] = []
        for child in sorted(real.iterdir(), key=lambda p: p.name):
            if child.name in _HIDDEN:
                continue
            target = child.resolve(strict=False)
            if child.is_symlink() and not self._inside(target):
                entries.append({"name": child.name, "type": "symlink"})
            elif target.is_dir():
                entries.append({"name": child.name, "type": "dir"})
            elif target.is_file():
                entries.append({"name": child.name, "type": "file", "size": target.stat().st_size})
        return {
            "path": shown,
            "total": len(entries),
            "truncated": len(entries) > limit,
            "entries": entries[:limit],
        }

    def get_file_contents(self, path: str, max_bytes: int = 50_000) -> dict[str, Any]:
        """The text of one file of the repository, cut at `max_bytes` with a truncation marker."""
        if not 1 <= max_bytes <= MAX_FILE_BYTES:
            raise QueryError(f"max_bytes must be between 1 and {MAX_FILE_BYTES}")
        shown, real = self._resolve(path)
        if real.is_dir():
            raise QueryError(f"{shown!r} is a directory: list it with list_files")
        # The real path has no symlink left; O_NOFOLLOW refuses one swapped in since, and
        # O_NONBLOCK keeps a FIFO from blocking before fstat rejects it.
        try:
            fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError as exc:
            raise QueryError(f"cannot open {shown!r}: {exc.strerror}") from None
        with os.fdopen(fd, "rb") as handle:
            info = os.fstat(handle.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise QueryError(f"{shown!r} is not a regular file")
            data = handle.read(max_bytes + 1)
        if b"\x00" in data[:_BINARY_SNIFF]:
            raise QueryError(f"{shown!r} is a binary file")
        truncated = info.st_size > max_bytes
        text = data[:max_bytes].decode("utf-8", errors="replace")
        if truncated:
            text += f"\n[TRUNCATED: {info.st_size - max_bytes} of {info.st_size} bytes omitted]"
        return {"path": shown, "size": info.st_size, "truncated": truncated, "text": text}

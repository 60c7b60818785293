"""Discovery over in-memory repositories: what each layout yields, with its evidence, and what
bounds and failures leave undetected (said plainly, never guessed)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pm_orchestrator.discovery import (
    DETECTED,
    NOT_DETECTED,
    PARTIAL,
    UNKNOWN,
    Discovery,
    Entry,
    Limits,
    ReadFailed,
    discover,
)


class Tree:
    """A repository as {path: file text}; directories are implied. Listings and reads are counted."""

    def __init__(self, files: Mapping[str, str], *, failing: Sequence[str] = ()) -> None:
        self.files = dict(files)
        self.failing = set(failing)
        self.listed: list[str] = []
        self.read_paths: list[str] = []

    async def list(self, path: str) -> Sequence[Entry]:
        self.listed.append(path)
        if path in self.failing:
            raise ReadFailed("sandbox/list_files answered timeout")
        prefix = f"{path}/" if path else ""
        entries: dict[str, str] = {}
        for file in self.files:
            if file.startswith(prefix):
                head, sep, _ = file[len(prefix) :].partition("/")
                entries[head] = "dir" if sep else "file"
        if path and not entries:
            raise ReadFailed(f"no such directory {path}")
        return [Entry(name, kind) for name, kind in sorted(entries.items())]

    async def read(self, path: str) -> str:
        self.read_paths.append(path)
        if path in self.failing:
            raise ReadFailed("sandbox/get_file_contents answered tool_error: boom")
        return self.files[path]


def evidence(found: Discovery, fact: str) -> dict[str, tuple[str, ...]]:
    return {f.value: f.files for f in found.facts if f.fact == fact}


POLYGLOT = {
    "package.json": '{"private": true}',
    "pnpm-lock.yaml": "lockfileVersion: '9.0'\n",
    "pnpm-workspace.yaml": "packages: ['services/*']\n",
    "Makefile": "all:\n",
    "docs/architecture.md": "# how\n",
    "node_modules/left-pad/package.json": "{}",
    "services/payments/go.mod": "module example.com/payments\n",
    "services/payments/main.go": "package main\n",
    "services/payments/internal/retry/retry.go": "package retry\n",
    "services/payments/Dockerfile": "FROM golang\n",
    "services/web/package.json": '{"name": "web"}',
    "services/web/tsconfig.json": "{}",
    "services/web/src/index.ts": "export {}\n",
    "services/web/Dockerfile": "FROM node\n",
    "services/ledger/pyproject.toml": '[tool.poetry]\nname = "ledger"\n',
    "services/ledger/ledger/__init__.py": "",
    "services/ledger/Dockerfile": "FROM python\n",
    "services/README.md": "services\n",
}


async def test_a_polyglot_monorepo_yields_each_service_with_its_language_and_build_system() -> None:
    tree = Tree(POLYGLOT)
    found = await discover(tree, "shop")
    assert found.status == DETECTED, found.limitations
    # services/payments/internal/retry/ is one level too deep: noted, not a failure.
    assert found.limitations == ("Directories more than 3 levels below the root were not listed.",)
    assert {s.name: (s.path, s.language, s.build_system) for s in found.services} == {
        "ledger": ("services/ledger", "python", "poetry"),
        "payments": ("services/payments", "go", "go modules"),
        "web": ("services/web", "typescript", "pnpm"),
    }
    assert found.monorepo
    # The workspace root's package manager comes first, then the services' in path order (one
    # service each); Make is not a build system here.
    assert found.build_systems == ("pnpm", "poetry", "go modules")
    assert set(found.languages) == {"typescript", "go", "python"}
    assert found.language == "typescript"  # two package.json manifests against one go.mod and one pyproject
    assert evidence(found, "build_system")["pnpm"] == ("package.json", "pnpm-lock.yaml", "services/web/package.json")
    assert evidence(found, "build_system")["poetry"] == ("services/ledger/pyproject.toml",)
    assert evidence(found, "language")["go"] == ("services/payments/go.mod",)
    assert evidence(found, "service")["web"] == (
        "pnpm-lock.yaml",
        "services/web/Dockerfile",
        "services/web/package.json",
        "services/web/tsconfig.json",
    )
    assert "services/ledger/pyproject.toml" in found.evidence_files
    # Only the pyproject needed reading (no lockfile names Poetry); node_modules was never listed.
    assert tree.read_paths == ["services/ledger/pyproject.toml"]
    assert found.reads == 1
    assert not any(p.startswith("node_modules") for p in tree.listed)
    assert found.listings == len(tree.listed)


async def test_a_go_repository_with_commands_has_one_service_per_command() -> None:
    found = await discover(
        Tree(
            {
                "go.mod": "module example.com/tool\n",
                "go.sum": "",
                "cmd/api/main.go": "package main\n",
                "cmd/worker/main.go": "package main\n",
                "internal/store/store.go": "package store\n",
            }
        ),
        "tool",
    )
    assert found.status == DETECTED
    assert [(s.name, s.language, s.build_system) for s in found.services] == [
        ("api", "go", "go modules"),
        ("worker", "go", "go modules"),
    ]
    assert evidence(found, "service")["api"] == ("cmd/api/main.go", "go.mod")  # the module above builds it
    assert found.build_systems == ("go modules",)
    assert found.monorepo


async def test_a_single_maven_project_is_one_service_named_after_the_repository_with_its_group() -> None:
    pom = """<project>
      <parent><groupId>org.springframework.boot</groupId><artifactId>parent</artifactId></parent>
      <groupId>com.acme.billing</groupId>
      <artifactId>billing</artifactId>
      <dependencies><dependency><groupId>io.micrometer</groupId></dependency></dependencies>
    </project>"""
    tree = Tree({"pom.xml": pom, "Dockerfile": "FROM eclipse-temurin\n", "src/main/App.java": "class App {}\n"})
    found = await discover(tree, "billing")
    assert [(s.name, s.path, s.language, s.build_system) for s in found.services] == [("billing", "", "java", "maven")]
    assert not found.monorepo
    assert (found.artifact_group, found.artifact_group_file) == ("com.acme.billing", "pom.xml")
    assert evidence(found, "artifact_prefix") == {"com.acme.billing": ("pom.xml",)}
    assert tree.read_paths == ["pom.xml"]


async def test_a_repository_wide_build_tool_comes_first() -> None:
    found = await discover(
        Tree(
            {
                "pants.toml": "[GLOBAL]\n",
                "services/api/pyproject.toml": '[build-system]\nbuild-backend = "setuptools.build_meta"\n',
                "services/api/Dockerfile": "FROM python\n",
                "services/jobs/requirements.txt": "redis\n",
                "services/jobs/Dockerfile": "FROM python\n",
            }
        ),
        "platform",
    )
    assert found.build_systems == ("pants", "setuptools", "pip")
    assert evidence(found, "build_system")["pants"] == ("pants.toml",)
    assert found.language == "python"


async def test_a_package_json_without_lockfile_is_read_for_its_package_manager_and_typescript() -> None:
    tree = Tree(
        {
            "package.json": '{"packageManager": "yarn@4.1.0", "devDependencies": {"typescript": "5.4.0"}}',
            "index.js": "",
        }
    )
    found = await discover(tree, "site")
    assert (found.language, found.build_system) == ("typescript", "yarn")
    assert tree.read_paths == ["package.json"]


async def test_when_the_root_cannot_be_listed_nothing_is_detected_and_the_reason_is_given() -> None:
    found = await discover(Tree(POLYGLOT, failing=[""]), "shop")
    assert found.status == NOT_DETECTED
    assert (found.language, found.build_system, found.services, found.facts) == (UNKNOWN, UNKNOWN, (), ())
    assert found.limitations == ("The repository root could not be listed: sandbox/list_files answered timeout.",)


async def test_failed_listings_and_reads_leave_a_partial_result_that_says_what_is_missing() -> None:
    found = await discover(Tree(POLYGLOT, failing=["services/web", "services/ledger/pyproject.toml"]), "shop")
    assert found.status == PARTIAL
    assert {s.name: s.build_system for s in found.services} == {"ledger": UNKNOWN, "payments": "go modules"}
    assert "Listing services/web/ failed: sandbox/list_files answered timeout." in found.limitations
    assert any("Reading services/ledger/pyproject.toml failed" in n for n in found.limitations)
    assert "The build system of services/ledger could not be decided from what was read." in found.limitations


async def test_the_walk_stays_within_its_bounds_and_says_what_it_left_out() -> None:
    files = {f"area{i:02d}/module/deep/deeper/x.go": "package x\n" for i in range(30)}
    tree = Tree({"go.mod": "module m\n", **files})
    found = await discover(tree, "big", Limits(max_listings=10, max_depth=3))
    assert len(tree.listed) == 10 == found.listings
    assert found.status == PARTIAL
    # 21 top-level areas and the next level below the 9 that were listed.
    assert found.limitations[0] == (
        "30 directories were not listed because the walk stops after 10 listings:"
        " area09/, area10/, area11/, area12/, area13/ and 25 more."
    )
    deep = await discover(Tree({"go.mod": "module m\n", "a/b/c/d/e.go": ""}), "deep", Limits(max_depth=2))
    assert "Directories more than 2 levels below the root were not listed." in deep.limitations
    assert "a/b/c" not in deep.evidence_files


async def test_an_empty_repository_yields_no_facts_only_limitations() -> None:
    found = await discover(Tree({"README.md": "# nothing yet\n"}), "empty")
    assert found.status == DETECTED  # everything was read; there is just nothing to detect
    assert (found.languages, found.build_systems, found.services) == ((), (), ())
    assert found.limitations == (
        "No manifest or source file was found, so the language could not be detected.",
        "No build file was found, so the build system could not be detected.",
        "No service was found (no manifest or Dockerfile at the root or in a service directory).",
    )

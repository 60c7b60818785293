"""Discovery of a repository's languages, build systems and services from its file tree.

The tree is walked breadth-first through a `RepositoryReader` (directory listings), within
bounds: at most `Limits.max_listings` listings and `Limits.max_depth` levels below the root,
service directories first. A few manifests are then read (at most `Limits.max_reads`) where their
names alone do not settle a fact: a pyproject.toml names Poetry, uv, PDM, Hatch or setuptools
inside; a package.json without a lockfile names its package manager or TypeScript inside; a root
pom.xml or build.gradle names the group its artifacts belong to.

- Languages come from manifests (go.mod, package.json with tsconfig.json or TypeScript sources,
  pyproject.toml / setup.py / requirements*.txt, pom.xml, build.gradle(.kts), Cargo.toml,
  *.csproj, Gemfile, composer.json, ...) and from source file extensions.
- Build systems from the same manifests, lockfiles (pnpm, Yarn, npm, Bun, Poetry, uv, PDM) and
  repository-wide tools (Pants: pants.toml; Bazel: WORKSPACE, MODULE.bazel); Make only where
  nothing else builds.
- Services: each directory under services/, apps/, packages/ or microservices/ with its own
  manifest or Dockerfile, each cmd/<name>/ with Go sources, each top-level directory with both a
  manifest and a Dockerfile; when there are none, the repository itself when its root has a
  manifest or a Dockerfile. More than one service makes a monorepo.

Every fact names the files that justify it. Nothing is guessed: what could not be read or
decided is said in `limitations`, and the facts then rest only on what was read.
"""

from __future__ import annotations

import asyncio
import fnmatch
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

DETECTED, PARTIAL, NOT_DETECTED = "detected", "partial", "not_detected"
UNKNOWN = "unknown"

# Directories whose children are services when they have their own manifest or Dockerfile.
SERVICE_CONTAINERS = frozenset({"services", "apps", "packages", "microservices"})
# Go's layout: cmd/<name>/ holds one binary's main package.
COMMAND_CONTAINER = "cmd"
# Never walked: dependencies, build output, caches, virtual environments, VCS internals.
_SKIPPED = frozenset(
    {
        "node_modules", "vendor", "dist", "build", "target", "out", "bin", "obj", "__pycache__",
        "venv", "env", "coverage", "tmp", "third_party", "third-party", "bazel-bin", "bazel-out",
    }
)  # fmt: skip
# Walked last when the listing budget is short: rarely where services live.
_LATE = frozenset({"docs", "doc", "test", "tests", "e2e", "examples", "example", "scripts", "testdata", "fixtures"})
_NOT_SERVICES = _LATE | SERVICE_CONTAINERS | {COMMAND_CONTAINER, "deploy", "docker", "ci", "tools", "libs", "lib"}

_DOCKERFILE = ("Dockerfile", "Dockerfile.*", "*.Dockerfile", "*.dockerfile", "Containerfile")
_LOCKFILES = {
    "pnpm-lock.yaml": "pnpm",
    "yarn.lock": "yarn",
    "package-lock.json": "npm",
    "npm-shrinkwrap.json": "npm",
    "bun.lockb": "bun",
    "bun.lock": "bun",
}
_PYTHON_LOCKS = {"poetry.lock": "poetry", "uv.lock": "uv", "pdm.lock": "pdm", "Pipfile.lock": "pipenv"}
_REPOSITORY_TOOLS = {
    "pants.toml": "pants",
    "WORKSPACE": "bazel",
    "WORKSPACE.bazel": "bazel",
    "MODULE.bazel": "bazel",
}
# Manifest file name patterns -> (language, build system); None: decided by reading or context.
_MANIFESTS: tuple[tuple[str, str | None, str | None], ...] = (
    ("go.mod", "go", "go modules"),
    ("package.json", None, None),
    ("pyproject.toml", "python", None),
    ("setup.py", "python", "setuptools"),
    ("setup.cfg", "python", "setuptools"),
    ("Pipfile", "python", "pipenv"),
    ("requirements*.txt", "python", "pip"),
    ("pom.xml", None, "maven"),
    ("build.gradle", None, "gradle"),
    ("build.gradle.kts", None, "gradle"),
    ("Cargo.toml", "rust", "cargo"),
    ("*.csproj", "csharp", "dotnet"),
    ("*.fsproj", "fsharp", "dotnet"),
    ("Gemfile", "ruby", "bundler"),
    ("composer.json", "php", "composer"),
    ("mix.exs", "elixir", "mix"),
    ("build.sbt", "scala", "sbt"),
    ("Package.swift", "swift", "swiftpm"),
    ("pubspec.yaml", "dart", "pub"),
    ("CMakeLists.txt", None, "cmake"),
)
_EXTENSIONS = {
    ".go": "go", ".ts": "typescript", ".tsx": "typescript", ".mts": "typescript", ".js": "javascript",
    ".jsx": "javascript", ".mjs": "javascript", ".cjs": "javascript", ".py": "python", ".java": "java",
    ".kt": "kotlin", ".kts": "kotlin", ".rs": "rust", ".cs": "csharp", ".fs": "fsharp", ".rb": "ruby",
    ".php": "php", ".scala": "scala", ".swift": "swift", ".ex": "elixir", ".exs": "elixir", ".dart": "dart",
    ".c": "c", ".h": "c", ".cc": "c++", ".cpp": "c++", ".cxx": "c++", ".hpp": "c++",
}  # fmt: skip
# pyproject.toml contents -> build system, first match wins.
_PYPROJECT_TOOLS = (
    (re.compile(r"^\[tool\.poetry[\].]", re.M), "poetry"),
    (re.compile(r"^\[tool\.uv[\].]", re.M), "uv"),
    (re.compile(r"^\[tool\.pdm[\].]", re.M), "pdm"),
    (re.compile(r"build-backend\s*=\s*[\"']hatchling", re.M), "hatch"),
    (re.compile(r"build-backend\s*=\s*[\"']flit", re.M), "flit"),
    (re.compile(r"build-backend\s*=\s*[\"']setuptools", re.M), "setuptools"),
    (re.compile(r"build-backend\s*=\s*[\"']maturin", re.M), "maturin"),
)
_PACKAGE_MANAGER = re.compile(r"\"packageManager\"\s*:\s*\"(pnpm|yarn|npm|bun)@")
_TYPESCRIPT_DEPENDENCY = re.compile(r"\"typescript\"\s*:")
_POM_SECTIONS = re.compile(
    r"<(parent|dependencies|dependencyManagement|build|profiles|modules|reporting)\b.*?</\1>", re.S
)
_POM_GROUP = re.compile(r"<groupId>\s*([A-Za-z0-9_.-]+)\s*</groupId>")
_POM_PARENT = re.compile(r"<parent\b.*?</parent>", re.S)
_GRADLE_GROUP = re.compile(r"^\s*group\s*=\s*[\"']([A-Za-z0-9_.-]+)[\"']", re.M)


@dataclass(frozen=True, slots=True)
class Entry:
    """One entry of a directory listing."""

    name: str
    kind: str  # "dir" or "file"


class ReadFailed(Exception):
    """A listing or a read that did not succeed; the message says why, for people."""


class RepositoryReader(Protocol):
    """Reads one repository: lists directories and reads files by repository-relative path."""

    async def list(self, path: str) -> Sequence[Entry]: ...

    async def read(self, path: str) -> str: ...


@dataclass(frozen=True, slots=True)
class Limits:
    max_listings: int = 40
    max_depth: int = 3
    max_reads: int = 12
    concurrency: int = 6


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True, slots=True)
class Service:
    name: str
    path: str
    language: str
    build_system: str
    evidence: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Fact:
    """A detected fact and the files that justify it."""

    fact: str
    value: str
    files: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Discovery:
    """What discovery established, with its evidence and its limits."""

    status: str
    languages: tuple[str, ...] = ()
    build_systems: tuple[str, ...] = ()
    services: tuple[Service, ...] = ()
    facts: tuple[Fact, ...] = ()
    limitations: tuple[str, ...] = ()
    listings: int = 0
    reads: int = 0
    # The group a root pom.xml or build.gradle gives its artifacts, and the file that says so.
    artifact_group: str = ""
    artifact_group_file: str = ""

    @property
    def language(self) -> str:
        return self.languages[0] if self.languages else UNKNOWN

    @property
    def build_system(self) -> str:
        return self.build_systems[0] if self.build_systems else UNKNOWN

    @property
    def monorepo(self) -> bool:
        return len(self.services) > 1

    @property
    def evidence_files(self) -> tuple[str, ...]:
        return tuple(sorted({f for fact in self.facts for f in fact.files}))


def not_detected(*reasons: str) -> Discovery:
    """The result when the repository could not be read at all."""
    return Discovery(status=NOT_DETECTED, limitations=tuple(reasons))


def _join(directory: str, name: str) -> str:
    return f"{directory}/{name}" if directory else name


def _parent(path: str) -> str:
    return path.rpartition("/")[0]


def _matches(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def _priority(path: str) -> tuple[int, str]:
    name = path.rpartition("/")[2]
    parent = _parent(path).rpartition("/")[2]
    if name in SERVICE_CONTAINERS or name == COMMAND_CONTAINER or parent in SERVICE_CONTAINERS:
        return 0, path
    if parent == COMMAND_CONTAINER:
        return 1, path
    return (3 if name in _LATE else 2), path


@dataclass
class _Walk:
    tree: dict[str, list[Entry]] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    unlisted: list[str] = field(default_factory=list)
    too_deep: bool = False
    listings: int = 0


async def _walk(reader: RepositoryReader, limits: Limits) -> _Walk:
    walk = _Walk()
    gate = asyncio.Semaphore(limits.concurrency)

    async def listing(path: str) -> tuple[str, Sequence[Entry] | str]:
        async with gate:
            try:
                return path, await reader.list(path)
            except ReadFailed as exc:
                return path, str(exc)

    frontier, depth = [""], 0
    while frontier:
        room = limits.max_listings - walk.listings
        batch, walk.unlisted = frontier[:room], walk.unlisted + frontier[room:]
        walk.listings += len(batch)
        following: list[str] = []
        for path, result in await asyncio.gather(*(listing(p) for p in batch)):
            if isinstance(result, str):
                walk.failed[path] = result
                continue
            walk.tree[path] = list(result)
            for entry in result:
                if entry.kind != "dir" or entry.name.startswith(".") or entry.name in _SKIPPED:
                    continue
                if depth + 1 > limits.max_depth:
                    walk.too_deep = True
                    continue
                following.append(_join(path, entry.name))
        frontier, depth = sorted(following, key=_priority), depth + 1
    return walk


@dataclass
class _Context:
    """The walked tree with what has been read, for deciding facts."""

    tree: Mapping[str, list[Entry]]
    contents: dict[str, str] = field(default_factory=dict)

    def files(self, directory: str) -> list[str]:
        return [e.name for e in self.tree.get(directory, ()) if e.kind == "file"]

    def dirs(self, directory: str) -> list[str]:
        return [e.name for e in self.tree.get(directory, ()) if e.kind == "dir"]

    def ancestors(self, directory: str) -> list[str]:
        """`directory` and the directories above it, nearest first."""
        chain = [directory]
        while directory:
            directory = _parent(directory)
            chain.append(directory)
        return chain

    def nearest(self, directory: str, names: Iterable[str]) -> str | None:
        """The path of the nearest of `names` in `directory` or above it."""
        wanted = set(names)
        for place in self.ancestors(directory):
            for name in sorted(self.files(place)):
                if name in wanted:
                    return _join(place, name)
        return None

    def sources(self, directory: str) -> Counter[str]:
        """Source files per language in `directory` and every listed directory below it."""
        counts: Counter[str] = Counter()
        prefix = f"{directory}/" if directory else ""
        for place, entries in self.tree.items():
            if place == directory or place.startswith(prefix):
                for entry in entries:
                    if entry.kind == "file":
                        language = _EXTENSIONS.get(_extension(entry.name))
                        if language:
                            counts[language] += 1
        return counts


def _extension(name: str) -> str:
    dot = name.rfind(".")
    return name[dot:].lower() if dot > 0 else ""


def _manifests(names: Iterable[str]) -> list[str]:
    return sorted(n for n in names if any(fnmatch.fnmatchcase(n, pattern) for pattern, _, _ in _MANIFESTS))


def _docker(names: Iterable[str]) -> list[str]:
    return sorted(n for n in names if _matches(n, _DOCKERFILE))


@dataclass(frozen=True, slots=True)
class _Decision:
    """What one manifest says, and the files behind the language and the build system."""

    language: str
    build_system: str
    language_files: tuple[str, ...]
    build_files: tuple[str, ...]

    @property
    def files(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(self.language_files + self.build_files))


def _decide(ctx: _Context, directory: str) -> list[_Decision]:
    """Language and build system of each manifest in `directory`."""
    out: list[_Decision] = []
    for manifest in _manifests(ctx.files(directory)):
        path = _join(directory, manifest)
        pattern, language, build = next(m for m in _MANIFESTS if fnmatch.fnmatchcase(manifest, m[0]))
        language_files, build_files = [path], [path]
        if pattern == "package.json":
            build, lock = _javascript_build(ctx, directory, path)
            build_files += [lock] if lock else []
            language, tsconfig = _javascript_language(ctx, directory, path)
            language_files += [tsconfig] if tsconfig else []
        elif pattern == "pyproject.toml":
            build, lock = _python_build(ctx, directory, path)
            build_files += [lock] if lock else []
        elif pattern in ("pom.xml", "build.gradle", "build.gradle.kts", "CMakeLists.txt"):
            language = _jvm_or_native(ctx, directory, pattern)
        out.append(_Decision(language or UNKNOWN, build or UNKNOWN, tuple(language_files), tuple(build_files)))
    return out


def _javascript_build(ctx: _Context, directory: str, path: str) -> tuple[str, str | None]:
    """The package manager: the nearest lockfile (workspaces share the root's), else the
    package.json's packageManager, else npm."""
    lock = ctx.nearest(directory, _LOCKFILES)
    if lock is not None:
        return _LOCKFILES[lock.rpartition("/")[2]], lock
    managed = _PACKAGE_MANAGER.search(ctx.contents.get(path, ""))
    return (managed.group(1) if managed else "npm"), None


def _javascript_language(ctx: _Context, directory: str, path: str) -> tuple[str, str | None]:
    tsconfig = ctx.nearest(directory, ("tsconfig.json",))
    if tsconfig is not None:
        return "typescript", tsconfig
    if ctx.sources(directory)["typescript"] or _TYPESCRIPT_DEPENDENCY.search(ctx.contents.get(path, "")):
        return "typescript", None
    return "javascript", None


def _python_build(ctx: _Context, directory: str, path: str) -> tuple[str | None, str | None]:
    for name in sorted(ctx.files(directory)):
        if name in _PYTHON_LOCKS:
            return _PYTHON_LOCKS[name], _join(directory, name)
    content = ctx.contents.get(path)
    if content is None:
        return None, None
    for pattern, build in _PYPROJECT_TOOLS:
        if pattern.search(content):
            return build, None
    return "pyproject", None


def _jvm_or_native(ctx: _Context, directory: str, pattern: str) -> str:
    counts = ctx.sources(directory)
    if pattern == "CMakeLists.txt":
        return "c++" if counts["c++"] >= counts["c"] else "c"
    return "kotlin" if counts["kotlin"] > counts["java"] else "java"


def _reads_wanted(ctx: _Context) -> list[str]:
    """The manifests whose contents would settle a fact, most useful first."""
    wanted: list[str] = []
    for name in ("pom.xml", "build.gradle", "build.gradle.kts"):
        if name in ctx.files(""):
            wanted.append(name)
            break
    for directory in sorted(ctx.tree, key=lambda d: (d.count("/") if d else -1, d)):
        names = set(ctx.files(directory))
        if "pyproject.toml" in names and not names & set(_PYTHON_LOCKS):
            wanted.append(_join(directory, "pyproject.toml"))
        if "package.json" in names:
            undecided_build = ctx.nearest(directory, _LOCKFILES) is None
            undecided_language = (
                ctx.nearest(directory, ("tsconfig.json",)) is None and not ctx.sources(directory)["typescript"]
            )
            if undecided_build or undecided_language:
                wanted.append(_join(directory, "package.json"))
    return wanted


def _artifact_group(ctx: _Context) -> tuple[str, str]:
    for name in ("pom.xml", "build.gradle", "build.gradle.kts"):
        content = ctx.contents.get(name)
        if content is None:
            continue
        if name == "pom.xml":
            own = _POM_GROUP.search(_POM_SECTIONS.sub("", content))
            parent = _POM_PARENT.search(content)
            inherited = _POM_GROUP.search(parent.group(0)) if parent else None
            found = own or inherited
        else:
            found = _GRADLE_GROUP.search(content)
        if found:
            return found.group(1), name
    return "", ""


def _service_candidates(ctx: _Context) -> list[tuple[str, list[str]]]:
    """(directory, files that make it a service) for each service directory found."""
    found: list[tuple[str, list[str]]] = []
    for directory in sorted(ctx.tree):
        # A service's own subdirectories (its cmd/, its packages/) belong to it.
        if not directory or any(directory.startswith(f"{d}/") for d, _ in found):
            continue
        name = directory.rpartition("/")[2]
        parent = _parent(directory).rpartition("/")[2]
        if directory.count("/") > 2:
            continue
        files = ctx.files(directory)
        markers = [_join(directory, f) for f in _manifests(files) + _docker(files)]
        if parent in SERVICE_CONTAINERS and markers:
            found.append((directory, markers))
        elif parent == COMMAND_CONTAINER:
            go = sorted(f for f in files if f.endswith(".go"))
            if go or markers:
                found.append((directory, markers or [_join(directory, go[0])]))
        elif "/" not in directory and name not in _NOT_SERVICES and _manifests(files) and _docker(files):
            found.append((directory, markers))
    return found


def _service(ctx: _Context, directory: str, name: str, markers: list[str]) -> Service:
    """A service with the language and build system of its nearest manifest (its own, or the
    one above it for a cmd/<name>/)."""
    decisions: list[_Decision] = []
    for place in ctx.ancestors(directory):
        decisions = _decide(ctx, place)
        if decisions:
            break
    counts = ctx.sources(directory)
    if decisions and place != directory and counts:
        # A manifest above only speaks for sources in its own language (root go.mod for cmd/x).
        decisions = [d for d in decisions if d.language == counts.most_common(1)[0][0]]
    evidence = list(markers)
    language = build = UNKNOWN
    if decisions:
        # The manifest with the most specific answer: a known language and build system first.
        best = sorted(decisions, key=lambda d: (d.language == UNKNOWN, d.build_system == UNKNOWN))[0]
        language, build = best.language, best.build_system
        evidence += [f for f in best.files if f not in evidence]
    elif counts:
        language = counts.most_common(1)[0][0]
    return Service(name, directory, language, build, tuple(sorted(evidence)))


def _names(directories: Sequence[str]) -> dict[str, str]:
    """A unique service name per directory: its own name, or its path with dashes when that repeats."""
    last = Counter(d.rpartition("/")[2] for d in directories)
    return {d: d.rpartition("/")[2] if last[d.rpartition("/")[2]] == 1 else d.replace("/", "-") for d in directories}


def _services(ctx: _Context, repo: str) -> list[Service]:
    candidates = _service_candidates(ctx)
    names = _names([d for d, _ in candidates])
    services = [_service(ctx, d, names[d], markers) for d, markers in candidates]
    root = ctx.files("")
    if not services and (_manifests(root) or _docker(root)):
        services = [_service(ctx, "", repo, _manifests(root) + _docker(root))]
    return services


def _languages(ctx: _Context, services: Sequence[Service]) -> list[Fact]:
    """Every language, ordered by the services written in it, then manifests, then source files."""
    manifests: dict[str, list[str]] = {}
    for directory in ctx.tree:
        for decision in _decide(ctx, directory):
            if decision.language != UNKNOWN:
                manifests.setdefault(decision.language, []).extend(decision.language_files)
    counts = ctx.sources("")
    by_service = Counter(s.language for s in services)
    ordered = sorted(
        set(manifests) | set(counts),
        key=lambda lang: (-by_service[lang], -len(manifests.get(lang, ())), -counts[lang], lang),
    )
    return [Fact("language", lang, tuple(sorted(set(manifests.get(lang) or _samples(ctx, lang))))) for lang in ordered]


def _build_systems(ctx: _Context, services: Sequence[Service]) -> list[Fact]:
    """Every build system: a repository-wide tool first, then the root's manifests, then the
    services' by how many use each; Make only when nothing else builds."""
    root = ctx.files("")
    builds: dict[str, list[str]] = {}
    for name, tool in _REPOSITORY_TOOLS.items():
        if name in root:
            builds.setdefault(tool, []).append(name)
    for decision in _decide(ctx, ""):
        if decision.build_system != UNKNOWN:
            builds.setdefault(decision.build_system, []).extend(decision.build_files)
    head = list(builds)
    used = Counter(s.build_system for s in services)
    for service in services:
        for decision in _decide(ctx, service.path) if service.path else ():
            if decision.build_system == service.build_system:
                builds.setdefault(decision.build_system, []).extend(decision.build_files)
        if service.build_system != UNKNOWN and service.build_system not in builds:
            # A cmd/<name>/ built by the manifest above it.
            builds[service.build_system] = [
                f for f in service.evidence if not _matches(f.rpartition("/")[2], _DOCKERFILE)
            ]
    if not builds and "Makefile" in root:
        builds["make"] = ["Makefile"]
    seen = list(builds)
    rest = sorted((b for b in seen if b not in head), key=lambda b: (-used[b], seen.index(b)))
    return [Fact("build_system", b, tuple(sorted(set(builds[b])))) for b in head + rest]


def decide(tree: Mapping[str, list[Entry]], contents: Mapping[str, str], repo: str) -> Discovery:
    """The facts a walked tree and the manifests read from it establish (status and limits aside)."""
    ctx = _Context(tree, dict(contents))
    services = _services(ctx, repo)
    languages = _languages(ctx, services)
    builds = _build_systems(ctx, services)
    facts = [*languages, *builds, *(Fact("service", s.name, s.evidence) for s in services)]
    group, group_file = _artifact_group(ctx)
    if group:
        facts.append(Fact("artifact_prefix", group, (group_file,)))
    return Discovery(
        status=DETECTED,
        languages=tuple(f.value for f in languages),
        build_systems=tuple(f.value for f in builds),
        services=tuple(services),
        facts=tuple(facts),
        artifact_group=group,
        artifact_group_file=group_file,
    )


def _some(items: Iterable[str], shown: int = 5) -> str:
    """The first few of `items`, then how many more there are."""
    every = list(items)
    head = ", ".join(every[:shown])
    return head + (f" and {len(every) - shown} more" if len(every) > shown else "")


def _samples(ctx: _Context, language: str, limit: int = 3) -> list[str]:
    found: list[str] = []
    for place in sorted(ctx.tree):
        for name in sorted(ctx.files(place)):
            if _EXTENSIONS.get(_extension(name)) == language:
                found.append(_join(place, name))
                if len(found) == limit:
                    return found
    return found


async def discover(reader: RepositoryReader, repo: str, limits: Limits = DEFAULT_LIMITS) -> Discovery:
    """Walk the repository within `limits`, read the manifests that matter, and decide the facts."""
    walk = await _walk(reader, limits)
    if "" not in walk.tree:
        reason = walk.failed.get("", "no answer")
        return Discovery(
            status=NOT_DETECTED,
            limitations=(f"The repository root could not be listed: {reason}.",),
            listings=walk.listings,
        )
    limitations: list[str] = []
    for path, reason in sorted(walk.failed.items()):
        limitations.append(f"Listing {path}/ failed: {reason}.")
    if walk.unlisted:
        limitations.append(
            f"{len(walk.unlisted)} directories were not listed because the walk stops after"
            f" {limits.max_listings} listings: {_some(f'{p}/' for p in walk.unlisted)}."
        )

    ctx = _Context(walk.tree)
    wanted = _reads_wanted(ctx)
    reading, skipped = wanted[: limits.max_reads], wanted[limits.max_reads :]
    gate = asyncio.Semaphore(limits.concurrency)

    async def read(path: str) -> tuple[str, str | None, str]:
        async with gate:
            try:
                return path, await reader.read(path), ""
            except ReadFailed as exc:
                return path, None, str(exc)

    contents: dict[str, str] = {}
    for path, text, reason in await asyncio.gather(*(read(p) for p in reading)):
        if text is None:
            limitations.append(f"Reading {path} failed: {reason}.")
        else:
            contents[path] = text
    if skipped:
        limitations.append(
            f"{len(skipped)} manifests were not read because discovery reads at most {limits.max_reads}:"
            f" {_some(skipped)}."
        )
    # Everything within the bounds was read when nothing was noted so far. The depth bound is
    # by design (services live near the root), so it is noted without making the result partial.
    complete = not limitations
    if walk.too_deep:
        limitations.append(f"Directories more than {limits.max_depth} levels below the root were not listed.")
    found = decide(walk.tree, contents, repo)
    if not found.languages:
        limitations.append("No manifest or source file was found, so the language could not be detected.")
    if not found.build_systems:
        limitations.append("No build file was found, so the build system could not be detected.")
    if not found.services:
        limitations.append("No service was found (no manifest or Dockerfile at the root or in a service directory).")
    undecided = [s.path or "the root" for s in found.services if s.build_system == UNKNOWN]
    if undecided:
        limitations.append(f"The build system of {', '.join(undecided)} could not be decided from what was read.")
    return Discovery(
        status=DETECTED if complete else PARTIAL,
        languages=found.languages,
        build_systems=found.build_systems,
        services=found.services,
        facts=found.facts,
        limitations=tuple(limitations),
        listings=walk.listings,
        reads=len(reading),
        artifact_group=found.artifact_group,
        artifact_group_file=found.artifact_group_file,
    )

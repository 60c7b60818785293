"""docs/configuration.md is true: every setting a service reads is documented, every documented
variable is read (as a setting, a secret or by the AWS SDK), and the defaults stated in its
tables are the defaults in the code."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from pm_ingest.settings import IngestSettings
from pm_orchestrator.settings import OrchestratorSettings
from pm_registry.settings import RegistrySettings
from pm_settings import _env_name
from pm_worker.settings import WorkerSettings

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
SETTINGS: tuple[type[BaseModel], ...] = (IngestSettings, OrchestratorSettings, WorkerSettings, RegistrySettings)
# Read by boto3's own credential chain, not by our settings.
AWS = {"AWS_REGION", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
_VAR = re.compile(r"`([A-Z][A-Z0-9_]+)`")
_UNSET = {"unset", "—", "-", "empty", "empty (all)", "empty (any)", "random", "the sdk's", "optional"}


def _code() -> dict[str, Any]:
    """Every setting's environment variable and its default (None when required)."""
    found: dict[str, Any] = {}
    for settings in SETTINGS:
        for name, field in settings.model_fields.items():
            alias = field.validation_alias if isinstance(field.validation_alias, str) else field.alias
            if field.is_required():
                default: Any = None
            elif field.default_factory is not None:
                default = field.default_factory()  # type: ignore[call-arg]
            else:
                default = field.default
            found[_env_name(name, alias)] = default
    return found


def _rows() -> list[list[str]]:
    return [
        [cell.strip() for cell in line.strip().strip("|").split("|")]
        for line in DOC.read_text().splitlines()
        if line.startswith("| `")
    ]


def _secrets() -> set[str]:
    section = DOC.read_text().split("## Secrets", 1)[1].split("\n## ", 1)[0]
    return set(_VAR.findall(section))


def _literal(default: Any) -> str | None:
    """A default as the docs would write it (lower-case); None when there is none to state."""
    if default is None or default in ("", [], {}):
        return None
    if isinstance(default, bool):
        return str(default).lower()
    if isinstance(default, dict):
        return json.dumps(default, sort_keys=True).lower()
    if isinstance(default, list | tuple | frozenset | set):
        return ",".join(str(v) for v in default).lower()
    return str(getattr(default, "get_secret_value", lambda: default)()).lower()


def _same(documented: str, default: Any) -> bool:
    text = documented.strip().strip("`").lower()
    if text in _UNSET or text.startswith(("0.0.0.0:<port>", "pm-<svc>", "required")):
        return True  # not a literal: nothing to compare
    expected = _literal(default)
    if expected is None:
        return False
    if isinstance(default, int | float) and not isinstance(default, bool):
        return re.fullmatch(r"-?\d+(\.\d+)?", text) is not None and float(text) == float(default)
    if isinstance(default, dict):
        try:
            return json.dumps(json.loads(text), sort_keys=True).lower() == expected
        except ValueError:
            return False
    return text == expected


def test_every_setting_is_documented_and_every_documented_variable_is_read() -> None:
    code = _code()
    documented = {name for row in _rows() for name in _VAR.findall(row[0])}
    assert sorted(set(code) - documented) == []
    assert sorted(documented - set(code) - _secrets() - AWS) == []


def test_the_defaults_in_the_tables_are_the_codes() -> None:
    code = _code()
    wrong = []
    for row in _rows():
        names = _VAR.findall(row[0])
        if len(row) != 3 or not names or "*" in row[0]:
            continue  # the per-service matrix and wildcard rows state no single default
        defaults = [d.strip() for d in row[1].split(", ")] if len(names) > 1 else [row[1]]
        if len(defaults) != len(names):
            defaults = [row[1]] * len(names)
        for name, documented in zip(names, defaults, strict=True):
            if name in code and not _same(documented, code[name]):
                wrong.append(f"{name}: documented {documented!r}, code {code[name]!r}")
    assert wrong == []


def test_the_comparison_notices_a_wrong_default() -> None:
    assert not _same("25", 20)
    assert not _same("true", False)
    assert _same("`info`", "info")
    assert _same("1.0", 1)
    assert _same('`{"a": "{b}"}`', {"a": "{b}"})
    assert not _same('`{"a": "{c}"}`', {"a": "{b}"})

"""The pieces of onboarding that need no server: the "org/repo" check, reading a code tool's
listing defensively, the draft's artifact prefix, and a returned draft's empty fields."""

from __future__ import annotations

import pytest

from pm_errors import InvalidArgument
from pm_orchestrator.discovery import Discovery, Entry, ReadFailed, not_detected
from pm_orchestrator.onboarding import (
    FORMAT_ERROR,
    _entries,
    _without_empty,
    artifact_prefix,
    draft_config,
    split_repository,
)


def test_github_repo_must_be_exactly_org_and_repo() -> None:
    assert split_repository("acme/shop.web") == ("acme", "shop.web")
    for bad in ("acme", "acme/shop/x", "/shop", "acme/", "a b/shop", "acme/..", "acme/.hidden", "-acme/x", "a/b\n"):
        with pytest.raises(InvalidArgument) as refused:
            split_repository(bad)
        assert refused.value.message == FORMAT_ERROR, bad


def test_a_listing_keeps_only_plain_entries_of_that_directory() -> None:
    entries, cut = _entries(
        {
            "entries": [
                {"name": "src", "type": "dir"},
                {"name": "go.mod", "type": "file", "size": 30},
                {"name": "../../etc", "type": "dir"},
                {"name": "..", "type": "dir"},
                {"name": "link", "type": "symlink"},
                {"name": 7, "type": "file"},
                "README.md",
            ],
            "truncated": True,
        }
    )
    assert entries == [Entry("src", "dir"), Entry("go.mod", "file")]
    assert cut
    # A bare list, as some servers answer (tool_result_data puts it under `items`), is read the same way.
    assert _entries({"items": [{"name": "a.py", "type": "file", "path": "a.py"}]}) == ([Entry("a.py", "file")], False)
    with pytest.raises(ReadFailed, match="not a list of entries"):
        _entries({"text": "no listing here"})


def test_the_artifact_prefix_is_the_build_files_group_else_the_predecessors_guess() -> None:
    assert artifact_prefix("Acme-Corp", "shop-web", not_detected("x")) == "com.acmecorp.shop.web"
    found = Discovery(status="detected", artifact_group="com.acme.billing", artifact_group_file="pom.xml")
    assert artifact_prefix("acme", "billing", found) == "com.acme.billing"


def test_a_draft_without_detection_names_the_repository_as_its_one_service() -> None:
    draft = draft_config("acme", "shop", "shop", not_detected("no tools"))
    assert draft["primary_services"] == [{"name": "shop", "artifact_id": "com.acme.shop.shop"}]
    assert draft["jira_project"] == "SHOP"
    assert "language" not in draft
    assert "build_system" not in draft
    assert draft["monorepo"] is False


def test_a_returned_drafts_empty_fields_are_unset_but_false_is_kept() -> None:
    assert _without_empty(
        {
            "company": "acme",
            "jira_url": "",
            "health_check_threshold_multiplier": 0,
            "pagerduty_services": [],
            "slack_channels": {"alerts": "", "dev": ""},
            "primary_services": [{"name": "web", "artifact_id": ""}],
            "monorepo": False,
            "jira_assignment": {"enabled": False, "rules": []},
        }
    ) == {
        "company": "acme",
        "primary_services": [{"name": "web"}],
        "monorepo": False,
        "jira_assignment": {"enabled": False},
    }

"""Tests of settings loading: fail fast, name the variable, never print secrets."""

import pytest
from pydantic import SecretStr

from pm_settings import ServiceSettings, SettingsError, load_settings


class _Example(ServiceSettings):
    database_url: str
    api_token: SecretStr
    pool_size: int = 5


def test_missing_required_setting_names_the_variable() -> None:
    with pytest.raises(SettingsError, match="^missing required setting DATABASE_URL$"):
        load_settings(_Example, {"API_TOKEN": "t"})


def test_empty_value_counts_as_missing() -> None:
    with pytest.raises(SettingsError, match="API_TOKEN"):
        load_settings(_Example, {"DATABASE_URL": "postgresql://h/db", "API_TOKEN": ""})


def test_invalid_value_names_the_variable() -> None:
    env = {"DATABASE_URL": "postgresql://h/db", "API_TOKEN": "t", "POOL_SIZE": "many"}
    with pytest.raises(SettingsError, match="^invalid setting POOL_SIZE: "):
        load_settings(_Example, env)


def test_values_are_read_from_upper_case_names() -> None:
    env = {"DATABASE_URL": "postgresql://h/db", "API_TOKEN": "t", "POOL_SIZE": "9", "LOG_LEVEL": "debug"}
    settings = load_settings(_Example, env)
    assert settings.pool_size == 9
    assert settings.log_level == "debug"
    assert settings.api_token.get_secret_value() == "t"


def test_describe_masks_secrets_and_url_passwords() -> None:
    env = {"DATABASE_URL": "postgresql://pm:hunter2@db:5432/pm", "API_TOKEN": "s3cr3t-value"}
    shown = load_settings(_Example, env).describe()
    assert shown["api_token"] == "set"
    assert shown["database_url"] == "postgresql://pm:***@db:5432/pm"
    assert "s3cr3t-value" not in repr(shown)
    assert "hunter2" not in repr(shown)


def test_secret_is_masked_in_repr() -> None:
    settings = load_settings(_Example, {"DATABASE_URL": "x", "API_TOKEN": "s3cr3t-value"})
    assert "s3cr3t-value" not in repr(settings)
    assert isinstance(settings.api_token, SecretStr)

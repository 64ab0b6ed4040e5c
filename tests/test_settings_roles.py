"""A role's setting changes only its own field: the role's other fields keep that role's defaults
(triage decodes 64 tokens, the specialists 128, the attending 192), whichever source gives it:
environment variable, TOML file, keyword (a dict, as the CLI passes, or a RoleSpec) or the CLI's
``--triage/--specialist/--attending latest``. Every role × every RoleSpec field × every source.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from app.config import RoleSpec, Settings

ROLES = ("triage", "specialist", "attending")
# The documented per-role defaults, written out here so that the test pins them (not app.config's table).
MAX_NEW_TOKENS = {"triage": 64, "specialist": 128, "attending": 192}

# One change per RoleSpec field (a value other than every role's default); backend "openai" needs a
# base_url, so it comes as the pair the issue names. Each case lists the fields it sets.
CHANGES: dict[str, dict[str, Any]] = {
    "model": {"model": "org/some-model"},
    "adapter": {"adapter": "/adapters/lora-7"},
    "policy-latest": {"policy": "latest"},
    "policy-id": {"policy": "12"},
    "backend": {"backend": "vllm"},
    "backend-openai": {"backend": "openai", "base_url": "http://127.0.0.1:8000/v1"},
    "base_url": {"base_url": "http://127.0.0.1:9/v1"},
    "api_key_env": {"api_key_env": "MY_API_KEY"},
    "timeout_s": {"timeout_s": 7.5},
    "max_concurrency": {"max_concurrency": 3},
    "retries": {"retries": 0},
    "extra_body": {"extra_body": {"return_tokens_as_token_ids": True, "top_k": 5}},
    "max_new_tokens": {"max_new_tokens": 33},
    "temperature": {"temperature": 0.7},
    "top_p": {"top_p": 0.9},
}


def test_the_cases_cover_every_role_field():
    covered = {name for change in CHANGES.values() for name in change}
    assert covered == set(RoleSpec.model_fields)


def expected(role: str, change: dict[str, Any] | None = None) -> dict[str, Any]:
    return {**RoleSpec().model_dump(), "max_new_tokens": MAX_NEW_TOKENS[role], **(change or {})}


def assert_only(settings: Settings, role: str, change: dict[str, Any]) -> None:
    """``role`` has exactly its defaults with ``change`` applied; the other roles have their defaults."""
    for r in ROLES:
        assert settings.role(r).model_dump() == expected(r, change if r == role else None), r


@pytest.fixture(autouse=True)
def clean_sources(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No MMEDAGENT_* variable and no TOML file unless the test writes one (the path it returns)."""
    import os

    for name in list(os.environ):
        if name.upper().startswith("MMEDAGENT_"):
            monkeypatch.delenv(name)
    toml = tmp_path / "mmedagent.toml"
    # the file MMEDAGENT_CONFIG names (read when app.config is imported)
    monkeypatch.setitem(Settings.model_config, "toml_file", toml)
    return toml


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + "}"
    return json.dumps(value)  # strings (JSON's escapes are TOML's basic string escapes) and numbers


def _env_value(value: Any) -> str:
    return json.dumps(value) if isinstance(value, dict) else str(value)


def test_defaults_per_role():
    settings = Settings()
    for role in ROLES:
        assert settings.role(role).model_dump() == expected(role)


def _from_env(monkeypatch, _toml, role, change):
    for name, value in change.items():
        monkeypatch.setenv(f"MMEDAGENT_{role.upper()}__{name.upper()}", _env_value(value))
    return Settings()


def _from_toml(_monkeypatch, toml: Path, role, change):
    lines = [f"[{role}]", *(f"{name} = {_toml_value(value)}" for name, value in change.items())]
    toml.write_text("\n".join(lines) + "\n")
    return Settings()


def _from_keywords(_monkeypatch, _toml, role, change):
    return Settings(**{role: dict(change)})


def _from_rolespec(_monkeypatch, _toml, role, change):
    return Settings(**{role: RoleSpec(**change)})


SOURCES = {"env": _from_env, "toml": _from_toml, "keywords": _from_keywords, "rolespec": _from_rolespec}


@pytest.mark.parametrize("case", CHANGES)
@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("source", SOURCES)
def test_a_role_setting_changes_only_its_field(monkeypatch, clean_sources, source, role, case):
    settings = SOURCES[source](monkeypatch, clean_sources, role, CHANGES[case])
    assert_only(settings, role, CHANGES[case])


@pytest.mark.parametrize("policy", ["latest", "12"])
@pytest.mark.parametrize("role", ROLES)
def test_cli_policy_option_changes_only_the_policy(role, policy):
    """``mmedagent --ROLE POLICY <command>``: the global option, as every command's load_settings sees it."""
    from typer.testing import CliRunner

    from app.cli import app
    from app.commands.common import load_settings, policy_choices

    # `eval` without --benchmark stops with a usage error right after the global options are read
    result = CliRunner().invoke(app, [f"--{role}", policy, "eval"])
    assert result.exit_code == 2, result.output
    assert "--benchmark is required" in result.output
    try:
        assert_only(load_settings(), role, {"policy": policy})
    finally:
        policy_choices.clear()


def test_sources_merge_field_by_field(monkeypatch, clean_sources):
    """TOML, env and the CLI's policy each set a different field of one role: all three apply, the rest
    keep the role's defaults; env beats TOML on a field both set."""
    clean_sources.write_text('[specialist]\ntemperature = 0.4\nmodel = "org/from-toml"\n')
    monkeypatch.setenv("MMEDAGENT_SPECIALIST__BACKEND", "vllm")
    monkeypatch.setenv("MMEDAGENT_SPECIALIST__MODEL", "org/from-env")
    settings = Settings(specialist={"policy": "latest"})
    change = {"temperature": 0.4, "model": "org/from-env", "backend": "vllm", "policy": "latest"}
    assert_only(settings, "specialist", change)


def test_a_role_switched_to_openai_keeps_its_decoding(monkeypatch):
    """The issue's case: MMEDAGENT_TRIAGE__BACKEND=openai (with its base_url) leaves triage at 64 tokens."""
    monkeypatch.setenv("MMEDAGENT_TRIAGE__BACKEND", "openai")
    monkeypatch.setenv("MMEDAGENT_TRIAGE__BASE_URL", "http://127.0.0.1:8000/v1")
    settings = Settings(attending={"policy": "latest"})
    assert [settings.role(r).sampling().max_new_tokens for r in ROLES] == [64, 128, 192]

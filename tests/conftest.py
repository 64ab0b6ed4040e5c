"""Shared pytest fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Qwen2.5-VL checkpoint (model + processor + chat template), built once per session."""
    from app.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny_qwen25vl"), size="tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_backend(tiny_model_dir: Path):
    """The real transformers backend on the tiny checkpoint, loaded once per session."""
    from app.backends.local import TransformersBackend

    return TransformersBackend(str(tiny_model_dir))


@pytest.fixture
def settings(tmp_path: Path, tiny_model_dir: Path):
    """Settings for one test: its own home (SQLite file, checkpoints) and the tiny model."""
    from app.config import Settings

    return Settings(home=tmp_path / "home", model=str(tiny_model_dir))


@pytest.fixture
def make_runtime(settings, tiny_backend):
    """Build a Runtime on the test's settings; by default every role uses the tiny model."""
    from app.runtime import Runtime

    made = []

    def make(backends=None, **overrides):
        s = settings.model_copy(update=overrides) if overrides else settings
        roles = ("triage", "specialist", "attending")
        rt = Runtime(s, backends=backends or dict.fromkeys(roles, tiny_backend))
        made.append(rt)
        return rt

    yield make
    for rt in made:
        rt.close()

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
def small_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 14M checkpoint (head dim 64): the smallest that vLLM's CPU attention runs (it refuses the
    tiny one's head dim 16). Built once per session."""
    from app.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("small_qwen25vl"), size="small", seed=0)


@pytest.fixture(scope="session")
def tiny_backend(tiny_model_dir: Path):
    """The real transformers backend on the tiny checkpoint, loaded once per session."""
    from app.backends.local import TransformersBackend

    return TransformersBackend(str(tiny_model_dir))


@pytest.fixture(scope="session")
def patient_backend(tiny_model_dir):
    """The tiny model, batching with a generous quiet gap: on a loaded machine the three specialist
    threads of a fan-out can reach the batcher more than the default 5 ms apart."""
    from app.backends.local import TransformersBackend

    backend = TransformersBackend(str(tiny_model_dir), batch_gap_s=0.5, batch_wait_s=2.0)
    yield backend
    backend.close()


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

    def make(backends=None, mode=None, **overrides):
        s = settings.model_copy(update=overrides) if overrides else settings
        roles = ("triage", "specialist", "attending")
        rt = Runtime(s, backends=backends or dict.fromkeys(roles, tiny_backend), mode=mode)
        made.append(rt)
        return rt

    yield make
    for rt in made:
        rt.close()


@pytest.fixture(scope="session")
def postgres_server():
    """A real PostgreSQL server for the session (tests/postgres.py); skips where none can start."""
    from tests.postgres import PostgresServer, PostgresUnavailable

    try:
        server = PostgresServer()
    except PostgresUnavailable as exc:
        pytest.skip(f"no PostgreSQL server: {exc}")
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path: Path):
    """An empty database for one test: a SQLite file, then a fresh database on the PostgreSQL server."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.db'}"
        return
    server = request.getfixturevalue("postgres_server")
    url = server.create_database()
    yield url
    server.drop_database(url)


@pytest.fixture
def store(db_url):
    """A trajectory store on each database ``db_url`` names (SQLite, and PostgreSQL when available)."""
    from data.store import TrajectoryStore

    s = TrajectoryStore(db_url)
    yield s
    s.close()

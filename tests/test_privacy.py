"""Privacy: DICOM patient data never reaches the store or an export; hash-only mode keeps no pixels.

End to end through ``mmedagent ask --image x.dcm`` and ``mmedagent export`` on the tiny model; every
file the app wrote (database, WAL, LangGraph checkpoints, exports) is scanned byte by byte.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from app.cli import app
from data.images import load_image
from data.schema import ImageBlob
from data.store import TrajectoryStore
from tests.test_images import dicom_bytes

PHI = [b"Doe^Jane", b"MRN-4815162342", b"19700101"]
runner = CliRunner()


def _files(*roots: Path) -> list[Path]:
    return [p for root in roots for p in root.rglob("*") if p.is_file()]


@pytest.fixture
def cli_env(tmp_path, tiny_model_dir, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("MMEDAGENT_HOME", str(home))
    monkeypatch.setenv("MMEDAGENT_MODEL", str(tiny_model_dir))
    for role in ("TRIAGE", "SPECIALIST", "ATTENDING"):  # short generations: the content is not the point
        monkeypatch.setenv(f"MMEDAGENT_{role}__MAX_NEW_TOKENS", "12")
    return home


@pytest.mark.parametrize("store_pixels", [True, False], ids=["pixels", "hash-only"])
def test_dicom_phi_never_stored_or_exported(cli_env, tmp_path, monkeypatch, store_pixels):
    monkeypatch.setenv("MMEDAGENT_STORE_PIXELS", str(store_pixels).lower())
    raw = (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 7) % 4096
    dcm = tmp_path / "scan.dcm"
    dcm.write_bytes(dicom_bytes(raw, window=(40, 400), intercept=-1024))
    assert all(p in dcm.read_bytes() for p in PHI)  # the input really carries PHI
    rendered = load_image(dcm)

    res = runner.invoke(app, ["ask", "--image", str(dcm), "--question", "Finding?", "--option", "A) x",
                              "--option", "B) y", "--json"])  # fmt: skip
    assert res.exit_code == 0, res.output
    result = json.loads(res.stdout)
    assert result["status"] == "ok" and len(result["opinions"]) == 3  # the run works either way

    out = tmp_path / "export"
    for role in ("triage", "specialist", "attending"):
        for fmt in ("parquet", "jsonl"):
            res = runner.invoke(app, ["export", "--role", role, "--format", fmt, "--out", str(out / fmt)])
            assert res.exit_code == 0, res.output
    written = _files(cli_env, out)
    assert any(p.name.endswith(".db") for p in written) and any(p.suffix == ".parquet" for p in written)
    for path in written:
        data = path.read_bytes()
        for phi in PHI:
            assert phi not in data, f"{phi!r} found in {path}"
    # parquet is compressed: check its decoded content as well
    for path in (out / "parquet").glob("*.parquet"):
        table = pq.read_table(path).to_pylist()
        assert all(phi.decode() not in repr(table) for phi in PHI)

    store = TrajectoryStore(f"sqlite:///{cli_env / 'mmedagent.db'}")
    with store.session() as s:
        (blob,) = s.scalars(select(ImageBlob))
    # the content address is the rendered PNG's, never the DICOM file's
    assert blob.sha256 == rendered.sha256 != hashlib.sha256(dcm.read_bytes()).hexdigest()
    assert blob.data == (rendered.data if store_pixels else None)
    rows = pq.read_table(out / "parquet" / "attending.parquet").to_pylist()
    assert rows[0]["image_sha256"] == [rendered.sha256]
    assert rows[0]["images"] == (
        [{"bytes": rendered.data, "path": f"{rendered.sha256}.png"}] if store_pixels else [None]
    )
    if not store_pixels:
        head = rendered.data[:256]
        assert not any(head in p.read_bytes() for p in written), "pixels written in hash-only mode"
        assert not (out / "jsonl" / "images").exists() or not any((out / "jsonl" / "images").iterdir())
        assert (
            "have no pixels"
            in runner.invoke(app, ["export", "--role", "triage", "--out", str(tmp_path / "again")]).output
        )
    store.close()

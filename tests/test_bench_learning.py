"""bench/learning.py reuses a cached warm-up only when it was made from the same inputs."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest

from rl.datasets import synthetic_attending_rows

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_learning", ROOT / "bench" / "learning.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_warmup_key_changes_with_every_input_it_is_made_from(bench, tiny_model_dir, tmp_path):
    rows = synthetic_attending_rows(8, seed=0)
    key = bench.warmup_key(tiny_model_dir, rows, "attending", 600, 0)
    assert key == bench.warmup_key(tiny_model_dir, synthetic_attending_rows(8, seed=0), "attending", 600, 0)

    one_pixel = [dict(r) for r in rows]
    one_pixel[3]["images"] = [one_pixel[3]["images"][0][:-1] + b"\x00"]
    relabelled = [dict(r) for r in rows]
    relabelled[5]["said"] = "something else"
    other_base = shutil.copytree(tiny_model_dir, tmp_path / "base")
    (other_base / "config.json").write_text((other_base / "config.json").read_text() + " ")
    changed = {
        bench.warmup_key(tiny_model_dir, one_pixel, "attending", 600, 0),
        bench.warmup_key(tiny_model_dir, relabelled, "attending", 600, 0),
        bench.warmup_key(tiny_model_dir, rows[:-1], "attending", 600, 0),
        bench.warmup_key(tiny_model_dir, rows, "attending", 300, 0),
        bench.warmup_key(tiny_model_dir, rows, "attending", 600, 1),
        bench.warmup_key(other_base, rows, "attending", 600, 0),
    }
    assert key not in changed and len(changed) == 6

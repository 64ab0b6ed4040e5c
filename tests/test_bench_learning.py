"""bench/learning.py reuses a cached warm-up only when it was made from the same inputs, reads its
warm-ups' settings from the recipes, and its bootstrap intervals draw what they always drew."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest

from rl.datasets import synthetic_attending_rows

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_learning", ROOT / "bench" / "learning.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def section(bench):
    """The tiny attending recipe's format_sft section, as bench/learning.py's warm-up runs it."""
    return bench.read_recipe("tiny-attending", 0).recipe.format_sft


def test_warmup_key_changes_with_every_input_it_is_made_from(bench, section, tiny_model_dir, tmp_path):
    rows = synthetic_attending_rows(8, seed=0)
    key = bench.warmup_key(tiny_model_dir, rows, "attending", section, 0)
    assert key == bench.warmup_key(
        tiny_model_dir, synthetic_attending_rows(8, seed=0), "attending", dict(section), 0
    )

    one_pixel = [dict(r) for r in rows]
    one_pixel[3]["images"] = [one_pixel[3]["images"][0][:-1] + b"\x00"]
    relabelled = [dict(r) for r in rows]
    relabelled[5]["said"] = "something else"
    other_base = shutil.copytree(tiny_model_dir, tmp_path / "base")
    (other_base / "config.json").write_text((other_base / "config.json").read_text() + " ")
    changed = {
        bench.warmup_key(tiny_model_dir, one_pixel, "attending", section, 0),
        bench.warmup_key(tiny_model_dir, relabelled, "attending", section, 0),
        bench.warmup_key(tiny_model_dir, rows[:-1], "attending", section, 0),
        bench.warmup_key(tiny_model_dir, rows, "attending", {**section, "max_steps": 300}, 0),
        bench.warmup_key(tiny_model_dir, rows, "attending", section, 1),
        bench.warmup_key(other_base, rows, "attending", section, 0),
        bench.warmup_key(tiny_model_dir, rows, "attending", {**section, "learning_rate": 1e-3}, 0),
    }
    assert key not in changed and len(changed) == 7


def test_warmups_take_the_recipes_format_sft_steps(bench):
    """The figures in docs/learning.md were made with 200 (triage) and 600 (attending) warm-up steps
    of 16 rows at lr 3e-3: the tiny recipes' format_sft sections hold them."""
    for name, steps in (("tiny-triage", 200), ("tiny-attending", 600)):
        spec = bench.read_recipe(name, 3)
        assert spec.recipe.seed == 3
        assert spec.recipe.format_sft["max_steps"] == steps
        assert spec.recipe.format_sft["learning_rate"] == 3e-3
        assert bench.sft_batch(spec) == 16


def test_summary_draws_the_same_bootstrap_as_before(bench):
    """One generator per seed shared by the groups in turn, as bench's own bootstrap drew it."""
    rows = synthetic_attending_rows(40, seed=10_000)
    right = [float(i % 3 != 0) for i in range(len(rows))]

    def old_bootstrap(values, rng, n=2000):
        v = np.asarray(values, dtype=float)
        if not len(v):
            return float("nan"), float("nan"), float("nan")
        means = v[rng.integers(0, len(v), size=(n, len(v)))].mean(axis=1)
        return float(v.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))

    rng = np.random.default_rng(7)
    expected = {
        g: old_bootstrap([x for x, r in zip(right, rows, strict=True) if bench.group_of(r, g)], rng)
        for g in bench.GROUPS
    }
    assert bench.summarise(right, rows, 7) == expected  # the same draws: the same floats

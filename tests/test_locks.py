"""One locked environment: the installed packages are uv.lock's, uv.lock is current with
pyproject.toml, and the CUDA lock (locks/cuda.txt) agrees with it on every direct dependency."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sysconfig
from pathlib import Path

import pytest

from scripts.locks import ENGINE, ROOT, direct_dependencies, normalise, requirement_pins, uv_lock_pins

UV = ROOT / ".uv" / "bin" / "uv"


def test_every_installed_package_is_the_locked_version():
    locked = uv_lock_pins()
    # what the environment holds: its site-packages, not whatever else a test put on sys.path
    site = {Path(sysconfig.get_paths()[key]).resolve() for key in ("purelib", "platlib")}
    installed = {
        normalise(d.metadata["Name"]): d.version
        for d in importlib.metadata.distributions(path=[str(s) for s in site])
        if normalise(d.metadata["Name"]) != "mmedagent-rl"
    }
    assert len(installed) > 100  # the environment, not an empty path
    assert installed.keys() <= locked.keys(), f"not in uv.lock: {sorted(installed.keys() - locked.keys())}"
    assert {n: v for n, v in installed.items() if v != locked[n]} == {}


@pytest.mark.skipif(not UV.exists(), reason="scripts/setup.sh installs uv into .uv/")
def test_uv_lock_is_current_with_pyproject():
    done = subprocess.run(
        [str(UV), "lock", "--check", "--offline", "-q"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, f"uv.lock is stale (run scripts/lock.sh): {done.stderr[-2000:]}"


def test_the_cuda_lock_pins_every_direct_dependency_at_uv_locks_version():
    cpu = uv_lock_pins()
    cuda = requirement_pins((ROOT / "locks" / "cuda.txt").read_text())
    direct = direct_dependencies()
    assert direct <= cuda.keys(), f"missing from locks/cuda.txt: {sorted(direct - cuda.keys())}"
    assert {n: (cpu[n], cuda[n]) for n in direct if cpu[n] != cuda[n]} == {}
    assert cuda[ENGINE["cuda"]] == cpu[ENGINE["cpu"]]  # the same vLLM release, CUDA and CPU builds


def test_direct_pins_are_read_from_requirement_lines():
    text = (
        "torch==2.13.0 \\\n    --hash=sha256:ab\n"
        "PyYAML==6.0.4 ; sys_platform == 'linux'\nfsspec[http]==2026.1\n-e .\n"
    )
    assert requirement_pins(text) == {"torch": "2.13.0", "pyyaml": "6.0.4", "fsspec": "2026.1"}

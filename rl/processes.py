"""What a run does once per run, once per host, or on every process (docs/training-at-scale.md).

- :func:`run_state`: accelerate's view of the processes. On CPU it must be asked for with
  ``cpu=True``: without it, a process under ``torchrun`` sees no distribution at all and every rank
  believes it is the main one.
- :func:`host_table`: the rows as one memory-mapped table per host, written by the host's local
  main process into its own temporary folder and read by the host's other processes; hosts share
  nothing but ``--out``.
- :func:`check_sharding`: a run launched for FSDP or DeepSpeed whose trainer did not shard stops
  (accelerate drops both on CPU processes without a word).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from rl.datasets import Row, read_rows, write_rows

# Set by torchrun for every process of one launch (the rendezvous' id and address).
LAUNCH_VARIABLES = ("TORCHELASTIC_RUN_ID", "MASTER_ADDR", "MASTER_PORT")


def run_state() -> Any:
    """accelerate's ``PartialState`` for this process (gloo across CPU processes)."""
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def host_table(rows: Iterable[Row], name: str, out: Path) -> Any:
    """``rows`` as a memory-mapped table, written once per host.

    One process: a private temporary table (rl.datasets.write_rows). Several: the host's local main
    process writes ``<TMPDIR>/mmedagent-<name>-<launch>/`` (``launch``: the run's --out and
    torchrun's rendezvous, the same on every process of the launch), the host's other processes
    open it once written; the writer removes it with its table."""
    state = run_state()
    if state.num_processes == 1:
        return write_rows(rows)
    launch = "|".join([str(out), *(os.environ.get(v, "") for v in LAUNCH_VARIABLES)])
    folder = (
        Path(tempfile.gettempdir()) / f"mmedagent-{name}-{hashlib.sha256(launch.encode()).hexdigest()[:16]}"
    )
    with state.local_main_process_first():
        return write_rows(rows, folder=folder) if state.is_local_main_process else read_rows(folder)


def check_sharding(trainer: Any) -> None:
    """A run launched for FSDP or DeepSpeed (``accelerate launch --config_file rl/accelerate/…``)
    whose trainer runs plain data-parallel stops with one line."""
    for variable, enabled, name in (
        ("ACCELERATE_USE_FSDP", trainer.is_fsdp_enabled, "FSDP"),
        ("ACCELERATE_USE_DEEPSPEED", trainer.is_deepspeed_enabled, "DeepSpeed"),
    ):
        if os.environ.get(variable, "").lower() in ("1", "true") and not enabled:
            raise RuntimeError(
                f"{variable} is set but the trainer did not enable {name}: accelerate applies it to "
                "GPU processes only (docs/training-at-scale.md)"
            )

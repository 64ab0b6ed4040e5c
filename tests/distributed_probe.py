"""Run a training entry module (``rl.grpo`` by default) under torchrun and record, on every rank,
what the distributed set-up did to the model: tests/test_distributed.py reads the records.

    torchrun ... -m tests.distributed_probe PROBE_DIR [--entry rl.grpo] -- ENTRY_ARGS...

The entry runs unchanged (``runpy``, as ``python -m ENTRY``); the probe only wraps
``transformers.Trainer.train``: after training, each rank writes ``PROBE_DIR/rank-<RANK>.json``
with

- ``fsdp``: whether the trainer's accelerator ran FSDP (and its version), ``deepspeed`` likewise;
- ``params_global`` / ``params_local``: the policy's parameter count, and the part of it this rank
  holds (FSDP2 parameters are DTensors sharded on dim 0: ``to_local()`` is this rank's shard);
- ``sharded_params``: how many parameter tensors are DTensors; ``wrapped_modules``: the class names
  of the modules FSDP2 wrapped (``fully_shard`` turns a module into an ``FSDPModule``);
- ``ref_*``: the same for the frozen reference model, when the trainer has one;
- ``tmpdir``: the temporary folder this process used (``tempfile.gettempdir()``), and
  ``row_tables``: the rows' Arrow tables (rl/datasets.write_rows) in it after training, while every
  process on the host still holds its own;

and global rank 0 also saves the gathered full state dict (``accelerator.get_state_dict``) to
``PROBE_DIR/gathered.safetensors``: what the saved policy must equal.
"""

from __future__ import annotations

import argparse
import json
import os
import runpy
import sys
import tempfile
from pathlib import Path
from typing import Any


def _shard_facts(model: Any) -> dict[str, Any]:
    from torch.distributed.tensor import DTensor

    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover - torch without FSDP2
        FSDPModule = ()

    total = local = sharded = 0
    for p in model.parameters():
        total += p.numel()
        if isinstance(p, DTensor):
            sharded += 1
            local += p.to_local().numel()
        else:
            local += p.numel()
    wrapped = sorted({type(m).__name__ for m in model.modules() if FSDPModule and isinstance(m, FSDPModule)})
    return {
        "params_global": total,
        "params_local": local,
        "sharded_params": sharded,
        "wrapped_modules": wrapped,
    }


def _record(trainer: Any, probe: Path) -> None:
    state = trainer.accelerator.state
    rank = int(os.environ.get("RANK", "0"))
    facts: dict[str, Any] = {
        "rank": rank,
        "local_rank": int(os.environ.get("LOCAL_RANK", "0")),
        "world_size": trainer.accelerator.num_processes,
        "tmpdir": tempfile.gettempdir(),
        # the rows' tables (rl/datasets.write_rows) alive in this host's temporary folder now
        "row_tables": sorted(str(p) for p in Path(tempfile.gettempdir()).glob("mmedagent-rows-*")),
        "fsdp": getattr(state, "fsdp_plugin", None) is not None,
        "fsdp_version": getattr(getattr(state, "fsdp_plugin", None), "fsdp_version", None),
        "deepspeed": getattr(state, "deepspeed_plugin", None) is not None,
        "global_step": trainer.state.global_step,
        **_shard_facts(trainer.model),
    }
    ref = getattr(trainer, "ref_model", None)
    if ref is not None:
        facts.update({f"ref_{k}": v for k, v in _shard_facts(ref).items()})
    full = trainer.accelerator.get_state_dict(trainer.model)  # collective: every rank takes part
    if trainer.accelerator.is_main_process and full is not None:
        from safetensors.torch import save_file

        save_file({k: v.detach().contiguous().cpu() for k, v in full.items()}, probe / "gathered.safetensors")
    (probe / f"rank-{rank}.json").write_text(json.dumps(facts, indent=1))


def allow_fsdp_on_cpu() -> None:
    """Let accelerate run FSDP on CPU processes (gloo).

    accelerate 1.16's ``AcceleratorState`` turns ``ACCELERATE_USE_FSDP`` into ``DistributedType.FSDP``
    only for GPU-like distributed types (``MULTI_GPU``, ``MULTI_XPU``, ...): on CPU processes
    (``MULTI_CPU``) the FSDP plugin is built and then silently dropped, and the run is plain
    data-parallel. This shim applies the plugin there too; everything after it (accelerate's
    ``fsdp2_prepare_model``, TRL's ``prepare_fsdp`` of the reference model, the trainer's saving)
    runs unchanged."""
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType

    original = AcceleratorState.__init__
    if getattr(original, "_cpu_fsdp", False):
        return

    def init(self: Any, *args: Any, fsdp_plugin: Any = None, **kwargs: Any) -> None:
        original(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            self.distributed_type = DistributedType.FSDP
            if self._mixed_precision != "no":
                fsdp_plugin.set_mixed_precision(self._mixed_precision)
            self.fsdp_plugin = fsdp_plugin
            PartialState._shared_state["distributed_type"] = DistributedType.FSDP  # as accelerate does

    init._cpu_fsdp = True  # type: ignore[attr-defined]
    AcceleratorState.__init__ = init  # type: ignore[method-assign]


def main() -> None:
    parser = argparse.ArgumentParser(prog="tests.distributed_probe")
    parser.add_argument("probe_dir", type=Path)
    parser.add_argument("--entry", default="rl.grpo")
    parser.add_argument(
        "--cpu-fsdp", action="store_true", help="apply accelerate's FSDP plugin on CPU processes (gloo)"
    )
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)
    opts = parser.parse_args(argv[:split])
    opts.probe_dir.mkdir(parents=True, exist_ok=True)

    if opts.cpu_fsdp:
        allow_fsdp_on_cpu()
    from transformers import Trainer

    original = Trainer.train

    def train(self: Any, *args: Any, **kwargs: Any) -> Any:
        output = original(self, *args, **kwargs)
        if type(self).__name__.endswith("GRPOTrainer"):  # not the SFT warm-up
            _record(self, opts.probe_dir)
        return output

    Trainer.train = train  # type: ignore[method-assign]
    sys.argv = [opts.entry, *argv[split + 1 :]]
    runpy.run_module(opts.entry, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()

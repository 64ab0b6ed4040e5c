"""GRPO at scale on CPU processes (docs/training-at-scale.md): FSDP2 on 2 processes, and 2 "hosts"
(two torchrun launches, one rendezvous) that share nothing but ``--out``.

Both run the real entry (``-m rl.grpo``) through tests/distributed_probe.py, which records on every
rank what the distributed set-up did (FSDP on or off, the parameters this rank holds, its temporary
folder, the row tables in it) and saves the gathered full state dict.

FSDP on CPU: accelerate 1.16 builds the FSDP plugin from the environment that ``accelerate launch
--config_file rl/accelerate/fsdp.yaml`` sets, but applies it only to GPU-like process groups: on CPU
(gloo, ``DistributedType.MULTI_CPU``) it drops it and the run is silently plain data-parallel
(``fsdp: false`` in the probe). The probe's ``--cpu-fsdp`` applies it there; the rest of the stack
(accelerate's ``fully_shard`` preparation, TRL's reference-model sharding, the full-state-dict save)
is the one that runs on GPUs. DeepSpeed ZeRO-3 cannot run here at all (not installed, and its CPU
accelerator needs Intel's oneCCL bindings): see docs/training-at-scale.md.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rl.grpo import RUN_FILE
from tests.recipes import TINY_RECIPE

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(900),  # ~1.5 min (FSDP) and ~3 min (2 hosts) alone on 2 CPU cores
    pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning"),
]

ROOT = Path(__file__).resolve().parent.parent
ACCELERATE = ROOT / "rl" / "accelerate"
CASES = 14
RECIPE = TINY_RECIPE + "max_steps: 1\n"  # one GRPO step; full fine-tuning shards the reference too


def _base_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACCELERATE_", "FSDP_"))}
    return {**env, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **extra}


def fsdp_env(config: Path) -> dict[str, str]:
    """The environment ``accelerate launch --config_file CONFIG`` gives each process for an FSDP
    config (accelerate/utils/launch.py ``prepare_multi_gpu_env``), for a torchrun launch."""
    cfg = yaml.safe_load(config.read_text())
    assert cfg["distributed_type"] == "FSDP"
    fsdp = {k.removeprefix("fsdp_"): v for k, v in cfg["fsdp_config"].items()}
    env = {
        "ACCELERATE_USE_FSDP": "true",
        "ACCELERATE_MIXED_PRECISION": str(cfg.get("mixed_precision", "no")),
        "FSDP_VERSION": str(fsdp.get("version", 1)),
        "FSDP_RESHARD_AFTER_FORWARD": str(fsdp.get("reshard_after_forward", True)).lower(),
        "FSDP_OFFLOAD_PARAMS": str(fsdp.get("offload_params", False)).lower(),
        "FSDP_AUTO_WRAP_POLICY": str(fsdp["auto_wrap_policy"]),
        "FSDP_TRANSFORMER_CLS_TO_WRAP": str(fsdp["transformer_layer_cls_to_wrap"]),
        "FSDP_STATE_DICT_TYPE": str(fsdp["state_dict_type"]),
        "FSDP_CPU_RAM_EFFICIENT_LOADING": str(fsdp.get("cpu_ram_efficient_loading", False)).lower(),
        "FSDP_SYNC_MODULE_STATES": str(fsdp.get("sync_module_states", True)).lower(),
        "FSDP_ACTIVATION_CHECKPOINTING": str(fsdp.get("activation_checkpointing", False)).lower(),
    }
    return env


def _entry(probe: Path, recipe: Path, model: Path, out: Path, *probe_flags: str) -> list[str]:
    return [
        "-m", "tests.distributed_probe", str(probe), *probe_flags, "--",
        "--role", "attending", "--synthetic", str(CASES), "--recipe", str(recipe),
        "--model", str(model), "--out", str(out),
    ]  # fmt: skip


def _records(probe: Path, n: int) -> list[dict]:
    records = [json.loads((probe / f"rank-{r}.json").read_text()) for r in range(n)]
    assert [r["rank"] for r in records] == list(range(n))
    return records


def _assert_policy_is_gathered_state(policy: Path, gathered: Path, start: Path) -> None:
    """The saved policy loads, equals the state gathered from the shards after training, and
    differs from the start (the step trained)."""
    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForImageTextToText

    full = load_file(str(gathered))
    saved = AutoModelForImageTextToText.from_pretrained(policy, dtype="float32").state_dict()
    first = AutoModelForImageTextToText.from_pretrained(start, dtype="float32").state_dict()
    assert set(full) == set(saved)
    different = [k for k in full if not torch.equal(full[k], saved[k])]
    assert not different, different[:5]
    assert any(not torch.equal(saved[k], first[k]) for k in saved), "one GRPO step changed nothing"


# --- FSDP ----------------------------------------------------------------------------------------


def test_accelerate_configs_name_the_model_classes():
    """The configs wrap classes the Qwen2.5-VL model has, and the ZeRO-3 one is a ZeRO-3 config."""
    from transformers.models.qwen2_5_vl import modeling_qwen2_5_vl

    fsdp = yaml.safe_load((ACCELERATE / "fsdp.yaml").read_text())
    names = fsdp["fsdp_config"]["fsdp_transformer_layer_cls_to_wrap"].split(",")
    assert names and all(hasattr(modeling_qwen2_5_vl, n) for n in names)
    assert set(names) == set(modeling_qwen2_5_vl.Qwen2_5_VLForConditionalGeneration._no_split_modules)
    assert (fsdp["fsdp_config"]["fsdp_version"], fsdp["num_processes"]) == (2, 8)
    zero3 = yaml.safe_load((ACCELERATE / "zero3.yaml").read_text())
    assert zero3["distributed_type"] == "DEEPSPEED"
    assert (zero3["deepspeed_config"]["zero_stage"], zero3["num_processes"]) == (3, 8)
    assert zero3["mixed_precision"] == fsdp["mixed_precision"] == "bf16"


def test_fsdp_shards_the_policy_over_two_processes(tiny_model_dir, tmp_path):
    """One GRPO step under rl/accelerate/fsdp.yaml's FSDP2 settings on 2 CPU processes: FSDP wrapped
    the decoder layers and vision blocks on both ranks, each rank held half of the policy's and
    of the reference model's parameters, and the saved policy is the state gathered from the shards."""
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RECIPE)
    out, probe = tmp_path / "run", tmp_path / "probe"
    # float32 on CPU: the config's bf16 is for the GPUs
    env = _base_env(**{**fsdp_env(ACCELERATE / "fsdp.yaml"), "ACCELERATE_MIXED_PRECISION": "no"})
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        *_entry(probe, recipe, tiny_model_dir, out, "--cpu-fsdp"),
    ]  # fmt: skip
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]

    ranks = _records(probe, 2)
    for r in ranks:
        assert (r["fsdp"], r["fsdp_version"], r["world_size"], r["global_step"]) == (True, 2, 2, 1)
        assert {"FSDPQwen2_5_VLDecoderLayer", "FSDPQwen2_5_VLVisionBlock"} <= set(r["wrapped_modules"])
        assert r["sharded_params"] > 0
        # dim-0 shards of every parameter: half each (± rows of odd-sized dims)
        assert abs(r["params_local"] - r["params_global"] / 2) <= 0.01 * r["params_global"]
        assert abs(r["ref_params_local"] - r["ref_params_global"] / 2) <= 0.01 * r["ref_params_global"]
    assert sum(r["params_local"] for r in ranks) == ranks[0]["params_global"]
    record = json.loads((out / RUN_FILE).read_text())
    assert (record["world_size"], record["steps"]) == (2, 1)
    _assert_policy_is_gathered_state(out / "policy", probe / "gathered.safetensors", tiny_model_dir)


# --- several hosts -------------------------------------------------------------------------------

HOSTS = 2
PER_HOST = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_hosts(tiny_model_dir, tmp_path_factory):
    """2 hosts x 2 processes: two torchrun launches on this machine (node ranks 0 and 1, one
    rendezvous), each with its own TMPDIR, HOME and Hugging Face caches; they share ``--out`` only
    (a cluster's shared filesystem), and the start model (read-only, as a model store would be)."""
    root = tmp_path_factory.mktemp("two_hosts")
    recipe = root / "recipe.yaml"
    recipe.write_text(RECIPE)
    out, probe = root / "shared" / "run", root / "shared" / "probe"
    port = _free_port()
    hosts, procs = [], []
    for node in range(HOSTS):
        home = root / f"host{node}"
        tmp = home / "tmp"
        tmp.mkdir(parents=True)
        env = _base_env(
            TMPDIR=str(tmp), HOME=str(home), HF_HOME=str(home / "hf"), XDG_CACHE_HOME=str(home / "cache")
        )
        cmd = [
            sys.executable, "-m", "torch.distributed.run", "--nnodes", str(HOSTS), "--node_rank", str(node),
            "--nproc_per_node", str(PER_HOST), "--master_addr", "127.0.0.1", "--master_port", str(port),
            *_entry(probe, recipe, tiny_model_dir, out),
        ]  # fmt: skip
        log = (home / "launch.log").open("w")
        hosts.append({"home": home, "tmp": tmp, "log": home / "launch.log"})
        procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT))
    codes = []
    for p in procs:
        try:
            codes.append(p.wait(timeout=900))
        except subprocess.TimeoutExpired:
            p.kill()
            codes.append(None)
    return {"codes": codes, "hosts": hosts, "out": out, "probe": probe, "start": tiny_model_dir}


def test_two_hosts_train_and_save_once(two_hosts):
    """Both hosts train the same step; rank 0 alone writes the run (one policy, one record, one
    plan) to the shared ``--out``; every process's temporary files stay on its own host."""
    for code, host in zip(two_hosts["codes"], two_hosts["hosts"], strict=True):
        assert code == 0, host["log"].read_text()[-3000:]
    world = HOSTS * PER_HOST
    ranks = _records(two_hosts["probe"], world)
    for r in ranks:
        host = two_hosts["hosts"][r["rank"] // PER_HOST]
        assert (r["world_size"], r["global_step"], r["fsdp"]) == (world, 1, False)
        assert Path(r["tmpdir"]) == host["tmp"]  # tempfile.mkdtemp goes to this host's TMPDIR
    out = two_hosts["out"]
    record = json.loads((out / RUN_FILE).read_text())
    assert (record["world_size"], record["steps"], record["global_batch"]) == (world, 1, world * 8)
    assert [e["stage_by_rank"] for e in record["per_step"]] == [[record["per_step"][0]["stage"]] * world]
    assert sorted(p.name for p in out.iterdir()) == ["policy", "recipe.yaml", "run_plan.json", RUN_FILE]
    gathered = two_hosts["probe"] / "gathered.safetensors"
    _assert_policy_is_gathered_state(out / "policy", gathered, two_hosts["start"])
    for host in two_hosts["hosts"]:  # nothing of the run under a host's HOME but its temporary folder
        assert not any(p.name.startswith(("policy", "checkpoint-")) for p in host["home"].rglob("*"))


def test_two_hosts_prepare_the_rows_once_per_host(two_hosts):
    """Each host's local main process writes the rows' table once into that host's TMPDIR and the
    host's other processes read it: at most one table per host, none on another host."""
    ranks = _records(two_hosts["probe"], HOSTS * PER_HOST)
    for node in range(HOSTS):
        tables = {t for r in ranks if r["rank"] // PER_HOST == node for t in r["row_tables"]}
        assert len(tables) <= 1, sorted(tables)

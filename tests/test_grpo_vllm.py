"""The curriculum GRPO trainer generating with TRL's colocated vLLM engine (``use_vllm``), for real:
TRL's trainer and vLLM's CPU engine on the 14M checkpoint (the smallest vLLM's CPU attention runs),
LoRA as the recipes train, image prompts from the synthetic clinic.

One engine serves the module (its start is most of the time): four steps (easy twice, medium,
hard), then the checks that drive the same engine directly."""

from __future__ import annotations

import pytest

from rl.datasets import synthetic_attending_rows
from rl.recipe import GRPORecipe, PolicyModelConfig, Stage

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")

# Two passes over easy: its second step shows vLLM the images it encoded before a weight sync.
STAGES = [Stage("easy", 0.1, 0.2, epochs=2), Stage("medium", 0.3, 0.4), Stage("hard", 0.5, 0.6)]


VLLM = {
    "use_vllm": True,
    "vllm_mode": "colocate",
    "vllm_max_model_length": 1024,
    "vllm_gpu_memory_utilization": 0.1,
}


def _recipe(**kw) -> GRPORecipe:
    """tests/test_grpo.py's recipe, generating on vLLM."""
    from tests.test_grpo import _recipe as base

    return base(**{"learning_rate": 1e-3, "max_completion_length": 8, "stages": STAGES, **VLLM, **kw})


def _lora(model) -> PolicyModelConfig:
    """LoRA, as the recipes train."""
    return PolicyModelConfig(model_name_or_path=str(model), use_peft=True)


@pytest.fixture(scope="module")
def rows():
    """Two rows per difficulty, small images: each stage is one step of two prompts."""
    pool = synthetic_attending_rows(40, seed=4, size=56)
    return [
        r for level in ("hard", "easy", "medium") for r in [x for x in pool if x["difficulty"] == level][:2]
    ]


@pytest.fixture(scope="module")
def trained(small_model_dir, rows, tmp_path_factory, monkeypatch_module):
    """A LoRA run of four steps on vLLM; what vLLM was asked and what it returned, per generation."""
    from rl.curriculum import order_rows
    from rl.datasets import to_dataset
    from rl.grpo import build_trainer

    monkeypatch_module.setenv("VLLM_CPU_KVCACHE_SPACE", "1")
    recipe = _recipe(output_dir=str(tmp_path_factory.mktemp("vllm_run")))
    ordered, _ = order_rows(rows, recipe.stages, batch=recipe.prompts_per_step)
    trainer = build_trainer(recipe, _lora(small_model_dir), "attending", to_dataset(ordered), recipe.stages)
    generation = trainer.vllm_generation
    calls: list[dict] = []
    syncs: list[int] = []
    generate, sync = generation.generate, generation.sync_weights

    def recorded_generate(prompts, images, num_generations, profiler=None):
        out = generate(prompts=prompts, images=images, num_generations=num_generations, profiler=profiler)
        calls.append({"prompts": prompts, "images": images, "completion_ids": out[1]})
        return out

    def recorded_sync():
        syncs.append(trainer.state.global_step)
        sync()

    generation.generate, generation.sync_weights = recorded_generate, recorded_sync
    trainer.train()
    return trainer, calls, syncs


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


@pytest.mark.slow
def test_vllm_trains_each_stage_with_its_beta_and_gamma(trained, rows):
    trainer, calls, _ = trained
    assert trainer.state.global_step == 4
    log = trainer.stage_log
    assert [(e["step"], e["stage"], e["beta"], e["gamma"]) for e in log] == [
        (1, "easy", 0.1, 0.2), (2, "easy", 0.1, 0.2), (3, "medium", 0.3, 0.4), (4, "hard", 0.5, 0.6),
    ]  # fmt: skip
    by_case = {r["case_id"]: r["difficulty"] for r in rows}
    for entry in log:
        assert {by_case[c] for c in entry["case_ids"]} == {entry["stage"]}
        assert set(entry["reward_by_difficulty"]) == {"all", entry["stage"]}
    logged = [h for h in trainer.state.log_history if "kl" in h]
    assert [h["entropy_coef"] for h in logged] == [0.2, 0.2, 0.4, 0.6]
    # every generation went through vLLM, with the rows' images
    assert len(calls) == 4
    assert all(len(c["completion_ids"]) == 8 and all(c["images"]) for c in calls)


@pytest.mark.slow
def test_weights_reach_vllm_before_each_step(trained):
    trainer, _, syncs = trained
    assert syncs == [0, 1, 2, 3]  # TRL syncs when the optimizer step changes: before each generation
    # vLLM's log-probabilities of its own samples agree with the trainer's at every step (TRL's
    # figure): the engine samples from the weights being trained. bf16 vs float32 noise only.
    diffs = [h["sampling/sampling_logp_difference/mean"] for h in trainer.state.log_history if "kl" in h]
    assert len(diffs) == 4 and max(diffs) < 0.05, diffs


def _logprobs(trainer, call, seed=0):
    """vLLM's sampled tokens and their log-probabilities for the first prompt of ``call``, seeded."""
    from vllm import SamplingParams

    prompt = {"prompt_token_ids": call["prompts"][0], "multi_modal_data": {"image": call["images"][0][0]}}
    params = SamplingParams(temperature=1.0, seed=seed, max_tokens=6, logprobs=0)
    (out,) = trainer.vllm_generation.llm.generate([prompt], params, use_tqdm=False)
    sample = out.outputs[0]
    return list(sample.token_ids), [next(iter(lp.values())).logprob for lp in sample.logprobs]


@pytest.mark.slow
def test_vllm_generation_follows_the_trainers_weights(trained):
    trainer, calls, _ = trained
    generation = trainer.vllm_generation
    generation.sync_weights()
    before = _logprobs(trainer, calls[0])
    head = trainer.model.get_output_embeddings().weight
    saved = head.data.clone()
    try:
        head.data *= 3.0  # sharper logits in the trainer's model
        generation.sync_weights()
        sharper = _logprobs(trainer, calls[0])
    finally:
        head.data.copy_(saved)
    generation.sync_weights()
    after = _logprobs(trainer, calls[0])
    assert sharper != before  # vLLM generates from the trainer's changed weights ...
    assert after[0] == before[0] and after[1] == pytest.approx(before[1], abs=1e-4)  # ... and back


@pytest.mark.slow
def test_vision_tokens_are_never_sampled(trained):
    from vllm import SamplingParams

    from rl.vllm_sync import VISION_TOKENS

    trainer, calls, _ = trained
    vocab = trainer.processing_class.tokenizer.get_vocab()
    vision = {vocab[t] for t in VISION_TOKENS}
    assert set(trainer.vllm_generation.generation_kwargs["logit_bias"]) == vision
    assert not vision & {t for c in calls for ids in c["completion_ids"] for t in ids}
    # the random policy is near uniform (~7.3 nats of entropy over ~1,550 tokens, 5 of them vision
    # tokens): without the bias vLLM samples some in 2,048 tokens (~7 expected) ...
    first = calls[0]
    prompt = {"prompt_token_ids": first["prompts"][0], "multi_modal_data": {"image": first["images"][0][0]}}
    wide = {"n": 64, "temperature": 2.0, "max_tokens": 32, "seed": 1, "ignore_eos": True}
    (plain,) = trainer.vllm_generation.llm.generate([prompt], SamplingParams(**wide), use_tqdm=False)
    assert vision & {t for o in plain.outputs for t in o.token_ids}
    # ... and with the trainer's sampling settings, never
    generation = trainer.vllm_generation
    temperature, max_tokens = generation.temperature, generation.max_completion_length
    generation.temperature, generation.max_completion_length = 2.0, 32
    try:
        _, completions, _, _ = generation.generate(
            prompts=[calls[0]["prompts"][0]] * 64, images=[calls[0]["images"][0]] * 64, num_generations=64
        )
    finally:
        generation.temperature, generation.max_completion_length = temperature, max_tokens
    assert sum(map(len, completions)) > 1000
    assert not vision & {t for ids in completions for t in ids}


def test_use_vllm_fails_in_one_line_on_a_head_dim_vllms_cpu_cannot_run(tiny_model_dir, rows, tmp_path):
    from rl.grpo import train_grpo
    from rl.vllm_sync import VLLMSetupError, vllm_on_cpu

    if not vllm_on_cpu():
        pytest.skip("vLLM runs on a GPU here")
    with pytest.raises(VLLMSetupError, match="head dim 16") as err:
        train_grpo(_recipe(), _lora(tiny_model_dir), "attending", rows, tmp_path / "run")
    assert "\n" not in str(err.value)
    assert not (tmp_path / "run").exists()  # before anything ran


def test_use_vllm_without_vllm_installed_fails_in_one_line(small_model_dir, rows, tmp_path, monkeypatch):
    import sys

    from rl.grpo import train_grpo
    from rl.vllm_sync import VLLMSetupError

    monkeypatch.setitem(sys.modules, "vllm", None)  # what importlib finds where vLLM is not installed
    with pytest.raises(VLLMSetupError, match="vLLM is not installed") as err:
        train_grpo(_recipe(), _lora(small_model_dir), "attending", rows, tmp_path / "run")
    assert "\n" not in str(err.value)
    assert isinstance(err.value, ValueError)  # the CLIs print it as one `error:` line


def test_the_7b_recipe_generates_with_vllm_colocated():
    from rl.grpo import parse_args

    recipe = parse_args(["--recipe", "qwen2.5-vl-7b-attending"]).recipe
    assert recipe.use_vllm and recipe.vllm_mode == "colocate"
    assert recipe.vllm_max_model_length and recipe.vllm_max_model_length > recipe.max_completion_length
    assert 0 < recipe.vllm_gpu_memory_utilization < 1

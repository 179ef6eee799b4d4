"""The model registry (executor/registry.py) and the tiny random-weight pipelines (tests/tiny_pipelines.py).

Every tiny pipeline, with every scheduler it supports: same seed => bit-identical output, one
denoiser call per scheduler step; save_pretrained + load_pipeline(model_path=...) and the offline
HF-cache path round-trip to identical output; every missing/unknown model is one UserError line.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from parastep.errors import UserError
from parastep.executor import registry
from parastep.executor.hooks import denoiser_of
from parastep.executor.registry import REGISTRY, describe, load_pipeline, set_scheduler
from tiny_pipelines import (
    TINY_NAMES,
    make_tiny_pipeline,
    save_tiny_pipeline,
    supported_pairs,
    supported_schedulers,
    tiny_call_kwargs,
)

PROMPT = "a red cube on a table"
STEPS = 4


def _generate(pipe, name: str, *, output_type: str, seed: int = 0, generator: torch.Generator | None = None):
    generator = generator if generator is not None else torch.Generator("cpu").manual_seed(seed)
    return pipe(PROMPT, generator=generator, output_type=output_type, **tiny_call_kwargs(name, num_inference_steps=STEPS)).images


class _Counter:
    """Counts denoiser forwards (and their batch sizes) and scheduler.step calls on one pipeline."""

    def __init__(self, pipe, generator: torch.Generator) -> None:
        self.forwards = 0
        self.steps = 0
        self.rng_draws_in_step = 0  # scheduler.step calls that advanced the generator (stochastic steps)
        self.batch_sizes: list[int] = []
        self._handle = denoiser_of(pipe)[1].register_forward_pre_hook(self._pre, with_kwargs=True)
        original_step = pipe.scheduler.step

        # functools.wraps keeps step's signature visible: pipelines inspect it to decide whether to
        # pass `generator` / `eta`, so a bare (*args, **kwargs) wrapper would change what they pass.
        @functools.wraps(original_step)
        def counted_step(*args, **kwargs):
            self.steps += 1
            before = generator.get_state()
            result = original_step(*args, **kwargs)
            self.rng_draws_in_step += int(not torch.equal(before, generator.get_state()))
            return result

        pipe.scheduler.step = counted_step

    def _pre(self, module, args, kwargs):
        self.forwards += 1
        x = args[0] if args else kwargs.get("sample", kwargs.get("hidden_states"))
        self.batch_sizes.append(int(x.shape[0]))

    def remove(self) -> None:
        self._handle.remove()


# ----------------------------------------------------------------------------- tiny pipelines


@pytest.mark.parametrize("name,scheduler", supported_pairs())
def test_deterministic_one_forward_per_step(name, scheduler):
    first = make_tiny_pipeline(name, scheduler=scheduler)
    second = make_tiny_pipeline(name, scheduler=scheduler)
    assert type(first.scheduler).__name__ == scheduler
    generator = torch.Generator("cpu").manual_seed(0)
    counter = _Counter(first, generator)
    a = _generate(first, name, output_type="latent", generator=generator)
    b = _generate(second, name, output_type="latent")
    assert torch.isfinite(a).all()
    assert torch.equal(a, b), "same weights seed and same generator seed must give bit-identical latents"

    scheduled = len(first.scheduler.timesteps)
    # PNDM (PLMS) repeats one timestep: num_inference_steps + 1 scheduler steps, each with its own forward.
    assert scheduled == (STEPS + 1 if scheduler == "PNDMScheduler" else STEPS)
    assert counter.forwards == counter.steps == scheduled, "the denoiser must run exactly once per scheduler step"
    # CFG pipelines batch (uncond, cond) in one forward; Flux embeds guidance and runs batch 1.
    expected_batch = 2 if REGISTRY[name].guidance == "cfg" else 1
    assert counter.batch_sizes == [expected_batch] * scheduled
    # Deterministic steps: no scheduler.step draws noise, so replaying a step never moves the generator.
    assert counter.rng_draws_in_step == 0
    counter.remove()

    other = _generate(first, name, output_type="latent", seed=1)
    assert not torch.equal(a, other), "the generator seed must matter"


@pytest.mark.parametrize("name", TINY_NAMES)
def test_decoded_outputs_deterministic(name):
    first, second = make_tiny_pipeline(name), make_tiny_pipeline(name)
    a = _generate(first, name, output_type="np")
    b = _generate(second, name, output_type="np")
    assert a.shape == (1, 32, 32, 3) and a.dtype == np.float32
    assert np.isfinite(a).all() and a.min() >= 0.0 and a.max() <= 1.0
    assert np.array_equal(a, b)
    pil_a = _generate(first, name, output_type="pil")[0]
    pil_b = _generate(second, name, output_type="pil")[0]
    assert pil_a.size == (32, 32)
    assert np.array_equal(np.asarray(pil_a), np.asarray(pil_b))


@pytest.mark.parametrize("name", TINY_NAMES)
def test_tiny_matches_registry_and_seeds_weights(name):
    rng_before = torch.get_rng_state()
    pipe = make_tiny_pipeline(name, seed=0)
    assert torch.equal(torch.get_rng_state(), rng_before), "building must not touch the global RNG"
    spec = REGISTRY[name]
    assert type(pipe).__name__ == spec.pipeline_class
    assert type(pipe.scheduler).__name__ == spec.default_scheduler
    assert denoiser_of(pipe)[1] is getattr(pipe, "unet" if name in ("sd15", "sdxl") else "transformer")

    same = make_tiny_pipeline(name, seed=0).components
    other = make_tiny_pipeline(name, seed=1).components
    for key, module in pipe.components.items():
        if isinstance(module, torch.nn.Module):
            sd, sd_same, sd_other = module.state_dict(), same[key].state_dict(), other[key].state_dict()
            assert all(torch.equal(sd[k], sd_same[k]) for k in sd), f"{key}: same seed, different weights"
            assert any(not torch.equal(sd[k], sd_other[k]) for k in sd), f"{key}: seed 1 gave seed 0's weights"


def test_unsupported_scheduler_for_tiny_is_refused():
    with pytest.raises(ValueError, match="FlowMatchEulerDiscreteScheduler"):
        make_tiny_pipeline("sd3", scheduler="DDIMScheduler")
    with pytest.raises(ValueError, match="no tiny pipeline"):
        make_tiny_pipeline("sd2")


def test_stochastic_scheduler_is_detected():
    """The rng_draws_in_step check above is not vacuous: DDPM's step draws noise from the generator."""
    from diffusers import DDPMScheduler

    pipe = make_tiny_pipeline("sd15")
    pipe.scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
    generator = torch.Generator("cpu").manual_seed(0)
    counter = _Counter(pipe, generator)
    _generate(pipe, "sd15", output_type="latent", generator=generator)
    assert counter.rng_draws_in_step > 0


# ----------------------------------------------------------------------------- load_pipeline: --model-path


@pytest.mark.parametrize("name,scheduler", [(n, None) for n in TINY_NAMES] + [("sdxl", "DPMSolverMultistepScheduler")])
def test_model_path_round_trip(tmp_path, name, scheduler):
    reference = make_tiny_pipeline(name, scheduler=scheduler)
    folder = save_tiny_pipeline(name, tmp_path / name, scheduler=scheduler)
    assert json.loads((folder / "model_index.json").read_text())["_class_name"] == type(reference).__name__
    loaded = load_pipeline("any-label", model_path=folder)  # the class comes from model_index.json
    loaded.set_progress_bar_config(disable=True)
    assert type(loaded) is type(reference)
    assert type(loaded.scheduler) is type(reference.scheduler)
    for key, module in reference.components.items():
        if isinstance(module, torch.nn.Module):
            saved, restored = module.state_dict(), loaded.components[key].state_dict()
            assert saved.keys() == restored.keys() and all(torch.equal(saved[k], restored[k]) for k in saved), key
    _rematerialize(loaded)
    public = lambda config: {k: v for k, v in config.items() if not k.startswith("_")}  # noqa: E731
    assert public(loaded.scheduler.config) == public(reference.scheduler.config)
    assert torch.equal(_generate(loaded, name, output_type="latent"), _generate(reference, name, output_type="latent"))


def _rematerialize(pipe) -> None:
    """Copy every weight into a fresh allocation.

    Loaded weights are views into the memory-mapped safetensors file; their addresses are not
    64-byte aligned, and on CPU that changes the vectorized kernels' summation order (last-bit
    differences, ~2e-7, in the text encoders' projections). The values are identical (checked
    above), so after a copy the loaded pipeline must reproduce the in-memory one bit for bit.
    """
    for module in pipe.components.values():
        if isinstance(module, torch.nn.Module):
            for tensor in [*module.parameters(), *module.buffers()]:
                tensor.data = tensor.data.clone()


def test_model_path_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist") as missing:
        load_pipeline("sdxl", model_path=tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(missing.value)

    with pytest.raises(UserError, match="no model_index.json") as empty:
        load_pipeline("sdxl", model_path=tmp_path)
    assert str(tmp_path) in str(empty.value) and "\n" not in str(empty.value)

    (tmp_path / "model_index.json").write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        load_pipeline("sdxl", model_path=tmp_path)

    broken = save_tiny_pipeline("sd15", tmp_path / "broken")
    for weights in (broken / "unet").glob("*.safetensors"):
        weights.unlink()
    with pytest.raises(UserError, match="could not load the pipeline from") as partial:
        load_pipeline("sd15", model_path=broken)
    assert "\n" not in str(partial.value)


# ----------------------------------------------------------------------------- load_pipeline: HF cache (offline)


def _fake_hf_cache(cache: Path, repo_id: str, name: str) -> None:
    """The layout huggingface_hub writes: models--org--name/{refs/main, snapshots/<commit>/...}."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    commit = "0123456789abcdef0123456789abcdef01234567"
    save_tiny_pipeline(name, repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)


def test_hf_cache_offline_load(tmp_path, monkeypatch):
    repo_id = REGISTRY["sd15"].repo_id
    _fake_hf_cache(tmp_path, repo_id, "sd15")
    reference = make_tiny_pipeline("sd15")
    loaded = load_pipeline("sd15", cache_dir=tmp_path)
    loaded.set_progress_bar_config(disable=True)
    _rematerialize(loaded)
    assert type(loaded) is type(reference)
    assert torch.equal(_generate(loaded, "sd15", output_type="latent"), _generate(reference, "sd15", output_type="latent"))

    # Without cache_dir, the cache comes from the environment at call time.
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    assert registry.hf_cache_dir() == tmp_path
    assert type(load_pipeline("sd15")) is type(reference)


def test_missing_model_names_where_it_looked(tmp_path, monkeypatch):
    spec = REGISTRY["sdxl"]
    with pytest.raises(UserError) as err:
        load_pipeline("sdxl", cache_dir=tmp_path)
    message = str(err.value)
    assert "\n" not in message
    assert str(tmp_path / "models--stabilityai--stable-diffusion-xl-base-1.0") in message
    assert f"download {spec.repo_id}" in message and "--model-path" in message

    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    with pytest.raises(UserError) as err_env:
        load_pipeline("flux")
    assert str(tmp_path / "home" / "hub") in str(err_env.value)
    assert "black-forest-labs/FLUX.1-dev" in str(err_env.value)


def test_unknown_model_lists_names():
    with pytest.raises(UserError) as err:
        load_pipeline("sd2")
    assert all(name in str(err.value) for name in REGISTRY)
    with pytest.raises(UserError, match="unknown model"):
        describe("sd2")


def test_digits_entry_loads_from_package_folder():
    spec = REGISTRY["digits"]
    folder = registry.package_folder(spec)
    assert folder.name == "digits" and folder.parent.name == "models"
    if (folder / "model_index.json").is_file():  # the bundled model has landed
        pipe = load_pipeline("digits")
        assert type(pipe).__name__ == "DigitsPipeline"
        assert isinstance(denoiser_of(pipe)[1], torch.nn.Module)
    else:
        with pytest.raises(UserError, match="no model_index.json") as err:
            load_pipeline("digits")
        assert str(folder) in str(err.value)


def test_digits_class_resolved_from_model_index(tmp_path):
    """A folder whose model_index.json names DigitsPipeline loads as parastep's class (not diffusers')."""
    from diffusers import DDIMScheduler, UNet2DModel

    from parastep.models.digits.pipeline import DigitsPipeline

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        unet = UNet2DModel(
            sample_size=16, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(8, 16),
            down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
            norm_num_groups=4, num_class_embeds=11,
        ).eval()
    DigitsPipeline(unet=unet, scheduler=DDIMScheduler()).save_pretrained(str(tmp_path), safe_serialization=True)
    spec = REGISTRY["digits"]
    for scheduler in spec.schedulers:
        pipe = load_pipeline("digits", model_path=tmp_path)
        assert type(pipe) is DigitsPipeline
        pipe.set_progress_bar_config(disable=True)
        if scheduler != type(pipe.scheduler).__name__:
            set_scheduler(pipe, scheduler)
        runs = []
        for _ in range(2):
            generator = torch.Generator("cpu").manual_seed(0)
            counter = _Counter(pipe, generator)
            runs.append(pipe("7", num_inference_steps=STEPS, generator=generator, output_type="latent").images)
            counter.remove()
            assert counter.forwards == counter.steps == STEPS and counter.batch_sizes == [2] * STEPS, scheduler
            assert counter.rng_draws_in_step == 0, scheduler
        assert torch.equal(runs[0], runs[1]), scheduler


# ----------------------------------------------------------------------------- registry helpers


def test_registry_is_immutable_and_describable():
    with pytest.raises(TypeError):
        REGISTRY["new"] = REGISTRY["sdxl"]  # type: ignore[index]
    with pytest.raises(dataclasses.FrozenInstanceError):
        REGISTRY["sdxl"].default_steps = 1  # type: ignore[misc]
    assert set(REGISTRY) >= {"sdxl", "sd15", "sd3", "pixart-sigma", "flux", "digits"}
    for name, spec in REGISTRY.items():
        line = describe(name)
        assert "\n" not in line and spec.pipeline_class_name in line and spec.default_scheduler in line
        if spec.repo_id:
            assert spec.repo_id in line
        assert spec.default_scheduler in spec.schedulers
    for name in TINY_NAMES:
        assert supported_schedulers(name) == REGISTRY[name].schedulers


def test_set_scheduler_and_denoiser_errors():
    pipe = make_tiny_pipeline("sd15")
    pipe.scheduler.register_to_config(algorithm_type="sde-dpmsolver++")  # a stochastic variant in the config
    set_scheduler(pipe, "DPMSolverMultistepScheduler")
    assert pipe.scheduler.config.algorithm_type == "dpmsolver++" and pipe.scheduler.config.solver_order == 2
    assert pipe.config.scheduler[1] == "DPMSolverMultistepScheduler"  # save_pretrained records the swap
    with pytest.raises(UserError, match="unsupported scheduler"):
        set_scheduler(pipe, "LMSDiscreteScheduler")
    with pytest.raises(UserError, match="cannot drive StableDiffusionPipeline"):
        set_scheduler(pipe, "FlowMatchEulerDiscreteScheduler")

    flow = make_tiny_pipeline("sd3")
    for wrong in ("DDIMScheduler", "EulerDiscreteScheduler", "PNDMScheduler"):
        with pytest.raises(UserError, match="cannot drive StableDiffusion3Pipeline"):
            set_scheduler(flow, wrong)
    set_scheduler(flow, "DPMSolverMultistepScheduler")
    config = flow.scheduler.config
    assert config.use_flow_sigmas and config.prediction_type == "flow_prediction" and config.flow_shift == 3.0
    assert "shift" not in config  # keys the new class does not take are dropped, not warned about
    set_scheduler(flow, "FlowMatchEulerDiscreteScheduler")  # back again: still a flow model, same shift
    assert flow.scheduler.config.shift == 3.0
    # the classes set_scheduler accepts, per family (what exec may switch a folder to)
    assert registry.swappable_schedulers(flow) == ("FlowMatchEulerDiscreteScheduler", "DPMSolverMultistepScheduler")
    assert registry.swappable_schedulers(pipe) == ("DDIMScheduler", "EulerDiscreteScheduler", "DPMSolverMultistepScheduler",
                                                   "PNDMScheduler")

    class NoDenoiser:
        pass

    with pytest.raises(UserError, match="neither a 'unet' nor a 'transformer'"):
        denoiser_of(NoDenoiser())

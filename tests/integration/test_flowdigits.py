"""The bundled flowdigits model (a class-conditional flow-matching DiT): offline loading, quality,
determinism, diffusers conventions, and schedules through the executor's hooks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DiTTransformer2DModel, DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler
from diffusers.utils.torch_utils import randn_tensor

import parastep.models.flowdigits as flow_pkg
import reference_impl as R
from parastep.errors import UserError
from parastep.executor.exchange import LocalExchange
from parastep.executor.hooks import ParaStepConfig, apply_parastep, remove_parastep
from parastep.executor.registry import DIGIT_PIPELINES, REGISTRY, load_pipeline, set_scheduler
from parastep.models.digits.classifier import classify
from parastep.models.flowdigits.pipeline import DEFAULT_GUIDANCE_SCALE, DEFAULT_STEPS, NULL_CLASS, FlowDigitsPipeline
from parastep.models.flowdigits.train import TRAIN_TIMESTEPS, flow_batch

FOLDER = Path(flow_pkg.__file__).resolve().parent
# 30 samples (3 per class, one generator), the defaults: the classifier agreed on 30/30 with generator seeds
# 0, 1, 2 and 3 (mean top probability 0.988-0.997); the bound leaves room for three misses
AGREEMENT_MEASURED = 1.0
AGREEMENT_MIN = 0.9


@pytest.fixture(scope="module")
def pipe():
    p = FlowDigitsPipeline.from_pretrained(FOLDER, local_files_only=True)
    p.set_progress_bar_config(disable=True)
    return p


def _tiny_pipe(scheduler=None) -> FlowDigitsPipeline:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        transformer = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=1, out_channels=1,
                                            num_layers=1, sample_size=8, patch_size=2, num_embeds_ada_norm=10).eval()
    p = FlowDigitsPipeline(transformer=transformer, scheduler=scheduler or FlowMatchEulerDiscreteScheduler())
    p.set_progress_bar_config(disable=True)
    return p


def _flow_dpm() -> DPMSolverMultistepScheduler:
    return DPMSolverMultistepScheduler(use_flow_sigmas=True, prediction_type="flow_prediction", flow_shift=1.0,
                                       algorithm_type="dpmsolver++", solver_order=2)


class _Spy:
    """Every call of the transformer's own forward (below the hooks): its arguments, cloned."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.calls: list[dict] = []
        self._h = module.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        x = args[0] if args else kwargs["hidden_states"]
        self.calls.append({"x": x.clone(), "t": kwargs["timestep"].clone(), "labels": kwargs["class_labels"].clone()})

    def remove(self) -> None:
        self._h.remove()


def test_weights_are_committed_and_small():
    for rel in ("model_index.json", "transformer/config.json", "transformer/diffusion_pytorch_model.safetensors",
                "scheduler/scheduler_config.json", "training.json"):
        assert (FOLDER / rel).is_file(), rel
    files = [f for f in FOLDER.rglob("*") if f.is_file() and f.suffix in (".safetensors", ".json")]
    assert sum(f.stat().st_size for f in files) < 10 * 2**20


def test_loads_offline_and_generates_requested_classes(pipe, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loaded = FlowDigitsPipeline.from_pretrained(FOLDER, local_files_only=True)
    assert isinstance(loaded.scheduler, FlowMatchEulerDiscreteScheduler) and loaded.scheduler.config.shift == 1.0
    assert isinstance(loaded.transformer, DiTTransformer2DModel) and loaded.null_class == NULL_CLASS == 10
    wanted = [d for d in range(10) for _ in range(3)]
    images = pipe([str(d) for d in wanted], generator=torch.Generator().manual_seed(0), output_type="pt").images
    assert images.shape == (30, 1, 16, 16) and float(images.min()) >= 0 and float(images.max()) <= 1
    labels, top_p = classify(images)
    agree = float(np.mean(labels == np.array(wanted)))
    assert agree >= AGREEMENT_MIN, f"classifier agrees on {agree:.0%} only (measured {AGREEMENT_MEASURED:.0%}); labels {labels.tolist()}"
    assert float(top_p.mean()) >= 0.9


def test_defaults_match_the_registry():
    spec = REGISTRY["flowdigits"]
    assert spec.default_steps == DEFAULT_STEPS and spec.default_guidance_scale == DEFAULT_GUIDANCE_SCALE
    assert spec.default_scheduler == "FlowMatchEulerDiscreteScheduler" and spec.guidance == "cfg"
    assert "FlowDigitsPipeline" in DIGIT_PIPELINES and "DigitsPipeline" in DIGIT_PIPELINES


def test_deterministic_given_seed(pipe):
    a = pipe("7", num_inference_steps=10, generator=torch.Generator().manual_seed(3), output_type="pt").images
    b = pipe("7", num_inference_steps=10, generator=torch.Generator().manual_seed(3), output_type="pt").images
    c = pipe("7", num_inference_steps=10, generator=torch.Generator().manual_seed(4), output_type="pt").images
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("make_scheduler", [FlowMatchEulerDiscreteScheduler, _flow_dpm], ids=["flow-euler", "flow-dpm++2m"])
@pytest.mark.parametrize("guidance_scale", [1.0, 2.5])
def test_exactly_one_denoiser_call_per_step(make_scheduler, guidance_scale):
    p = _tiny_pipe(make_scheduler())
    spy = _Spy(p.transformer)
    out = p(["1", "2", "3"], num_inference_steps=7, guidance_scale=guidance_scale,
            generator=torch.Generator().manual_seed(0), output_type="np").images
    spy.remove()
    assert len(spy.calls) == 7
    assert [c["x"].shape[0] for c in spy.calls] == [6 if guidance_scale > 1 else 3] * 7
    assert out.shape == (3, 8, 8, 1) and np.isfinite(out).all()


def test_cfg_batch_layout_and_timesteps():
    """[null; cond] in one call, both halves the same latents, every row at the scheduler's own t = 1000 sigma."""
    p = _tiny_pipe()
    spy = _Spy(p.transformer)
    p([4, 0, 9], num_inference_steps=5, guidance_scale=3.0, generator=torch.Generator().manual_seed(5), output_type="latent")
    spy.remove()
    sched = p.scheduler
    assert torch.allclose(sched.timesteps, sched.sigmas[:-1] * TRAIN_TIMESTEPS)
    assert float(sched.sigmas[0]) == 1.0 and float(sched.sigmas[-1]) == 0.0
    for i, call in enumerate(spy.calls):
        assert call["labels"].tolist() == [NULL_CLASS] * 3 + [4, 0, 9]
        uncond, cond = call["x"].chunk(2)
        assert torch.equal(uncond, cond)
        assert torch.equal(call["t"], sched.timesteps[i].expand(6))


def _manual_loop(p: FlowDigitsPipeline, labels: list[int], *, steps: int, g: float, seed: int) -> torch.Tensor:
    """docs/design.md §1 written out: x_0 seeded, v_i = uncond + g (cond - uncond), x_{i+1} = step_i(x_i, v_i)."""
    x = randn_tensor((len(labels), 1, 8, 8), generator=torch.Generator().manual_seed(seed))
    sched = FlowMatchEulerDiscreteScheduler.from_config(p.scheduler.config)
    sched.set_timesteps(steps)
    cond = torch.tensor(labels)
    null = torch.full_like(cond, NULL_CLASS)
    with torch.no_grad():
        for t in sched.timesteps:
            u, c = p.transformer(torch.cat([x, x]), timestep=t.expand(2 * len(labels)),
                                 class_labels=torch.cat([null, cond])).sample.chunk(2)
            x = sched.step(u + g * (c - u), t, x).prev_sample
    return x


def test_matches_a_manual_cfg_loop():
    p = _tiny_pipe()
    got = p([4, 0], num_inference_steps=6, guidance_scale=3.0, generator=torch.Generator().manual_seed(5),
            output_type="latent").images
    assert torch.equal(got, _manual_loop(p, [4, 0], steps=6, g=3.0, seed=5))


def test_training_objective_is_the_schedulers_convention():
    """train.py's x_sigma = (1 - sigma) x0 + sigma noise at timestep 1000 sigma is the scheduler's own
    scale_noise at its timesteps, and Euler steps with the true velocity noise - x0 stay exactly on
    the straight line, ending at x0."""
    gen = torch.Generator().manual_seed(0)
    x0 = torch.rand(4, 1, 16, 16, generator=gen) * 2 - 1
    xt, timestep, target = flow_batch(x0, gen=torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(1)
    sigma = torch.rand(4, generator=g)
    noise = torch.randn(x0.shape, generator=g)
    assert torch.equal(timestep, sigma * TRAIN_TIMESTEPS) and torch.equal(target, noise - x0)
    s = (timestep / TRAIN_TIMESTEPS).view(-1, 1, 1, 1)
    assert torch.allclose(xt, (1 - s) * x0 + s * noise, atol=1e-6)
    sched = FlowMatchEulerDiscreteScheduler.from_pretrained(FOLDER / "scheduler")
    sched.set_timesteps(DEFAULT_STEPS)
    for k in (0, 5, DEFAULT_STEPS - 1):
        t = sched.timesteps[k]
        s = float(t) / TRAIN_TIMESTEPS
        assert torch.allclose(sched.scale_noise(x0, t.reshape(1).expand(4), noise), (1 - s) * x0 + s * noise, atol=1e-6)

    x = noise[:1]
    for i, t in enumerate(sched.timesteps):
        x = sched.step(noise[:1] - x0[:1], t, x).prev_sample
        s = float(sched.sigmas[i + 1])
        assert torch.allclose(x, (1 - s) * x0[:1] + s * noise[:1], atol=1e-5)
    assert torch.allclose(x, x0[:1], atol=1e-5)


def test_callback_and_output_types():
    p = _tiny_pipe()
    seen: list[int] = []

    def cb(pipe, i, t, kwargs):
        seen.append(i)
        return {"latents": torch.zeros_like(kwargs["latents"])} if i == 4 else {}

    out = p("5", num_inference_steps=5, generator=torch.Generator().manual_seed(0), output_type="latent",
            callback_on_step_end=cb).images
    assert seen == [0, 1, 2, 3, 4] and torch.equal(out, torch.zeros_like(out))
    gen = lambda: torch.Generator().manual_seed(1)  # noqa: E731
    pil = p("3", num_inference_steps=3, generator=gen()).images
    assert len(pil) == 1 and pil[0].size == (8, 8)
    np_out = p("3", num_inference_steps=3, generator=gen(), output_type="np").images
    pt_out = p("3", num_inference_steps=3, generator=gen(), output_type="pt").images
    np.testing.assert_array_equal(np_out[..., 0], pt_out[:, 0].numpy())
    assert torch.equal(p("3", num_inference_steps=3, generator=gen(), output_type="pt", return_dict=False)[0], pt_out)
    assert p(class_labels=[3], num_images_per_prompt=2, num_inference_steps=3, generator=gen(), output_type="pt").images.shape[0] == 2
    with pytest.raises(ValueError):
        p("x", num_inference_steps=3)


def test_registry_loads_it_and_flow_dpm_solver_drives_it():
    pipe = load_pipeline("flowdigits")
    assert type(pipe) is FlowDigitsPipeline
    pipe.set_progress_bar_config(disable=True)
    set_scheduler(pipe, "DPMSolverMultistepScheduler")
    assert pipe.scheduler.config.use_flow_sigmas and pipe.scheduler.config.flow_shift == 1.0
    wanted = list(range(10))
    images = pipe(wanted, num_inference_steps=20, generator=torch.Generator().manual_seed(0), output_type="pt").images
    labels, _ = classify(images)
    assert float(np.mean(labels == np.array(wanted))) >= 0.7, labels.tolist()
    for wrong in ("DDIMScheduler", "EulerDiscreteScheduler"):
        with pytest.raises(UserError, match="cannot drive FlowDigitsPipeline"):
            set_scheduler(pipe, wrong)


def test_inputs_treat_it_as_a_bundled_digit_model(pipe):
    from parastep.executor.inputs import Inputs, check_request, default_prompt, default_prompts
    from parastep.profiler.call import DIGIT_PROMPTS, default_call

    assert default_prompt(pipe) == "7" and default_prompts(pipe) == [str(d) for d in range(10)]
    kwargs, resolution, prompts, steps = default_call(pipe, "flowdigits")
    assert prompts == DIGIT_PROMPTS and resolution == (16, 16) and steps == DEFAULT_STEPS
    assert kwargs == {"guidance_scale": DEFAULT_GUIDANCE_SCALE}
    with pytest.raises(UserError, match="class-conditional"):
        check_request("flowdigits", None, Inputs(prompts=("a cat",)), folder=None)


# ----------------------------------------------------------------------------- through the executor

T = 10
SEQUENTIAL = [{"start": s, "kind": "exact"} for s in range(T)]
# exact warm-up, a parallel window over two ranks, a batched one (two offsets per rank), a reuse step, exact end
PARALLEL = [{"start": 0, "kind": "exact"}, {"start": 1, "kind": "exact"},
            {"start": 2, "kind": "parallel", "placement": [0, 1, 0], "predictor": "last"},
            {"start": 5, "kind": "parallel", "placement": [0, 0, 1, 1], "predictor": "linear", "batch": True},
            {"start": 9, "kind": "exact"}]
LABELS = [3, 8]


def _run(pipe, windows):
    sched = R.make_schedule(windows, num_steps=T, world_size=2, output_bytes=4 * 2 * 256, model="flowdigits",
                            scheduler="FlowMatchEulerDiscreteScheduler", guidance_scale=DEFAULT_GUIDANCE_SCALE,
                            resolution_px=(16, 16))
    handle = apply_parastep(pipe, ParaStepConfig(windows=sched.windows, num_steps=T, exchange=LocalExchange()))
    try:
        out = _plain(pipe)
    finally:
        remove_parastep(pipe)
    return out, handle


def _plain(pipe):
    return pipe(LABELS, num_inference_steps=T, generator=torch.Generator().manual_seed(0), output_type="latent").images


def test_exact_schedule_is_bit_equal_to_the_plain_pipeline(pipe):
    plain = _plain(pipe)
    got, handle = _run(pipe, SEQUENTIAL)
    assert torch.equal(got, plain)
    assert sum(s.forwards for s in handle.stats()) == T
    assert torch.equal(_plain(pipe), plain)        # remove_parastep left the pipeline as it was


@torch.no_grad()
def _reference(pipe, windows) -> torch.Tensor:
    """docs/design.md §1 (tests/reference_impl.reference_loop) with the flowdigits call written out."""
    g = DEFAULT_GUIDANCE_SCALE
    cond = torch.tensor(LABELS)
    labels = torch.cat([torch.full_like(cond, NULL_CLASS), cond])
    gen = torch.Generator().manual_seed(0)
    noise = randn_tensor((len(LABELS), 1, 16, 16), generator=gen)

    def combine(raw):
        u, c = raw.chunk(2)
        return u + g * (c - u)

    def guided(s, xin, t, split=False):
        return combine(pipe.transformer(hidden_states=torch.cat([xin, xin]), timestep=t.expand(2 * len(LABELS)),
                                        class_labels=labels).sample)

    def guided_batch(items):
        inp = torch.cat([torch.cat([xin, xin]) for _, xin, _ in items])
        rows = torch.cat([t.reshape(1).expand(2 * len(LABELS)) for _, _, t in items])
        raw = pipe.transformer(hidden_states=inp, timestep=rows, class_labels=labels.repeat(len(items))).sample
        return [combine(part) for part in raw.chunk(len(items))]

    return R.reference_loop(pipe.scheduler, guided, noise, windows, num_steps=T, scale_noise=False,
                            generator=gen, guided_batch=guided_batch)


def test_parallel_schedule_matches_the_reference_and_stays_close(pipe):
    got, handle = _run(pipe, PARALLEL)
    assert torch.equal(got, _reference(pipe, PARALLEL))
    stats = {s.start: s for s in handle.stats()}
    assert stats[5].calls == 2 and stats[5].forwards == 4 and stats[5].batch_fallbacks == 0   # one call per rank
    seq = _plain(pipe)
    assert not torch.equal(got, seq)
    img, ref = (got / 2 + 0.5).clamp(0, 1), (seq / 2 + 0.5).clamp(0, 1)
    psnr = float(-10 * torch.log10(((img - ref) ** 2).mean()))
    assert psnr >= 25.0, psnr          # measured 33.8 dB (images in [0, 1], 10 steps, g = 1.5, classes 3 and 8)
    assert classify(img)[0].tolist() == LABELS

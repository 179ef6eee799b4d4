"""Single-process tests of the executor's hooks (docs/design.md §1, §4): exactness, refusals, remove, API."""

from __future__ import annotations

import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import reference_impl as R
import tiny_pipelines as TP
from parastep.errors import UserError
from parastep.executor.exchange import LocalExchange
from parastep.executor.hooks import ParaStepConfig, apply_parastep, remove_parastep
from parastep.executor.metrics import psnr_db, ssim

T = 4
# diffusers' own deprecation noise (numpy copy=False in some schedulers, config warnings)
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")


def _exact(n: int, world_size: int = 1):
    return R.make_schedule([{"start": i, "kind": "exact"} for i in range(n)], num_steps=n, world_size=world_size,
                           output_bytes=4)


def _call_tiny(pipe, name: str, *, steps: int = T):
    kw = TP.tiny_call_kwargs(name, num_inference_steps=steps)
    return pipe(prompt="a red cat", generator=torch.Generator().manual_seed(0), output_type="latent", **kw).images


def _attrs(pipe):
    from parastep.executor.hooks import denoiser_of

    _, den = denoiser_of(pipe)
    return set(pipe.__dict__), set(pipe.scheduler.__dict__), set(den.__dict__)


@pytest.mark.parametrize("name,scheduler", TP.supported_pairs())
def test_exact_only_schedule_is_bit_exact_and_remove_restores(name, scheduler):
    pipe = TP.make_tiny_pipeline(name, scheduler=scheduler)
    plain = _call_tiny(pipe, name)
    n = len(pipe.scheduler.timesteps)          # PNDM runs one step more than asked for
    before = _attrs(pipe)
    handle = apply_parastep(pipe, ParaStepConfig(windows=_exact(n).windows, num_steps=n))
    hooked = _call_tiny(pipe, name)
    assert handle.steps_done == n and handle.forwards == n
    remove_parastep(pipe)
    assert torch.equal(hooked, plain)
    assert _attrs(pipe) == before
    assert torch.equal(_call_tiny(pipe, name), plain)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), scheduler=st.sampled_from(["ddim", "euler", "dpm++2m", "unipc", *R.STOCHASTIC]),
       num_steps=st.integers(3, 10), eta=st.sampled_from([0.0, 0.0, 0.7]))
def test_random_schedules_match_reference_implementation(seed, scheduler, num_steps, eta):
    """Local emulation (one process owns every offset) == the independent loop of docs/design.md §1, bit for bit;
    stochastic schedulers (and DDIM with eta > 0) included: the generator's noise is replayed."""
    pipe = R.tiny_sd_pipeline(scheduler)
    eta = eta if scheduler == "ddim" else 0.0
    wins = R.random_windows(random.Random(seed), num_steps=num_steps, world_size=3, max_window=4)
    sched = R.make_schedule(wins, num_steps=num_steps, world_size=3, output_bytes=4)
    want = R.reference_latents(pipe, sched.windows, num_steps=num_steps, eta=eta)   # on the fresh pipeline
    handle = apply_parastep(pipe, ParaStepConfig(windows=sched.windows, num_steps=num_steps, exchange=LocalExchange()))
    got = R.run_plain(pipe, num_steps=num_steps, eta=eta)
    remove_parastep(pipe)
    assert torch.equal(got, want), (wins, (got - want).abs().max())
    forwards = sum(1 if w["kind"] == "exact" else len(w.get("placement", [])) for w in wins)
    assert handle.forwards == forwards
    assert sum(s.forwards for s in handle.stats()) == forwards
    assert [s.start for s in handle.stats()] == [w["start"] for w in wins]


@pytest.mark.parametrize("name,scheduler", TP.supported_pairs())
def test_every_tiny_pipeline_matches_reference_implementation(name, scheduler):
    """Each registered pipeline class: random schedules through the hooks (local emulation) equal the
    reference loop with that pipeline's conditioning and guidance written out in reference_impl."""
    pipe = TP.make_tiny_pipeline(name, scheduler=scheduler)
    steps = 6
    n = steps + 1 if scheduler == "PNDMScheduler" else steps      # PNDM (PLMS) runs one step more
    kw = TP.tiny_call_kwargs(name, num_inference_steps=steps)
    rng = random.Random(sum(map(ord, name + scheduler)))           # fixed per case
    for _ in range(2):
        wins = R.random_windows(rng, num_steps=n, world_size=2, max_window=3)
        sched = R.make_schedule(wins, num_steps=n, world_size=2, output_bytes=4)
        want = R.reference_latents_tiny(name, pipe, wins, num_steps=n, inference_steps=steps, prompt="a red cat", seed=0,
                                        call_kwargs=kw)
        apply_parastep(pipe, ParaStepConfig(windows=sched.windows, num_steps=n))
        got = _call_tiny(pipe, name, steps=steps)
        remove_parastep(pipe)
        assert torch.equal(got, want), wins


def test_parallel_window_differs_from_sequential_and_linear_differs_from_last():
    """The mechanism is not a no-op: windows change the result, and predictors differ."""
    pipe = R.tiny_sd_pipeline("ddim")
    plain = R.run_plain(pipe, num_steps=6)
    outs = {}
    for pred in ("last", "linear"):
        wins = [{"start": 0, "kind": "exact"}, {"start": 1, "kind": "exact"},
                {"start": 2, "kind": "parallel", "placement": [0, 1, 0, 1], "predictor": pred}]
        s = R.make_schedule(wins, num_steps=6, world_size=2, output_bytes=4)
        apply_parastep(pipe, ParaStepConfig(windows=s.windows, num_steps=6))
        outs[pred] = R.run_plain(pipe, num_steps=6)
        remove_parastep(pipe)
    assert not torch.equal(outs["last"], plain) and not torch.equal(outs["linear"], outs["last"])


def test_observer_records_trajectory_and_override_replays_without_forwards():
    pipe = R.tiny_sd_pipeline("dpm++2m")
    n = 6
    records = []
    s = _exact(n)
    apply_parastep(pipe, ParaStepConfig(windows=s.windows, num_steps=n,
                                        observer=lambda r: records.append(r)))
    plain = R.run_plain(pipe, num_steps=n)
    remove_parastep(pipe)
    assert [r.step for r in records] == list(range(n))
    for a, b in zip(records, records[1:]):
        assert torch.equal(a.latents_out, b.latents_in)
    assert torch.equal(records[-1].latents_out, plain)
    recorded = {r.step: r.guided_output.clone() for r in records}
    handle = apply_parastep(pipe, ParaStepConfig(windows=s.windows, num_steps=n, override_outputs=recorded))
    replayed = R.run_plain(pipe, num_steps=n)
    remove_parastep(pipe)
    assert torch.equal(replayed, plain)
    assert handle.forwards == 1   # only the first step, to obtain a placeholder of the right shape


def test_parallel_records_carry_predicted_inputs():
    pipe = R.tiny_sd_pipeline("euler")
    wins = [{"start": 0, "kind": "exact"}, {"start": 1, "kind": "parallel", "placement": [0, 0, 0], "predictor": "last"}]
    s = R.make_schedule(wins, num_steps=4, world_size=1, output_bytes=4)
    recs = []
    apply_parastep(pipe, ParaStepConfig(windows=s.windows, num_steps=4, observer=recs.append))
    R.run_plain(pipe, num_steps=4)
    remove_parastep(pipe)
    par = [r for r in recs if r.window_kind == "parallel"]
    assert [r.offset for r in par] == [0, 1, 2]
    assert torch.equal(par[0].denoiser_input, par[0].latents_in)          # offset 0 sees the exact x_s
    assert not torch.equal(par[1].denoiser_input, par[1].latents_in)      # later offsets see xhat



def _twice_pipeline():
    import diffusers

    class TwicePipeline(diffusers.DiffusionPipeline):
        def __init__(self, unet, scheduler):
            super().__init__()
            self.register_modules(unet=unet, scheduler=scheduler)

        @torch.no_grad()
        def __call__(self, num_inference_steps: int = 3):
            self.scheduler.set_timesteps(num_inference_steps)
            x = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
            for t in self.scheduler.timesteps:
                a = self.unet(x, t).sample
                b = self.unet(x, t).sample
                x = self.scheduler.step(a + b, t, x).prev_sample
            return x

    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=3, out_channels=3, layers_per_block=1,
                                 block_out_channels=(8, 8), norm_num_groups=4,
                                 down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"))
    return TwicePipeline(unet, diffusers.DDIMScheduler())


def test_pipeline_calling_denoiser_twice_per_step_is_refused():
    pipe = _twice_pipeline()
    apply_parastep(pipe, ParaStepConfig(windows=_exact(3).windows, num_steps=3))
    with pytest.raises(UserError, match="calls its denoiser 2 times per step"):
        pipe(num_inference_steps=3)
    remove_parastep(pipe)
    pipe(num_inference_steps=3)   # unhooked it runs


@pytest.mark.parametrize("make", [lambda d: d.HeunDiscreteScheduler(), lambda d: d.KDPM2AncestralDiscreteScheduler(),
                                  lambda d: d.ScoreSdeVeScheduler()], ids=["heun", "kdpm2-ancestral", "sde-ve"])
def test_higher_order_and_unreplayable_schedulers_are_refused(make):
    import diffusers

    pipe = R.tiny_sd_pipeline("ddim")
    pipe.scheduler = make(diffusers)
    with pytest.raises(UserError, match="not supported by parastep"):
        apply_parastep(pipe, ParaStepConfig(windows=_exact(T).windows, num_steps=T))
    assert "step" not in pipe.scheduler.__dict__


def test_noise_without_generator_and_wrong_step_count_are_refused():
    pipe = R.tiny_sd_pipeline("ddim")
    apply_parastep(pipe, ParaStepConfig(windows=_exact(T).windows, num_steps=T))
    pos, neg = R.prompt_embeds()
    with pytest.raises(UserError, match="draws noise but the pipeline passes it no generator"):
        pipe(prompt_embeds=pos, negative_prompt_embeds=neg, num_inference_steps=T, eta=0.5, height=16, width=16,
             output_type="latent")
    with pytest.raises(UserError, match="produced 5 timesteps for a schedule of 4 steps"):
        R.run_plain(pipe, num_steps=T + 1)
    with pytest.raises(UserError, match="already applied"):
        apply_parastep(pipe, ParaStepConfig(windows=_exact(T).windows, num_steps=T))
    remove_parastep(pipe)
    pipe = R.tiny_sd_pipeline("euler-a")
    apply_parastep(pipe, ParaStepConfig(windows=_exact(T).windows, num_steps=T))
    with pytest.raises(UserError, match="EulerAncestralDiscreteScheduler.step draws noise"):
        pipe(prompt_embeds=pos, negative_prompt_embeds=neg, num_inference_steps=T, height=16, width=16, output_type="latent")
    remove_parastep(pipe)


def test_psnr_and_ssim():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(2, 3, 24, 24, generator=g, dtype=torch.float64)
    assert psnr_db(a, a) == float("inf") and ssim(a, a) == pytest.approx(1.0)
    b = (a + 0.01).clamp(0, 1)
    mse = torch.mean((a - b) ** 2).item()
    assert psnr_db(a, b) == pytest.approx(10 * torch.log10(torch.tensor(1.0 / mse)).item())
    noisy = (a + 0.2 * torch.randn(a.shape, generator=g, dtype=torch.float64)).clamp(0, 1)
    assert ssim(a, b) > ssim(a, noisy) > 0 and ssim(a, noisy) == pytest.approx(ssim(noisy, a))
    # constant images: SSIM reduces to the luminance term (2 m1 m2 + C1) / (m1^2 + m2^2 + C1)
    c1 = 0.01 ** 2
    x, y = (torch.full((1, 1, 16, 16), v, dtype=torch.float64) for v in (0.2, 0.6))
    assert ssim(x, y) == pytest.approx((2 * 0.2 * 0.6 + c1) / (0.2 ** 2 + 0.6 ** 2 + c1), rel=1e-9)


def test_unconditional_pipeline_with_scheduler_output_objects_matches_reference():
    """DDIMPipeline calls ``scheduler.step(...).prev_sample`` (return_dict=True) and has no CFG."""
    import diffusers
    from diffusers.utils.torch_utils import randn_tensor

    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=3, out_channels=3, layers_per_block=1,
                                 block_out_channels=(8, 8), norm_num_groups=4,
                                 down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"))
    pipe = diffusers.DDIMPipeline(unet=unet, scheduler=diffusers.DDIMScheduler())
    pipe.set_progress_bar_config(disable=True)
    n = 9
    wins = [{"start": 0, "kind": "exact"}, {"start": 1, "kind": "parallel", "placement": [0, 1, 1], "predictor": "last"},
            {"start": 4, "kind": "reuse", "size": 2, "predictor": "linear"},
            {"start": 6, "kind": "parallel", "placement": [1, 0, 0], "predictor": "linear"}]
    s = R.make_schedule(wins, num_steps=n, world_size=2, output_bytes=4, guidance_scale=None)
    records = []
    apply_parastep(pipe, ParaStepConfig(windows=s.windows, num_steps=n, observer=records.append))
    pipe(batch_size=1, num_inference_steps=n, generator=torch.Generator().manual_seed(0), output_type="np")
    remove_parastep(pipe)
    x0 = randn_tensor((1, 3, 8, 8), generator=torch.Generator().manual_seed(0))
    want = R.reference_loop(pipe.scheduler, lambda sch, x, t: unet(x, t).sample, x0, s.windows, num_steps=n)
    assert torch.equal(records[0].latents_in, x0)
    assert torch.equal(records[-1].latents_out, want)

"""The bundled digits model: offline loading, quality, determinism, diffusers conventions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler, UNet2DModel

import parastep.models.digits as digits_pkg
from parastep.models.digits.classifier import classify, real_digit_scores
from parastep.models.digits.pipeline import NULL_CLASS, DigitsPipeline, parse_digit_prompt

FOLDER = Path(digits_pkg.__file__).resolve().parent


@pytest.fixture(scope="module")
def pipe():
    p = DigitsPipeline.from_pretrained(FOLDER, local_files_only=True)
    p.set_progress_bar_config(disable=True)
    return p


def _tiny_pipe(scheduler=None) -> DigitsPipeline:
    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, num_class_embeds=11,
                       block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4,
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"))
    p = DigitsPipeline(unet=unet, scheduler=scheduler or DDIMScheduler(num_train_timesteps=1000))
    p.set_progress_bar_config(disable=True)
    return p


class _ForwardCounter:
    def __init__(self, module: torch.nn.Module) -> None:
        self.calls = 0
        self.batch_sizes: list[int] = []
        self._h = module.register_forward_pre_hook(self._hook)

    def _hook(self, module, args):
        self.calls += 1
        self.batch_sizes.append(int(args[0].shape[0]))

    def remove(self) -> None:
        self._h.remove()


def test_weights_are_committed_and_small():
    files = [f for f in FOLDER.rglob("*") if f.is_file() and f.suffix in (".safetensors", ".json")]
    assert (FOLDER / "model_index.json").is_file()
    assert (FOLDER / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert sum(f.stat().st_size for f in files) < 10 * 2**20


def test_loads_offline_and_generates_requested_classes(pipe, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loaded = DigitsPipeline.from_pretrained(FOLDER, local_files_only=True)
    assert isinstance(loaded.scheduler, DDIMScheduler)
    assert loaded.unet.config.num_class_embeds == 11
    wanted = [d for d in range(10) for _ in range(3)]
    images = pipe([str(d) for d in wanted], num_inference_steps=30, generator=torch.Generator().manual_seed(0),
                  output_type="pt").images
    assert images.shape == (30, 1, 16, 16) and float(images.min()) >= 0 and float(images.max()) <= 1
    labels, top_p = classify(images)
    agree = float(np.mean(labels == np.array(wanted)))
    assert agree >= 0.9, f"classifier agrees on {agree:.0%} only; labels {labels.tolist()}"
    assert float(top_p.mean()) >= 0.7


def test_deterministic_given_seed(pipe):
    a = pipe("7", num_inference_steps=20, generator=torch.Generator().manual_seed(3), output_type="pt").images
    b = pipe("7", num_inference_steps=20, generator=torch.Generator().manual_seed(3), output_type="pt").images
    c = pipe("7", num_inference_steps=20, generator=torch.Generator().manual_seed(4), output_type="pt").images
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("scheduler_cls", [DDIMScheduler, EulerDiscreteScheduler, DPMSolverMultistepScheduler])
@pytest.mark.parametrize("guidance_scale", [1.0, 2.5])
def test_exactly_one_denoiser_call_per_step(scheduler_cls, guidance_scale):
    p = _tiny_pipe(scheduler_cls(num_train_timesteps=1000))
    counter = _ForwardCounter(p.unet)
    out = p(["1", "2", "3"], num_inference_steps=7, guidance_scale=guidance_scale,
            generator=torch.Generator().manual_seed(0), output_type="np").images
    counter.remove()
    assert counter.calls == 7
    assert counter.batch_sizes == [6 if guidance_scale > 1 else 3] * 7
    assert out.shape == (3, 8, 8, 1) and np.isfinite(out).all()


def _manual_loop(p: DigitsPipeline, labels: list[int], *, steps: int, g: float, seed: int) -> torch.Tensor:
    """docs/design.md §1 written out: x_0 seeded, e_i = uncond + g (cond - uncond), x_{i+1} = step_i(x_i, e_i)."""
    x = torch.randn((len(labels), 1, 8, 8), generator=torch.Generator().manual_seed(seed))
    sched = DDIMScheduler.from_config(p.scheduler.config)
    sched.set_timesteps(steps)
    x = x * sched.init_noise_sigma
    cond = torch.tensor(labels)
    null = torch.full_like(cond, NULL_CLASS)
    with torch.no_grad():
        for t in sched.timesteps:
            u, c = p.unet(torch.cat([x, x]), t, class_labels=torch.cat([null, cond])).sample.chunk(2)
            x = sched.step(u + g * (c - u), t, x).prev_sample
    return x


def test_matches_a_manual_cfg_loop():
    p = _tiny_pipe()
    got = p([4, 0], num_inference_steps=6, guidance_scale=3.0, generator=torch.Generator().manual_seed(5),
            output_type="latent").images
    want = _manual_loop(p, [4, 0], steps=6, g=3.0, seed=5)
    assert torch.equal(got, want)


def test_callback_sees_and_can_replace_latents():
    p = _tiny_pipe()
    seen: list[int] = []

    def cb(pipe, i, t, kwargs):
        seen.append(i)
        return {"latents": torch.zeros_like(kwargs["latents"])} if i == 4 else {}

    out = p("5", num_inference_steps=5, generator=torch.Generator().manual_seed(0), output_type="latent",
            callback_on_step_end=cb).images
    assert seen == [0, 1, 2, 3, 4]
    assert torch.equal(out, torch.zeros_like(out))


def test_output_types_and_return_dict():
    p = _tiny_pipe()
    gen = lambda: torch.Generator().manual_seed(1)  # noqa: E731
    pil = p("3", num_inference_steps=3, generator=gen()).images
    assert len(pil) == 1 and pil[0].size == (8, 8)
    np_out = p("3", num_inference_steps=3, generator=gen(), output_type="np").images
    pt_out = p("3", num_inference_steps=3, generator=gen(), output_type="pt").images
    tup = p("3", num_inference_steps=3, generator=gen(), output_type="pt", return_dict=False)
    np.testing.assert_array_equal(np_out[..., 0], pt_out[:, 0].numpy())
    assert torch.equal(tup[0], pt_out)
    twice = p(class_labels=[3], num_images_per_prompt=2, num_inference_steps=3, generator=gen(), output_type="pt").images
    assert twice.shape[0] == 2


@pytest.mark.parametrize("bad", ["x", "12", -1, 10, [], True])
def test_bad_prompts_are_rejected(bad):
    with pytest.raises(ValueError):
        parse_digit_prompt(bad)


def test_prompt_parsing():
    assert parse_digit_prompt("7") == [7]
    assert parse_digit_prompt(["1", 2, " 3 "]) == [1, 2, 3]


def test_classifier_on_real_digits():
    scores = real_digit_scores()
    assert scores["accuracy"] > 0.93 and scores["mean_top_probability"] > 0.85

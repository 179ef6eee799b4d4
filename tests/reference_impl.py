"""An independent single-process implementation of docs/design.md §1, written only for the tests.

It shares no code with ``parastep.executor``: it drives a tiny StableDiffusionPipeline's
components (UNet, scheduler, the pipeline's ``prepare_latents``) in its own direct loop and
implements exact / parallel (reuse-then-predict) / reuse windows literally:

- parallel window at s, size w: on a deep copy of the scheduler (the scratch state) build
  ``xhat_s = x_s``, ``ehat_{s+j} = guide(unet(xhat_{s+j}))`` and
  ``xhat_{s+j+1} = step(xhat_{s+j}, stand-in_j)``; then on the real scheduler apply
  ``x_{s+j+1} = step(x_{s+j}, ehat_{s+j})`` for j = 0..w-1.
- reuse window: ``x_{i+1} = step(x_i, stand-in_k)``, no forward.
- CFG split (an exact window with ``split`` pairs, a parallel offset placed on a pair): the same
  guided output, with the denoiser run on each half of the [uncond; cond] batch separately and the
  raw halves concatenated before the guidance combine (``by_halves``): equal to a whole-batch
  forward up to the kernels' batch-size effects, and bit-equal to what the executor computes.

Also: tiny pipeline builders (random weights from config, no downloads) and a seeded random
generator of valid schedules.
"""

from __future__ import annotations

import copy
import inspect
import random
from typing import Literal

import torch

SchedulerName = Literal["ddim", "euler", "dpm++2m", "unipc", "euler-a", "ddpm", "dpm++2m-sde"]
SCHEDULERS: tuple[SchedulerName, ...] = ("ddim", "euler", "dpm++2m")
STOCHASTIC: tuple[SchedulerName, ...] = ("euler-a", "ddpm", "dpm++2m-sde")
_SCHEDULER_CLASS = {"ddim": "DDIMScheduler", "euler": "EulerDiscreteScheduler",
                    "dpm++2m": "DPMSolverMultistepScheduler", "unipc": "UniPCMultistepScheduler"}
TEXT_DIM = 16
TEXT_LEN = 4


def make_scheduler(name: SchedulerName):
    import diffusers

    kw = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    if name == "ddim":
        return diffusers.DDIMScheduler(**kw, clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    if name == "euler":
        return diffusers.EulerDiscreteScheduler(**kw, steps_offset=1)
    if name == "dpm++2m":
        return diffusers.DPMSolverMultistepScheduler(**kw, algorithm_type="dpmsolver++", solver_order=2, steps_offset=1)
    if name == "unipc":
        return diffusers.UniPCMultistepScheduler(**kw)
    if name == "euler-a":
        return diffusers.EulerAncestralDiscreteScheduler(**kw, steps_offset=1)
    if name == "ddpm":
        return diffusers.DDPMScheduler(**kw, clip_sample=False, steps_offset=1)
    if name == "dpm++2m-sde":
        return diffusers.DPMSolverMultistepScheduler(**kw, algorithm_type="sde-dpmsolver++", solver_order=2, steps_offset=1)
    raise ValueError(name)


def scheduler_class_name(name: SchedulerName) -> str:
    return _SCHEDULER_CLASS[name]


def tiny_sd_pipeline(scheduler: SchedulerName = "ddim", *, seed: int = 0):
    """A StableDiffusionPipeline with a tiny random UNet/VAE; prompts are given as embeddings."""
    import diffusers

    torch.manual_seed(seed)
    unet = diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=TEXT_DIM, attention_head_dim=2, norm_num_groups=4)
    vae = diffusers.AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8,),
                                  down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",),
                                  norm_num_groups=4, sample_size=16)
    pipe = diffusers.StableDiffusionPipeline(vae=vae, text_encoder=None, tokenizer=None, unet=unet,
                                             scheduler=make_scheduler(scheduler), safety_checker=None,
                                             feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def prompt_embeds(*, seed: int = 1, batch: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    pos = torch.randn(batch, TEXT_LEN, TEXT_DIM, generator=g)
    neg = torch.randn(batch, TEXT_LEN, TEXT_DIM, generator=g)
    return pos, neg


def by_halves(fn, split: bool, *batched: torch.Tensor) -> torch.Tensor:
    """``fn(*batched)`` (a raw denoiser output), or for a CFG split ``fn`` on the unconditional rows
    then on the conditional rows of every argument, concatenated: what a split pair computes."""
    if not split:
        return fn(*batched)
    return torch.cat([fn(*(a.chunk(2)[k] for a in batched)) for k in range(2)])


def is_split(window: dict, offset: int = 0) -> bool:
    """Does this window's step ``offset`` run the denoiser on CFG halves?"""
    if window["kind"] == "exact":
        return bool(window.get("split"))
    if window["kind"] == "parallel":
        return not isinstance(window["placement"][offset], int)
    return False


def run_plain(pipe, *, num_steps: int, seed: int = 0, guidance_scale: float = 5.0, height: int = 16, width: int = 16,
              eta: float = 0.0):
    """The pipeline's own call (final latents)."""
    pos, neg = prompt_embeds()
    return pipe(prompt_embeds=pos, negative_prompt_embeds=neg, num_inference_steps=num_steps,
                guidance_scale=guidance_scale, height=height, width=width, output_type="latent", eta=eta,
                generator=torch.Generator().manual_seed(seed)).images


@torch.no_grad()
def reference_loop(scheduler, guided, noise: torch.Tensor, windows, *, num_steps: int,
                   inference_steps: int | None = None, timestep_kwargs: dict | None = None,
                   scale_noise: bool = True, generator: torch.Generator | None = None,
                   step_kwargs: dict | None = None, guided_batch=None) -> torch.Tensor:
    """docs/design.md §1 literally. ``guided(sched, x, t)`` is the guided model output at (x, t) computed
    with scheduler state ``sched`` (for ``scale_model_input``); at a CFG split step (``is_split``) it
    is called as ``guided(sched, x, t, split=True)``; ``scheduler`` is copied, not used;
    ``set_timesteps(inference_steps or num_steps, **timestep_kwargs)`` must give ``num_steps``
    timesteps; x_0 = noise * init_noise_sigma (after set_timesteps, as UNet pipelines do) or noise.
    ``generator`` (stochastic schedulers): the real steps draw from it in order; the scratch steps
    of a parallel window draw from a copy of its state at the window's start (scratch state).
    ``guided_batch([(sched_j, x_j, t_j), ...])`` (BatchStep): the guided outputs of several offsets from
    ONE denoiser call; a window with ``batch: true`` computes each rank's offsets with it (after the
    whole scratch chain: its inputs do not depend on the outputs)."""
    wins = [w if isinstance(w, dict) else w.model_dump() for w in windows]
    sched = copy.deepcopy(scheduler)
    sched.set_timesteps(inference_steps or num_steps, **(timestep_kwargs or {}))
    ts = sched.timesteps
    assert len(ts) == num_steps, (len(ts), num_steps)
    x = noise * sched.init_noise_sigma if scale_noise else noise
    extra = dict(step_kwargs or {})

    def step(s, e, t, xin, gen):
        kw = dict(extra, generator=gen) if gen is not None else extra
        return s.step(e, t, xin, **kw).prev_sample

    applied: list[torch.Tensor] = []   # e_0, e_1, ... applied to the real trajectory

    def stand_in(pred, k):
        if pred == "last":
            return applied[-1]
        return applied[-1] + (k + 1) * (applied[-1] - applied[-2])

    def model(w, j, s, xin, t):
        return guided(s, xin, t, split=True) if is_split(w, j) else guided(s, xin, t)

    starts = [w["start"] for w in wins] + [num_steps]
    for n, w in enumerate(wins):
        s, size = w["start"], starts[n + 1] - w["start"]
        if w["kind"] == "exact":
            e = model(w, 0, sched, x, ts[s])
            x = step(sched, e, ts[s], x, generator)
            applied.append(e)
        elif w["kind"] == "reuse":
            refs = [stand_in(w["predictor"], k) for k in range(size)]
            for k in range(size):
                x = step(sched, refs[k], ts[s + k], x, generator)
            applied.extend(refs)
        else:
            scratch = copy.deepcopy(sched)
            scratch_gen = None
            if generator is not None:
                scratch_gen = torch.Generator(device=generator.device)
                scratch_gen.set_state(generator.get_state())
            xh = x
            ehat = []
            inputs = []   # BatchStep: (scheduler state, input, timestep) per offset
            for j in range(size):
                if w.get("batch"):
                    inputs.append((copy.deepcopy(scratch), xh, ts[s + j]))
                else:
                    ehat.append(model(w, j, scratch, xh, ts[s + j]))
                if j < size - 1:
                    xh = step(scratch, stand_in(w["predictor"], j), ts[s + j], xh, scratch_gen)
            if w.get("batch"):
                ehat = [None] * size
                for rank in sorted(set(w["placement"])):
                    group = [j for j in range(size) if w["placement"][j] == rank]
                    for j, e in zip(group, guided_batch([inputs[j] for j in group])):
                        ehat[j] = e
            for j in range(size):
                x = step(sched, ehat[j], ts[s + j], x, generator)
                applied.append(ehat[j])
    return x


def _noise(pipe, height: int, width: int, dtype, seed_or_gen) -> torch.Tensor:
    from diffusers.utils.torch_utils import randn_tensor

    gen = seed_or_gen if isinstance(seed_or_gen, torch.Generator) else torch.Generator().manual_seed(seed_or_gen)
    f = pipe.vae_scale_factor
    shape = (1, pipe.unet.config.in_channels, height // f, width // f)
    return randn_tensor(shape, generator=gen, device=torch.device("cpu"), dtype=dtype)


@torch.no_grad()
def reference_latents(pipe, windows, *, num_steps: int, seed: int = 0, guidance_scale: float = 5.0,
                      height: int = 16, width: int = 16, eta: float = 0.0) -> torch.Tensor:
    """Final latents x_T of docs/design.md §1 for the tiny SD pipeline (CFG written out here). Like the
    pipeline, one seeded generator makes the initial noise and then feeds every step's noise."""
    pos, neg = prompt_embeds()
    cond = torch.cat([neg, pos])
    gen = torch.Generator().manual_seed(seed)
    x0 = _noise(pipe, height, width, pos.dtype, gen)

    def guided(s, xin, t, split=False):
        inp = s.scale_model_input(torch.cat([xin] * 2), t)
        raw = by_halves(lambda i, c: pipe.unet(i, t, encoder_hidden_states=c, return_dict=False)[0], split, inp, cond)
        u, c = raw.chunk(2)
        return u + guidance_scale * (c - u)

    def guided_batch(items):
        """BatchStep: every item's [uncond; cond] input stacked, one timestep per row, the text states repeated."""
        inp = torch.cat([s.scale_model_input(torch.cat([xin] * 2), t) for s, xin, t in items])
        rows = torch.cat([torch.as_tensor(t).reshape(1).expand(2) for _, _, t in items])
        raw = pipe.unet(inp, rows, encoder_hidden_states=torch.cat([cond] * len(items)), return_dict=False)[0]
        out = []
        for k in range(len(items)):
            u, c = raw[2 * k:2 * k + 2].chunk(2)
            out.append(u + guidance_scale * (c - u))
        return out

    params = inspect.signature(pipe.scheduler.step).parameters
    return reference_loop(pipe.scheduler, guided, x0, windows, num_steps=num_steps,
                          generator=gen if "generator" in params else None,
                          step_kwargs={"eta": eta} if "eta" in params else None, guided_batch=guided_batch)


def random_windows(rng: random.Random, *, num_steps: int, world_size: int, max_window: int,
                   kinds: tuple[str, ...] = ("exact", "parallel", "reuse"), batch: bool = False) -> list[dict]:
    """A random valid window list: exact first, then random kinds, sizes, placements (shared ranks
    allowed), predictors; with ``batch``, half the parallel windows are batched (BatchStep)."""
    wins: list[dict] = [{"start": 0, "kind": "exact"}]
    i = 1
    while i < num_steps:
        kind = rng.choice(kinds)
        left = num_steps - i
        pred = rng.choice(["last", "linear"]) if i >= 2 else "last"
        if kind == "exact" or left == 1 and kind == "parallel":
            wins.append({"start": i, "kind": "exact"})
            i += 1
        elif kind == "parallel":
            w = rng.randint(2, min(max_window, left))
            wins.append({"start": i, "kind": "parallel", "predictor": pred,
                         "placement": [rng.randrange(world_size) for _ in range(w)]})
            if batch:
                wins[-1]["batch"] = rng.random() < 0.5
            i += w
        else:
            w = rng.randint(1, min(max_window, left, 2))
            wins.append({"start": i, "kind": "reuse", "size": w, "predictor": pred})
            i += w
    return wins


def random_split_windows(rng: random.Random, *, num_steps: int, world_size: int, max_window: int,
                         kinds: tuple[str, ...] = ("exact", "parallel", "reuse")) -> list[dict]:
    """Like ``random_windows`` with CFG splits (world_size >= 2): an exact window splits half the
    time over 1..world_size//2 random disjoint pairs; a parallel offset is a random pair half the time."""
    ranks = list(range(world_size))
    wins = random_windows(rng, num_steps=num_steps, world_size=world_size, max_window=max_window, kinds=kinds)
    for w in wins:
        if w["kind"] == "exact" and rng.random() < 0.5:
            order = rng.sample(ranks, world_size)
            n = rng.randint(1, world_size // 2)
            w["split"] = [order[2 * k:2 * k + 2] for k in range(n)]
        elif w["kind"] == "parallel":
            w["placement"] = [rng.sample(ranks, 2) if rng.random() < 0.5 else r for r in w["placement"]]
    return wins


def make_schedule(windows: list[dict], *, num_steps: int, world_size: int, output_bytes: int,
                  model: str = "tiny", scheduler: str = "DDIMScheduler", guidance_scale: float | None = 5.0,
                  resolution_px: tuple[int, int] | None = None):
    """A validated ``Schedule`` with the totals the windows imply."""
    from parastep.schedules.check import implied_totals, violations
    from parastep.schedules.model import Schedule

    max_window = max([len(w.get("placement", [])) or w.get("size", 1) for w in windows] + [1])
    base = Schedule.model_validate({
        "model": model, "scheduler": scheduler, "num_steps": num_steps, "world_size": world_size,
        "max_window": max_window, "output_bytes": output_bytes, "guidance_scale": guidance_scale,
        "resolution_px": resolution_px, "totals": {"forwards_per_rank": [0] * world_size, "bytes_exchanged": 0},
        "windows": windows})
    totals = implied_totals(base.windows, world_size=world_size, output_bytes=output_bytes)
    sched = base.model_copy(update={"totals": totals})
    sched = Schedule.model_validate(sched.model_dump())
    bad = violations(sched)
    assert not bad, bad
    return sched


@torch.no_grad()
def reference_latents_sdxl(pipe, windows, *, num_steps: int, prompt: str, seed: int, height: int, width: int,
                           guidance_scale: float) -> torch.Tensor:
    """docs/design.md §1 for a StableDiffusionXLPipeline: its conditioning (two text encoders, pooled text
    embeds, size/crop time ids) and CFG written out here, then ``reference_loop``."""
    device = torch.device("cpu")
    pe, npe, ppe, nppe = pipe.encode_prompt(prompt=prompt, device=device, num_images_per_prompt=1,
                                            do_classifier_free_guidance=True)
    x0 = _noise(pipe, height, width, pe.dtype, seed)
    proj = pipe.text_encoder_2.config.projection_dim
    ids = pipe._get_add_time_ids((height, width), (0, 0), (height, width), dtype=pe.dtype,
                                 text_encoder_projection_dim=proj)
    cond = torch.cat([npe, pe])
    added = {"text_embeds": torch.cat([nppe, ppe]), "time_ids": torch.cat([ids, ids])}

    def guided(s, xin, t, split=False):
        inp = s.scale_model_input(torch.cat([xin] * 2), t)
        raw = by_halves(lambda i, c, te, ti: pipe.unet(i, t, encoder_hidden_states=c, added_cond_kwargs={
            "text_embeds": te, "time_ids": ti}, return_dict=False)[0], split, inp, cond, added["text_embeds"], added["time_ids"])
        u, c = raw.chunk(2)
        return u + guidance_scale * (c - u)

    return reference_loop(pipe.scheduler, guided, x0, windows, num_steps=num_steps)


def _cfg(raw: torch.Tensor, guidance_scale: float) -> torch.Tensor:
    u, c = raw.chunk(2)
    return u + guidance_scale * (c - u)


@torch.no_grad()
def reference_latents_tiny(name: str, pipe, windows, *, num_steps: int, inference_steps: int, prompt: str, seed: int,
                           call_kwargs: dict) -> torch.Tensor:
    """docs/design.md §1 for the registry's tiny pipelines (``tests/tiny_pipelines.py``): each pipeline's
    conditioning, denoiser call and guidance written out here, then ``reference_loop``."""
    from diffusers.utils.torch_utils import randn_tensor

    device = torch.device("cpu")
    h, w, g = call_kwargs["height"], call_kwargs["width"], call_kwargs["guidance_scale"]
    gen = torch.Generator().manual_seed(seed)
    if name == "sdxl":
        return reference_latents_sdxl(pipe, windows, num_steps=num_steps, prompt=prompt, seed=seed, height=h, width=w,
                                      guidance_scale=g)
    if name == "sd15":
        pe, npe = pipe.encode_prompt(prompt, device, 1, True)
        cond = torch.cat([npe, pe])
        noise = _noise(pipe, h, w, pe.dtype, seed)

        def guided(s, x, t, split=False):
            inp = s.scale_model_input(torch.cat([x] * 2), t)
            return _cfg(by_halves(lambda i, c: pipe.unet(i, t, encoder_hidden_states=c, return_dict=False)[0],
                                  split, inp, cond), g)

        return reference_loop(pipe.scheduler, guided, noise, windows, num_steps=num_steps, inference_steps=inference_steps)
    if name == "sd3":
        pe, npe, ppe, nppe = pipe.encode_prompt(prompt=prompt, prompt_2=None, prompt_3=None, device=device,
                                                num_images_per_prompt=1, do_classifier_free_guidance=True,
                                                max_sequence_length=call_kwargs["max_sequence_length"])
        cond, pooled = torch.cat([npe, pe]), torch.cat([nppe, ppe])
        f = pipe.vae_scale_factor
        noise = randn_tensor((1, pipe.transformer.config.in_channels, h // f, w // f), generator=gen, device=device,
                             dtype=pe.dtype)

        def guided(s, x, t, split=False):
            inp = torch.cat([x] * 2)
            raw = by_halves(lambda i, tt, c, pp: pipe.transformer(
                hidden_states=i, timestep=tt, encoder_hidden_states=c, pooled_projections=pp, joint_attention_kwargs=None,
                return_dict=False)[0], split, inp, t.expand(2), cond, pooled)
            return _cfg(raw, g)

        assert not pipe.scheduler.config.get("use_dynamic_shifting")
        return reference_loop(pipe.scheduler, guided, noise, windows, num_steps=num_steps, scale_noise=False)
    if name == "pixart-sigma":
        pe, pm, npe, npm = pipe.encode_prompt(prompt, True, device=device, clean_caption=False,
                                              max_sequence_length=call_kwargs["max_sequence_length"])
        cond, mask = torch.cat([npe, pe]), torch.cat([npm, pm])
        noise = _noise_transformer(pipe, h, w, pe.dtype, seed)
        channels = pipe.transformer.config.in_channels

        def guided(s, x, t, split=False):
            inp = s.scale_model_input(torch.cat([x] * 2), t)
            raw = by_halves(lambda i, c, m, tt: pipe.transformer(
                i, encoder_hidden_states=c, encoder_attention_mask=m, timestep=tt,
                added_cond_kwargs={"resolution": None, "aspect_ratio": None}, return_dict=False)[0],
                split, inp, cond, mask, t[None].expand(2))
            e = _cfg(raw, g)
            return e.chunk(2, dim=1)[0] if pipe.transformer.config.out_channels // 2 == channels else e

        return reference_loop(pipe.scheduler, guided, noise, windows, num_steps=num_steps)
    if name == "flux":
        import numpy as np
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift

        pe, ppe, text_ids = pipe.encode_prompt(prompt=prompt, prompt_2=None, device=device, num_images_per_prompt=1,
                                               max_sequence_length=call_kwargs["max_sequence_length"])
        c = pipe.transformer.config.in_channels // 4
        f = pipe.vae_scale_factor
        hh, ww = 2 * (h // (f * 2)), 2 * (w // (f * 2))
        raw_noise = randn_tensor((1, c, hh, ww), generator=gen, device=device, dtype=pe.dtype)
        noise = raw_noise.view(1, c, hh // 2, 2, ww // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(1, (hh // 2) * (ww // 2), c * 4)
        ids = torch.zeros(hh // 2, ww // 2, 3)
        ids[..., 1] = ids[..., 1] + torch.arange(hh // 2)[:, None]
        ids[..., 2] = ids[..., 2] + torch.arange(ww // 2)[None, :]
        img_ids = ids.reshape(-1, 3).to(device=device, dtype=pe.dtype)
        cfg = pipe.scheduler.config
        mu = calculate_shift(noise.shape[1], cfg.get("base_image_seq_len", 256), cfg.get("max_image_seq_len", 4096),
                             cfg.get("base_shift", 0.5), cfg.get("max_shift", 1.15))
        sigmas = np.linspace(1.0, 1 / num_steps, num_steps)
        guidance = torch.full([1], g, dtype=torch.float32).expand(1) if pipe.transformer.config.guidance_embeds else None

        def guided(s, x, t):
            return pipe.transformer(hidden_states=x, timestep=t.expand(1).to(x.dtype) / 1000, guidance=guidance,
                                    pooled_projections=ppe, encoder_hidden_states=pe, txt_ids=text_ids, img_ids=img_ids,
                                    joint_attention_kwargs={}, return_dict=False)[0]

        kwargs = {"mu": mu} if cfg.get("use_flow_sigmas") else {"sigmas": sigmas, "mu": mu}
        return reference_loop(pipe.scheduler, guided, noise, windows, num_steps=num_steps, timestep_kwargs=kwargs,
                              scale_noise=False)
    raise ValueError(f"no reference for {name}")


def _noise_transformer(pipe, height: int, width: int, dtype, seed: int) -> torch.Tensor:
    from diffusers.utils.torch_utils import randn_tensor

    f = pipe.vae_scale_factor
    shape = (1, pipe.transformer.config.in_channels, height // f, width // f)
    return randn_tensor(shape, generator=torch.Generator().manual_seed(seed), device=torch.device("cpu"), dtype=dtype)

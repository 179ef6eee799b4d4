"""The compatibility matrix: pipeline classes x schedulers, exact or refused.

Every runnable case of :data:`MATRIX` (a tiny random-weight pipeline from ``tiny_pipelines``):

- an exact-only schedule is bit-identical to the plain pipeline: its latents, and its decoded
  output on 1 and on 2 ranks (CogVideoX with every scheduler parastep runs it with);
- an exact-only schedule whose every step is CFG-split is bit-identical to the plain pipeline with
  its denoiser run on each half of the guided batch, and within docs/compatibility.md's bound of
  the plain (whole-batch) pipeline: kernels round a product of B rows differently from one of 2B;
- a random valid schedule (parallel and reuse windows, both predictors, shared ranks) equals
  :func:`oracle_run`, an independent implementation of docs/design.md §1, on 1 rank (``LocalExchange``)
  and on 2 ranks (one spawned gloo world runs every case).

Every refused case is refused at apply time in one line naming the problem and the fix.

Every scheduler class diffusers exports is in ``executor.schedulers.AUDIT``; every ``exact`` one
runs parallel and reuse windows through a generic denoising loop (:class:`LoopPipeline`) equal to
the oracle, and every ``refused`` one is refused in one line.

The oracle drives the pipeline's *own* loop (so the pipeline's conditioning and guidance are what
docs/design.md §1 calls ``guide(denoiser(...))``) but owns the trajectory: its wrapper of ``scheduler.step``
returns, at each step, the latents the denoiser must see next under §1 (the reuse chain's ``xhat``
inside a parallel window, the real ``x`` elsewhere), records the guided outputs the pipeline computes
there, and replays each parallel window's real steps literally from a deep copy of the scheduler
state taken at the window start, with the true outputs. It shares no code with ``parastep.executor``:
no placeholders, no exchange, every forward computed.
"""

from __future__ import annotations

import copy
import functools
import inspect
import math
import random
from pathlib import Path

import pytest
import torch

import reference_impl as R
import tiny_pipelines as TP
from parastep.errors import UserError
from parastep.executor.hooks import ParaStepConfig, apply_parastep, denoiser_of, remove_parastep
from parastep.executor.launch import launch
from parastep.executor.schedulers import AUDIT

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning", "ignore::UserWarning")

PROMPT = "a red cat"
WORLD = 2


# ----------------------------------------------------------------------------- the oracle (docs/design.md §1)

def _generators(value) -> list:
    if isinstance(value, torch.Generator):
        return [value]
    return [g for g in value if isinstance(g, torch.Generator)] if isinstance(value, (list, tuple)) else []


@torch.no_grad()
def oracle_run(pipe, windows: list[dict], *, num_steps: int, call: dict):
    """The pipeline's output under docs/design.md §1 for ``windows`` (see the module docstring)."""
    sched = pipe.scheduler
    step_fn = type(sched).step
    sig = inspect.signature(sched.step)
    starts = [w["start"] for w in windows] + [num_steps]
    plan = [(w, j, starts[n + 1] - w["start"]) for n, w in enumerate(windows) for j in range(starts[n + 1] - w["start"])]
    st: dict = {"i": 0, "applied": [], "win": None, "refs": None}

    def state() -> dict:
        return {k: copy.deepcopy(v) for k, v in sched.__dict__.items() if k != "step"}

    def set_state(saved: dict) -> None:
        for k in [k for k in sched.__dict__ if k != "step"]:
            del sched.__dict__[k]
        sched.__dict__.update(copy.deepcopy(saved))

    def run_step(args: dict, e, x, generator=None):
        a = dict(args, model_output=e, sample=x)
        if generator is not None:
            a["generator"] = generator
        b = inspect.BoundArguments(sig, a)
        return step_fn(sched, *b.args, **b.kwargs)

    def stand_in(pred: str, k: int):
        ap = st["applied"]
        return ap[-1] if pred == "last" else ap[-1] + (k + 1) * (ap[-1] - ap[-2])

    def step(*args, **kwargs):
        a = dict(sig.bind(*args, **kwargs).arguments)
        i = st["i"]
        w, j, size = plan[i]
        e, x = a["model_output"], a["sample"]      # x: what the pipeline holds = what this wrapper returned
        st["i"] = i + 1
        if w["kind"] == "exact":
            st["applied"].append(e)
            return run_step(a, e, x)
        if w["kind"] == "reuse":
            if j == 0:
                st["refs"] = [stand_in(w["predictor"], k) for k in range(size)]
            out = run_step(a, st["refs"][j], x)
            if j == size - 1:
                st["applied"].extend(st["refs"])
            return out
        if j == 0:   # scratch state: a copy of the scheduler and of the step's generator
            gens = _generators(a.get("generator"))
            scratch_gens = []
            for g in gens:
                c = torch.Generator(device=g.device)
                c.set_state(g.get_state())
                scratch_gens.append(c)
            scratch_gen = None if not gens else (scratch_gens[0] if isinstance(a["generator"], torch.Generator) else scratch_gens)
            st["win"] = {"real": state(), "x": x, "ehat": [], "args": [], "gen": scratch_gen}
        win = st["win"]
        win["ehat"].append(e)
        win["args"].append(a)
        if j < size - 1:       # the reuse chain builds the denoiser's next input xhat
            return run_step(a, stand_in(w["predictor"], j), x, win["gen"])
        set_state(win["real"])  # the real trajectory, from the window start, with the true outputs
        xk, out = win["x"], None
        for k in range(size):
            out = run_step(win["args"][k], win["ehat"][k], xk)
            xk = out[0]
            st["applied"].append(win["ehat"][k])
        return out

    sched.__dict__["step"] = functools.wraps(sched.step)(step)
    try:
        result = pipe(**call)
    finally:
        del sched.__dict__["step"]
    assert st["i"] == num_steps, f"the pipeline made {st['i']} steps, the schedule has {num_steps}"
    return _output(result)


def _output(result) -> torch.Tensor:
    images = result.frames if hasattr(result, "frames") else result.images if hasattr(result, "images") else result[0]
    return torch.as_tensor(images)


# ----------------------------------------------------------------------------- the matrix

def _image():
    g = torch.Generator().manual_seed(5)
    return torch.rand(1, 3, TP.HEIGHT_PX, TP.WIDTH_PX, generator=g)


def _text(name: str, steps: int) -> dict:
    return {"prompt": PROMPT, **TP.tiny_call_kwargs(name, num_inference_steps=steps), "output_type": "latent"}


def _pixart_alpha(steps: int) -> dict:
    return _text("pixart-sigma", steps)


# case name -> (pipeline class, scheduler, steps actually run, call kwargs (num_inference_steps given))
MATRIX: dict[str, dict] = {
    "sd15": {"steps": 5, "call": lambda n: _text("sd15", n - 1)},          # PNDM (PLMS): one step more than asked
    "sdxl": {"steps": 4, "call": lambda n: _text("sdxl", n)},
    "sd3": {"steps": 4, "call": lambda n: _text("sd3", n)},
    "pixart-sigma": {"steps": 4, "call": lambda n: _text("pixart-sigma", n)},
    "flux": {"steps": 4, "call": lambda n: _text("flux", n)},
    "pixart-alpha": {"steps": 4, "call": _pixart_alpha},
    "sd15-img2img": {"steps": 4, "call": lambda n: {"prompt": PROMPT, "image": _image(), "strength": 0.5,
                                                   "num_inference_steps": 2 * n, "guidance_scale": 7.5,
                                                   "output_type": "latent"}},
    "ddpm": {"steps": 5, "call": lambda n: {"batch_size": 1, "num_inference_steps": n, "output_type": "np"}},
    "ddim": {"steps": 5, "call": lambda n: {"batch_size": 1, "num_inference_steps": n, "output_type": "np"}},
    "dit": {"steps": 5, "call": lambda n: {"class_labels": [1], "guidance_scale": 4.0, "num_inference_steps": n,
                                           "output_type": "latent"}},
    "cogvideox": {"steps": 4, "call": lambda n: {"prompt": PROMPT, "height": TP.HEIGHT_PX, "width": TP.WIDTH_PX,
                                                 "num_frames": TP.VIDEO_FRAMES, "guidance_scale": 6.0,
                                                 "max_sequence_length": TP.T5_MAX_TOKENS, "num_inference_steps": n,
                                                 "output_type": "latent"}},
    "latte": {"steps": 4, "call": lambda n: {"prompt": PROMPT, "height": TP.HEIGHT_PX, "width": TP.WIDTH_PX,
                                             "video_length": TP.LATTE_FRAMES, "guidance_scale": 4.5,
                                             "clean_caption": False, "num_inference_steps": n, "output_type": "latent"}},
}
# refused: case name -> what the one line must name
REFUSED: dict[str, tuple[str, ...]] = {
    "cogvideox-dpm": ("CogVideoXDPMScheduler", "old_pred_original_sample", "use CogVideoXDDIMScheduler"),
    "sd15-heun": ("HeunDiscreteScheduler", "order 2", "use EulerDiscreteScheduler"),
    "kandinsky22-combined": ("KandinskyV22CombinedPipeline", "several denoising stages", "prior"),
}


def _windows(case: str, steps: int) -> list[dict]:
    rng = random.Random(f"compat-{case}")
    return R.random_windows(rng, num_steps=steps, world_size=WORLD, max_window=3, kinds=("parallel", "parallel", "reuse"))


def _exact_windows(steps: int, *, split: bool = False) -> list[dict]:
    """Every step exact; with ``split`` every step's two guidance halves on ranks 0 and 1."""
    return [{"start": i, "kind": "exact", **({"split": [[0, 1]]} if split else {})} for i in range(steps)]


def _run(pipe, windows: list[dict], *, steps: int, call: dict, exchange=None):
    sched = R.make_schedule(windows, num_steps=steps, world_size=WORLD, output_bytes=4)
    config = ParaStepConfig(windows=sched.windows, num_steps=steps, **({"exchange": exchange} if exchange else {}))
    handle = apply_parastep(pipe, config)
    try:
        out = _output(pipe(**call, generator=torch.Generator().manual_seed(0)))
    finally:
        remove_parastep(pipe)
    assert handle.steps_done == steps
    return out, handle


def _plain(pipe, call: dict):
    return _output(pipe(**call, generator=torch.Generator().manual_seed(0)))


def _oracle(pipe, windows, *, steps: int, call: dict):
    return oracle_run(pipe, windows, num_steps=steps, call={**call, "generator": torch.Generator().manual_seed(0)})


@pytest.mark.parametrize("case", list(MATRIX))
def test_matrix_one_rank(case):
    spec = MATRIX[case]
    steps = spec["steps"]
    call = spec["call"](steps)
    pipe = TP.make_compat_pipeline(case)
    plain = _plain(pipe, call)
    exact, _ = _run(pipe, _exact_windows(steps), steps=steps, call=call)
    assert torch.equal(exact, plain), f"{case}: exact-only schedule differs from the plain pipeline"
    windows = _windows(case, steps)
    got, _ = _run(pipe, windows, steps=steps, call=call)
    want = _oracle(pipe, windows, steps=steps, call=call)
    assert got.shape == want.shape
    assert torch.equal(got, want), (case, windows, float((got - want).abs().max()))
    assert not torch.equal(got, plain) or all(w["kind"] == "exact" for w in windows)   # the windows did something


def _two_rank_worker(ctx, job) -> None:
    from parastep.executor.exchange import DistExchange

    out_dir, cases, exact_jobs = job
    for case in cases:
        spec = MATRIX[case]
        steps = spec["steps"]
        out, handle = _run(TP.make_compat_pipeline(case), _windows(case, steps), steps=steps, call=spec["call"](steps),
                           exchange=DistExchange())
        torch.save({"out": out, "forwards": handle.forwards}, Path(out_dir) / f"{case}_{ctx.rank}.pt")
    for case, scheduler, split in exact_jobs:
        pipe, steps, call = _exact_setup(case, scheduler)
        out, _ = _run(pipe, _exact_windows(steps, split=split), steps=steps, call=call, exchange=DistExchange())
        torch.save(out, Path(out_dir) / f"exact-{case}-{scheduler}-{split}_{ctx.rank}.pt")


@pytest.mark.distributed
def test_matrix_two_ranks(tmp_path):
    """One spawned 2-rank gloo world runs every case's random schedule; each equals the oracle. The
    same world runs the exact-only schedules of :data:`EXACT_JOBS` with decoded outputs (as ``exec``
    does on rank 0): each equals the plain pipeline bit for bit; and CogVideoX's split exact-only
    schedule, which equals the one-process run (``evaluate``'s) bit for bit."""
    cases = list(MATRIX)
    exact_jobs = [(case, scheduler, False) for case, scheduler in EXACT_JOBS] + [("cogvideox", None, True)]
    launch(_two_rank_worker, (str(tmp_path), cases, exact_jobs), world_size=WORLD, device="cpu", threads=1, timeout_s=300)
    for case in cases:
        spec = MATRIX[case]
        steps = spec["steps"]
        got = [torch.load(tmp_path / f"{case}_{r}.pt") for r in range(WORLD)]
        assert torch.equal(got[0]["out"], got[1]["out"]), f"{case}: ranks differ"
        want = _oracle(TP.make_compat_pipeline(case), _windows(case, steps), steps=steps, call=spec["call"](steps))
        assert torch.equal(got[0]["out"], want), (case, float((got[0]["out"] - want).abs().max()))
        assert sum(g["forwards"] for g in got) < 2 * steps, f"{case}: the ranks shared no work"
    for case, scheduler, split in exact_jobs:
        got = [torch.load(tmp_path / f"exact-{case}-{scheduler}-{split}_{r}.pt") for r in range(WORLD)]
        assert torch.equal(got[0], got[1]), f"{case} ({scheduler}, split={split}): ranks differ"
        pipe, steps, call = _exact_setup(case, scheduler)
        want = _run(pipe, _exact_windows(steps, split=True), steps=steps, call=call)[0] if split else _plain(pipe, call)
        assert torch.equal(got[0], want), (case, scheduler, split, float((got[0] - want).abs().max()))


@pytest.mark.parametrize("case", list(REFUSED))
def test_matrix_refused_in_one_line(case):
    pipe = TP.make_compat_pipeline(case)
    sched = R.make_schedule(_exact_windows(2), num_steps=2, world_size=1, output_bytes=4)
    with pytest.raises(UserError) as info:
        apply_parastep(pipe, ParaStepConfig(windows=sched.windows, num_steps=2))
    text = str(info.value)
    assert "\n" not in text and all(part in text for part in REFUSED[case]), text
    assert "step" not in pipe.scheduler.__dict__      # nothing left installed


# ----------------------------------------------------------------------------- exact-only schedules, decoded

# every matrix case with the scheduler it is built with, and CogVideoX with every scheduler parastep
# runs it with (CogVideoXDDIMScheduler, and those ``exec`` switches a folder to: registry.set_scheduler;
# CogVideoXDPMScheduler is refused, see REFUSED)
EXACT_JOBS: list[tuple[str, str | None]] = ([(case, None) for case in MATRIX]
                                            + [("cogvideox", s) for s in TP.compat_schedulers("cogvideox")[1:]])
# the matrix's pipelines whose guidance is a two-way [uncond; cond] batch, so an exact step may be split
SPLIT_CASES = ("sd15", "sdxl", "sd3", "pixart-sigma", "pixart-alpha", "sd15-img2img", "cogvideox", "latte")
# docs/compatibility.md: a split exact-only schedule vs the plain pipeline, decoded outputs in [0, 1]
# (measured on these tiny pipelines, one CPU thread, float32: 126-140 dB, max abs difference <= 3e-6)
SPLIT_MIN_PSNR_DB = 120.0
SPLIT_MAX_ABS = 1e-5


def _timesteps_run(pipe, num_inference_steps: int) -> int:
    probe = type(pipe.scheduler).from_config(pipe.scheduler.config)
    probe.set_timesteps(num_inference_steps)
    return len(probe.timesteps)


def _exact_setup(case: str, scheduler: str | None = None):
    """A fresh ``case`` pipeline (``scheduler`` swapped in, as ``exec`` does), the scheduler steps its
    call makes, and the call with ``output_type="np"``: decoded images or video frames, post-processed."""
    spec = MATRIX[case]
    pipe = TP.make_compat_pipeline(case, scheduler=scheduler)
    call = {**spec["call"](spec["steps"]), "output_type": "np"}
    steps = spec["steps"] if scheduler is None else _timesteps_run(pipe, call["num_inference_steps"])
    return pipe, steps, call


@pytest.mark.parametrize("case,scheduler", EXACT_JOBS)
def test_exact_only_decoded_output_is_bit_identical(case, scheduler):
    """An exact-only schedule (no ``split``) reproduces the plain pipeline bit for bit after the VAE
    decode and post-processing (docs/design.md §4), for every matrix case and every scheduler the
    CogVideoX pipeline runs with (its stateful multistep ones included)."""
    pipe, steps, call = _exact_setup(case, scheduler)
    assert scheduler is None or type(pipe.scheduler).__name__ == scheduler
    plain = _plain(pipe, call)
    exact, handle = _run(pipe, _exact_windows(steps), steps=steps, call=call)
    assert torch.equal(exact, plain), (case, scheduler, float((exact - plain).abs().max()))
    assert handle.forwards == steps


def _half_batch_forward(forward):
    """``forward`` run on each half of the guided batch (rows [0, B) then [B, 2B) of every argument
    whose dim 0 is the sample's 2B), outputs concatenated: what a CFG-split pair computes, written
    here without the executor."""

    def cut(value, lo: int, hi: int, batch: int):
        if isinstance(value, torch.Tensor):
            return value[lo:hi] if value.dim() and value.shape[0] == batch else value
        if isinstance(value, dict):
            return {k: cut(v, lo, hi, batch) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(cut(v, lo, hi, batch) for v in value)
        return value

    def join(a, b):
        if isinstance(a, torch.Tensor):
            return torch.cat([a, b])
        if hasattr(a, "to_tuple"):          # diffusers BaseOutput
            return type(a)(**{k: join(a[k], b[k]) for k in a.keys()})
        return type(a)(join(x, y) for x, y in zip(a, b))

    @functools.wraps(forward)
    def halves(*args, **kwargs):
        x = args[0] if args else kwargs.get("sample", kwargs.get("hidden_states"))
        n, b = x.shape[0], x.shape[0] // 2
        return join(forward(*cut(args, 0, b, n), **cut(kwargs, 0, b, n)), forward(*cut(args, b, n, n), **cut(kwargs, b, n, n)))

    return halves


@pytest.mark.parametrize("case", SPLIT_CASES)
def test_split_exact_only_is_the_half_batch_pipeline_within_the_documented_bound(case):
    """Every exact step CFG-split (``split: [[0, 1]]``, a lossless plan's windows). Not bit-identical
    to the plain pipeline, for the one reason docs/compatibility.md documents: the denoiser runs on
    half the batch, and the CPU BLAS rounds a product with B rows differently from one with 2B rows in
    the last bit (CogVideoX: its timestep-embedding ``Linear`` first). So the schedule's output equals,
    bit for bit, the plain pipeline with its denoiser run on each half (nothing else differs: no
    scheduler state, noise, dtype or decode), and differs from the whole-batch pipeline by at most the
    documented bound."""
    pipe, steps, call = _exact_setup(case)
    plain = _plain(pipe, call)
    got, handle = _run(pipe, _exact_windows(steps, split=True), steps=steps, call=call)
    assert sum(w.half_forwards for w in handle.stats()) == 2 * steps      # every step ran as two halves
    _, den = denoiser_of(pipe)
    den.forward = _half_batch_forward(den.forward)
    try:
        halves = _plain(pipe, call)
    finally:
        del den.forward
    assert torch.equal(got, halves), (case, float((got - halves).abs().max()))
    diff = (got.double() - plain.double()).abs()
    mse = float((diff ** 2).mean())
    assert float(diff.max()) <= SPLIT_MAX_ABS, (case, float(diff.max()))
    assert mse == 0 or -10 * math.log10(mse) >= SPLIT_MIN_PSNR_DB, (case, -10 * math.log10(mse))


# ----------------------------------------------------------------------------- every diffusers scheduler

def _exported_scheduler_classes() -> list[str]:
    import diffusers.schedulers as S

    names = []
    for name in dir(S):
        if name.startswith("_") or "Scheduler" not in name or name.endswith("Output"):
            continue
        if name in ("SchedulerMixin", "KarrasDiffusionSchedulers") or name.startswith("Flax"):
            continue
        names.append(name)
    return sorted(names)


def test_audit_covers_every_diffusers_scheduler():
    exported = set(_exported_scheduler_classes())
    assert exported - set(AUDIT) == set(), "new diffusers schedulers: audit them in executor/schedulers.py"
    assert set(AUDIT) - exported == set(), "audited schedulers that diffusers no longer exports"
    for name, row in AUDIT.items():
        assert row.reason and (row.status == "exact" or row.alternative), name


class LoopPipeline:
    """A generic denoising loop (DDIM-pipeline style) over a tiny UNet, for any scheduler."""

    def __init__(self, scheduler, *, timestep_kwargs: dict | None = None) -> None:
        from diffusers import UNet2DModel

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            self.unet = UNet2DModel(sample_size=8, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(4, 8),
                                    down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                                    norm_num_groups=4).eval()
        self.scheduler = scheduler
        self.timestep_kwargs = timestep_kwargs or {}

    @torch.no_grad()
    def __call__(self, *, num_inference_steps: int, generator):
        from diffusers.utils.torch_utils import randn_tensor

        s = self.scheduler
        s.set_timesteps(num_inference_steps, **self.timestep_kwargs)
        x = randn_tensor((1, 3, 8, 8), generator=generator) * getattr(s, "init_noise_sigma", 1.0)
        extra = {"generator": generator} if "generator" in inspect.signature(s.step).parameters else {}
        for t in s.timesteps:
            inp = s.scale_model_input(x, t) if hasattr(s, "scale_model_input") else x
            x = s.step(self.unet(inp, t).sample, t, x, **extra, return_dict=False)[0]
        return (x,)


# (config overrides, set_timesteps kwargs, num_inference_steps for 6 steps run)
_LOOP_SETUP = {
    "PNDMScheduler": ({"skip_prk_steps": True}, {}, 5),
    "MiniMaxH3Scheduler": ({}, {}, 7),
}


@pytest.mark.parametrize("name", sorted(n for n, row in AUDIT.items() if row.status == "exact"))
def test_every_exact_scheduler_matches_the_reference(name):
    import diffusers

    config, ts_kwargs, n = _LOOP_SETUP.get(name, ({}, {}, 6))
    pipe = LoopPipeline(getattr(diffusers, name)(**config), timestep_kwargs=ts_kwargs)
    steps = 6
    call = {"num_inference_steps": n}
    plain = _plain(pipe, call)
    exact, _ = _run(pipe, _exact_windows(steps), steps=steps, call=call)
    assert torch.equal(exact, plain), f"{name}: exact-only schedule differs from the plain loop"
    windows = [{"start": 0, "kind": "exact"}, {"start": 1, "kind": "parallel", "placement": [0, 1, 1], "predictor": "last"},
               {"start": 4, "kind": "parallel", "placement": [1, 0], "predictor": "linear"}]
    got, _ = _run(pipe, windows, steps=steps, call=call)
    want = _oracle(pipe, windows, steps=steps, call=call)
    assert torch.equal(got, want), (name, float((got - want).abs().max()))
    reuse = [{"start": 0, "kind": "exact"}, {"start": 1, "kind": "exact"},
             {"start": 2, "kind": "reuse", "size": 1, "predictor": "linear"},
             {"start": 3, "kind": "parallel", "placement": [0, 1], "predictor": "last"}, {"start": 5, "kind": "exact"}]
    got, _ = _run(pipe, reuse, steps=steps, call=call)
    assert torch.equal(got, _oracle(pipe, reuse, steps=steps, call=call)), name


def _build_refused(name: str):
    """An instance of a refused scheduler class; one whose constructor needs arguments or an optional
    dependency (torchsde) is made without running ``__init__``: the refusal reads only the class."""
    import diffusers.schedulers as S

    cls = getattr(S, name)
    try:
        return cls()
    except Exception:
        return object.__new__(cls)


@pytest.mark.parametrize("name", sorted(n for n, row in AUDIT.items() if row.status == "refused"))
def test_every_refused_scheduler_is_refused_in_one_line(name):
    from parastep.executor.schedulers import check_scheduler_supported

    with pytest.raises(UserError) as info:
        check_scheduler_supported(_build_refused(name))
    text = str(info.value)
    assert "\n" not in text and text.startswith(f"scheduler {name} is not supported by parastep: ")
    assert AUDIT[name].alternative in text, text


# ----------------------------------------------------------------------------- conditioning and media (items 2, 3)

def test_evaluate_conditions_from_the_pipeline_signature_and_scores_video_frames():
    """Class labels (DiT, by index or name), no conditioning (DDPM), video (CogVideoX: PSNR/SSIM
    over every frame) through ``evaluate``, the profiler's and ``evaluate``'s one pipeline call."""
    from parastep.executor.evaluate import evaluate, run_schedule_local
    from parastep.executor.inputs import class_label_ids, default_prompts

    windows = [{"start": 0, "kind": "exact"}, {"start": 1, "kind": "parallel", "placement": [0, 1], "predictor": "last"},
               {"start": 3, "kind": "exact"}]
    sched = R.make_schedule(windows, num_steps=4, world_size=WORLD, output_bytes=4)
    video = {"height": TP.HEIGHT_PX, "width": TP.WIDTH_PX, "num_frames": TP.VIDEO_FRAMES,
             "max_sequence_length": TP.T5_MAX_TOKENS, "guidance_scale": 6.0}
    for case, kw, conditions in (("dit", {"guidance_scale": 4.0}, ["0", "golden retriever"]), ("ddpm", {}, [None]),
                                 ("cogvideox", video, [PROMPT])):
        pipe = TP.make_compat_pipeline(case)
        assert default_prompts(pipe) == {"dit": ["0", "1"], "ddpm": [None], "cogvideox": [TP_DEFAULT]}[case]
        records = evaluate(pipe, sched, prompts=conditions, seeds=[3], call_kwargs=kw)
        assert [r.prompt for r in records] == [None if c is None else c for c in conditions]
        assert all(0 < r.psnr_db <= 100 and -1 <= r.ssim <= 1 and not r.identical for r in records), (case, records)
    out = run_schedule_local(pipe, None, num_steps=4, prompts=[PROMPT], seeds=[3], call_kwargs=video)
    assert out.dim() == 5 and tuple(out.shape[2:]) == (TP.HEIGHT_PX, TP.WIDTH_PX, 3) and out.shape[1] > 1
    dit = TP.make_compat_pipeline("dit")
    assert class_label_ids(dit, ["golden retriever", "2", "goldfish"]) == [1, 2, 2]
    for bad in ("zebra", "7"):
        with pytest.raises(UserError, match="unknown class label .* give an index 0..2 or a label name"):
            class_label_ids(dit, [bad])
    with pytest.raises(UserError, match="takes no prompt or class label .* drop --prompt"):
        evaluate(TP.make_compat_pipeline("ddpm"), sched, prompts=["a cat"], seeds=[3], call_kwargs={})


TP_DEFAULT = "a photograph of an astronaut riding a horse"


def test_video_media_written_as_frames_and_gif_and_scored_over_all_frames(tmp_path):
    """exec's output helpers on a 5-D video (they failed with 'permute ... input.dim() = 5')."""
    import json

    import numpy as np
    from PIL import Image

    from parastep.executor.execute import _images_np, _to_tensor
    from parastep.executor.results import write_exec_outputs as _write_outputs
    from parastep.executor.media import output_of
    from parastep.executor.metrics import psnr_db

    pipe = TP.make_compat_pipeline("cogvideox")
    result = pipe(prompt=PROMPT, height=TP.HEIGHT_PX, width=TP.WIDTH_PX, num_frames=TP.VIDEO_FRAMES, num_inference_steps=2,
                  max_sequence_length=TP.T5_MAX_TOKENS, output_type="np", generator=torch.Generator().manual_seed(0))
    frames = _images_np(output_of(result))
    n = frames.shape[1]                      # decoded frames (the tiny VAE's temporal layout decides how many)
    assert frames.shape == (1, n, TP.HEIGHT_PX, TP.WIDTH_PX, 3) and n > 1
    assert np.array_equal(_images_np(torch.from_numpy(frames).permute(0, 1, 4, 2, 3)), frames)   # (B, F, C, H, W) tensors
    t = _to_tensor(frames)
    assert tuple(t.shape) == (n, 3, TP.HEIGHT_PX, TP.WIDTH_PX)
    worse = _to_tensor(np.clip(frames + 0.01 * (np.arange(n) == 1)[None, :, None, None, None], 0, 1))
    assert 30 < psnr_db(worse, t) < 60      # one changed frame counts, among all frames
    report: dict = {}
    _write_outputs(tmp_path, frames, report)
    assert report["frames"] == n and "video_000.gif" in report["images"]
    gif = Image.open(tmp_path / "video_000.gif")
    assert 1 < gif.n_frames <= n and gif.size == (TP.WIDTH_PX, TP.HEIGHT_PX)   # Pillow merges identical frames
    assert (tmp_path / "video_000" / f"frame_{n - 1:03d}.png").is_file()
    assert json.loads((tmp_path / "report.json").read_text())["frames"] == n
    images = np.zeros((2, 8, 8, 3), dtype=np.float32)
    report = {}
    _write_outputs(tmp_path / "img", images, report)
    assert report == {"images": ["image_000.png", "image_001.png"], "frames": None}

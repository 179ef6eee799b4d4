"""GPU evidence for the SDXL profile's compute and BatchStep: SDXL-sized UNet forwards at batch 1-8, a batched plan, compile's view of the hooks.

What it measures (random weights, no download; needs torch and diffusers, and parastep's own modules for the
plan and the hooks' graph-break check; see "On a GPU" below):

- ``UNet2DConditionModel`` built from SDXL base 1.0's ``unet/config.json`` written out below (``SDXL_UNET``,
  about 2.57 B parameters), in fp16, at 1024x1024: latents (B, 4, 128, 128), text states (B, 77, 2048),
  ``added_cond_kwargs`` text_embeds (B, 1280) and time_ids (B, 6) — the call ``StableDiffusionXLPipeline``
  makes each step (B = 2 with classifier-free guidance: unconditional and conditional halves);
- its eager forward at every batch size of ``--batches`` (default 1, 2, 4, 8; batch 2 first, the rest in the
  order given): ``--warmup`` untimed runs, then ``--repeats`` timed runs, each ``torch.cuda.synchronize()``-
  bracketed; the median, min and max seconds. A guided SDXL call on one image is batch 2, so a BatchStep call on
  k offsets' inputs is batch 2k: batches 2, 4, 8 are k = 1, 2, 4 (at batch 1 and 2 the timestep is the
  pipeline's 0-d tensor, above it one per row as in BatchStep's call: the same work, the UNet broadcasts a 0-d
  one first, but another graph for torch.compile);
- one ``EulerDiscreteScheduler.step`` (SDXL's scheduler config, 50 steps) on (1, 4, 128, 128) latents, in the
  steady state of a run (the schedule's index already set, as in every step after the first);
- ``batch1_over_batch2``: a batch-1 forward over a batch-2 forward, the ratio that prices a CFG split (one rank
  computing one half instead of the whole guided batch) on that device;
- ``batched_plan`` (one GPU, world size 1): a denoising loop written like ``StableDiffusionXLPipeline``'s
  (``GuidedLoop``: Euler, guided batch 2, ``scale_model_input``, the CFG combine at guidance 5,
  ``scheduler.step(..., generator=...)``), ``--steps`` steps (default 20), run three ways, interleaved, medians
  of ``--plan-repeats`` runs after one warm-up round: *sequential* (the plain loop: one call per step),
  *unbatched* (parastep's hooks with ``--exact-steps`` exact steps, default 2, then parallel windows of
  ``--window`` offsets, default 4, every offset on rank 0, ``batch: false``: one call per offset) and *batched*
  (the same windows with ``batch: true``: one call per window on the window's inputs concatenated). It reports
  the three times, the batched plan's speedup over the sequential run, its denoiser calls (the hooks' per-window
  statistics: one call per batched window when the executor batches, one per offset where it does not), and
  the final latents' max abs difference: batched vs unbatched (the same schedule: kernels' batch-size effects
  only) and plan vs sequential (what the windows' stand-ins change, random weights: not a quality figure);
- ``graph_breaks``: what ``torch.compile`` makes of parastep's hooks, which wrap the denoiser's ``forward`` as an
  instance attribute (``executor/hooks.py``, ``apply_parastep``). Whole runs of a short plan (``--break-steps``,
  default ``--window`` + 1: one exact step, one batched window; each further step costs the ``inside`` run a
  recompile, one UNet trace, up to dynamo's recompile limit) under a counting backend (each graph dynamo hands
  it is recorded, then run eagerly), with ``torch._dynamo.utils.counters`` (graph breaks and their reasons,
  frames), dynamo's graph-break log (where each break sits, as ``executor/hooks.py:537 in ...``) and its
  recompile-limit warnings (frames it gave up on): ``sequential`` (no parastep, ``unet.compile()``: the UNet's
  own graphs), ``inside`` (the batched plan, parastep applied, ``unet.compile()``: the module's call is
  compiled, and it looks up ``forward``, so the hooks' Python is traced with it) and ``outside``
  (``torch.compile(unet)`` made before ``apply_parastep``: the hooks wrap the compiled module's ``forward`` and
  run eagerly around it; with ``--compile`` this run is made in that section, on its backend and graphs); each
  run's final latents against the eager run's. Dynamo's recompile limit is left at its default (what a user
  gets). The breaks come from the hooks' code, not from the UNet's size, so the dry run below already answers
  the question on CPU; on a GPU the section adds the device's code paths (CUDA generators, attention kernels);
- ``--cuda-graph``: each batch size replayed from a captured CUDA graph (the forward without per-kernel launch
  cost);
- ``--compile``: ``torch.compile(unet, dynamic=False)`` (mode default, backend ``--compile-backend``, default
  inductor), per batch size of ``--compile-batches`` (default: every one of ``--batches``): the first call
  (compile included), ``compile_s`` = that minus the steady-state median, and the steady-state forward after
  ``--warmup`` runs; then the batched plan with the compiled UNet (sequential vs batched, after a warm-up round).

Sections run in that order while ``--time-limit`` (default 240 s from the script's start) allows: past it no
further timed run starts (a measurement already started keeps at least one), a batch size or section not yet
started is skipped (absent, or named in ``skipped``), and the JSON says ``"truncated": true`` where the eager
forwards or the step were cut (what ``profiles/make_sdxl.py`` uses: it refuses such a run) and names any other
cut section in ``sections_truncated``. ``--no-plan`` and ``--no-graph-breaks`` leave those sections out.

It prints the summary and writes a JSON (``--out``, default ``gpu_unet.json``). ``profiles/make_sdxl.py
--compute FILE`` turns that JSON into the shipped SDXL profile's compute part (labelled measured, with the
device): forward_s[k-1] = k x the batch-2 median (offsets run one after another), batched_forward_s[k-1] = the
batch-2k median (one BatchStep call on k offsets; k missing between measured ones interpolated),
half_forward_s = the batch-1 median, step_s = the step median.

``--dry``: the whole path of the script (every section, ``--compile`` with the ``eager`` backend unless
``--compile-backend`` says otherwise, the JSON) on CPU in seconds, with ``DRY_UNET`` (same architecture family, a
few channels, two levels, 32x32 latents) in float32 and 1 plan repeat. Its JSON says ``"dry": true`` and
``"config": "dry"``; its numbers test the script and measure nothing (``make_sdxl.py --compute`` refuses it).
``--tiny``: ``TINY_UNET`` (SDXL's three levels, a few thousandths of the size, 8x8 latents) on the given device:
a real measurement of a small model (tests splice it with ``make_sdxl.py --any-config``).

The shipped runs (one H200, JSONs in ``profiles/measurements/``, logs in ``benchmarks/results/gpu/``; batches
1, 2, 4, before the plan and graph-break sections existed) took 20-31 s each, peak GPU memory 9.6 GiB. GPU memory:
about 5 GB of fp16 weights (10 GB while the fp32 build is cast), plus activations at batch 8 (about twice
batch 4's), plus each CUDA graph's pool while it is timed. Expected time on an H100/H200 (estimates, not yet
measured): eager forwards and step about 30 s, the plan 10-20 s, the graph-break section 1-3 min (dynamo traces
the 2.6 B UNet about five times: once per batch shape per counted run, plus the inside run's recompile at its
window; CPU-bound), CUDA graphs 20 s, ``--compile`` with inductor about a minute per batch size (a static-shape
compile each): give ``--compile`` its own run with ``--compile-batches 2,4,8`` (the plan's shapes at the default
20 steps: windows of 4 offsets, batch 8, and a last window of 2, batch 4).

On a GPU (the device machine of this workplace: Python 3.12 with torch, huggingface_hub, safetensors, numpy,
regex, requests, Pillow, PyYAML (a huggingface_hub dependency), but neither diffusers nor pydantic). The plan and
the graph-break check import parastep's executor hooks (``parastep.executor.hooks``), which pull in
``parastep.schedules`` (pydantic models; ``schedules.io`` reads YAML: PyYAML) and ``parastep.profiles`` (the same):
third-party, pydantic, pydantic-core, annotated-types, typing-inspection (typing-extensions comes with torch) and
PyYAML; no ortools, networkx or transformers (the planner and pipelines are not imported). The script imports the
repo root it lives in as the package ``parastep`` (``import_parastep``: the parent folder need not be named
``parastep``, nothing needs installing), so it runs as ``python3 benchmarks/bench_gpu_unet.py`` from the repo
root. Carry the pure-Python diffusers wheel and those wheels (versions as in this workplace's venv; on Python
>= 3.8 diffusers does not import its declared importlib_metadata). Once, here, in the repo root:

    echo /.whl/ >> .git/info/exclude
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 -d .whl \
      diffusers==0.42.1 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 pyyaml==6.0.4

then the run (carry [".whl"], timeout_s 420; an estimated 3-4 min without ``--compile``)::

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl \
      && export PYTHONPATH=/tmp/site || exit; \
    PYTHONUNBUFFERED=1 python3 benchmarks/bench_gpu_unet.py --cuda-graph --time-limit 360 --out $OUT/gpu_unet_sdxl.json

and, in a second run if device time allows, ``--compile --compile-batches 2,4,8 --time-limit 360`` (its
graph-break section then counts ``outside`` on inductor's graphs; ``--no-graph-breaks`` leaves it out).
Without pydantic the plan and graph-break sections record ``{"error": ...}`` and the rest still runs.

Anywhere else with torch (CUDA) and diffusers: ``python benchmarks/bench_gpu_unet.py --out gpu_unet_sdxl.json``.

The shipped profile's compute is the median of the runs in ``profiles/measurements/sdxl_unet_*.json``
(``python -m parastep.profiles.make_sdxl`` rebuilds it from them). To splice runs of another device (several runs
of one device: per batch size the median of their medians)::

    python -m parastep.profiles.make_sdxl --compute run1.json run2.json run3.json --out profiles/sdxl.yaml

(the module form: ``python profiles/make_sdxl.py`` cannot resolve the package's relative imports); for the shipped
file, put the JSONs in ``profiles/measurements/`` instead, so the profile stays reproducible from its inputs.

Tests (CPU, seconds): ``python benchmarks/bench_gpu_unet.py --dry --out FILE`` (``tests/integration/test_gpu_script.py``).
"""

from __future__ import annotations

import argparse
import copy
import datetime as _dt
import importlib.util
import json
import logging
import os
import platform
import re
import statistics
import sys
import time
import types
from pathlib import Path

_T0 = time.monotonic()
ROOT = Path(__file__).resolve().parents[1]      # the repo root: the package ``parastep``

# stabilityai/stable-diffusion-xl-base-1.0, unet/config.json (diffusers 0.19+), every field written out.
SDXL_UNET = dict(
    sample_size=128,
    in_channels=4,
    out_channels=4,
    center_input_sample=False,
    flip_sin_to_cos=True,
    freq_shift=0,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    mid_block_type="UNetMidBlock2DCrossAttn",
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    only_cross_attention=False,
    block_out_channels=(320, 640, 1280),
    layers_per_block=2,
    downsample_padding=1,
    mid_block_scale_factor=1,
    act_fn="silu",
    norm_num_groups=32,
    norm_eps=1e-5,
    cross_attention_dim=2048,
    transformer_layers_per_block=(1, 2, 10),
    attention_head_dim=(5, 10, 20),
    num_attention_heads=None,
    dual_cross_attention=False,
    use_linear_projection=True,
    class_embed_type=None,
    addition_embed_type="text_time",
    addition_time_embed_dim=256,
    addition_embed_type_num_heads=64,
    num_class_embeds=None,
    upcast_attention=None,
    resnet_time_scale_shift="default",
    resnet_skip_time_act=False,
    resnet_out_scale_factor=1.0,
    time_embedding_type="positional",
    time_embedding_dim=None,
    time_embedding_act_fn=None,
    timestep_post_act=None,
    time_cond_proj_dim=None,
    conv_in_kernel=3,
    conv_out_kernel=3,
    projection_class_embeddings_input_dim=2816,  # 1280 (pooled text embedding) + 6 time ids x 256
    class_embeddings_concat=False,
    mid_block_only_cross_attention=None,
    cross_attention_norm=None,
)

# Same block structure, a few thousandths of the size: CPU in seconds (tests).
TINY_UNET = {**SDXL_UNET, "sample_size": 8, "block_out_channels": (16, 32, 32), "layers_per_block": 1,
             "transformer_layers_per_block": (1, 1, 2), "attention_head_dim": (2, 4, 4), "cross_attention_dim": 32,
             "addition_time_embed_dim": 8, "projection_class_embeddings_input_dim": 32 + 6 * 8, "norm_num_groups": 8}

# Two of SDXL's levels at 32x32 latents, a few channels: the whole script on CPU in seconds (--dry).
DRY_UNET = {**TINY_UNET, "sample_size": 32, "block_out_channels": (16, 32), "attention_head_dim": (2, 4),
            "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"), "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
            "transformer_layers_per_block": (1, 1)}

# stabilityai/stable-diffusion-xl-base-1.0, scheduler/scheduler_config.json (the pipeline's default scheduler).
SDXL_SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                      prediction_type="epsilon", interpolation_type="linear", use_karras_sigmas=False,
                      timestep_spacing="leading", steps_offset=1)

TEXT_SEQ_LEN = 77         # CLIP tokenizer's max length
TIME_IDS = 6              # original size (2), crop top-left (2), target size (2)
NUM_STEPS = 50            # StableDiffusionXLPipeline's default num_inference_steps
GUIDANCE_SCALE = 5.0      # StableDiffusionXLPipeline's default guidance_scale
BATCHES = (1, 2, 4, 8)    # measured with batch 2 first: one CFG step, the number the profile needs most
DTYPES = ("float16", "bfloat16", "float32")
MAX_REASONS = 20          # graph-break reasons kept per check (distinct ones, most frequent first)


def _batches(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of batch sizes (e.g. 1,2,4,8)") from None
    if not values or min(values) < 1 or len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"{text!r}: batch sizes must be distinct positive integers")
    return values


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default=None, help="torch device (default: cuda)")
    ap.add_argument("--dtype", default=None, choices=DTYPES, help="weights and activations (default: float16, as the SDXL pipeline runs)")
    ap.add_argument("--repeats", type=int, default=None, help="timed runs per batch size and for the step (default 20; --dry 2)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed runs before each batch size's timed runs (default 3; --dry 1)")
    ap.add_argument("--batches", type=_batches, default=BATCHES,
                    help="batch sizes of the forward (default 1,2,4,8; a guided call on k offsets is batch 2k)")
    ap.add_argument("--out", default="gpu_unet.json", help="JSON to write (default: gpu_unet.json)")
    ap.add_argument("--cuda-graph", action="store_true",
                    help="also time each batch size's forward replayed from a captured CUDA graph (no per-kernel launch "
                         "cost: what a deployment with torch.compile(mode='reduce-overhead') would see); CUDA only")
    ap.add_argument("--compile", action="store_true",
                    help="also time torch.compile(unet, dynamic=False) per batch size (compile time apart from the "
                         "steady-state medians) and the batched plan with it")
    ap.add_argument("--compile-backend", default=None, help="torch.compile backend (default inductor; --dry: eager)")
    ap.add_argument("--compile-batches", type=_batches, default=None, help="batch sizes to compile (default: --batches; --dry 2)")
    ap.add_argument("--steps", type=int, default=None, help="batched plan: denoising steps (default 20; --dry 5)")
    ap.add_argument("--exact-steps", type=int, default=None, help="batched plan: exact steps before the windows (default 2; --dry 1)")
    ap.add_argument("--window", type=int, default=4, help="batched plan: offsets per parallel window (default 4; the last may be shorter)")
    ap.add_argument("--plan-repeats", type=int, default=None, help="batched plan: timed runs of each variant (default 3; --dry 1)")
    ap.add_argument("--break-steps", type=int, default=None,
                    help="graph-break check: steps of its plan (default --window + 1: one exact step, one window; more "
                         "steps show the hooks' per-step recompiles, up to dynamo's recompile limit, at one UNet trace each)")
    ap.add_argument("--no-plan", action="store_true", help="leave out the batched plan")
    ap.add_argument("--no-graph-breaks", action="store_true", help="leave out the torch.compile graph-break check")
    ap.add_argument("--tiny", action="store_true", help="a tiny UNet of SDXL's structure, measured on --device (a small model, not SDXL)")
    ap.add_argument("--dry", action="store_true",
                    help="test the script: every section on CPU in float32 with a tiny two-level UNet at 32x32 latents, in "
                         "seconds; the JSON says dry and make_sdxl.py refuses it")
    ap.add_argument("--time-limit", type=float, default=240.0,
                    help="seconds from the script's start after which no further timed run or section starts (default 240)")
    args = ap.parse_args(argv)
    if args.dry and (args.device not in (None, "cpu") or args.dtype not in (None, "float32") or args.tiny):
        ap.error("--dry runs its own tiny UNet on CPU in float32: drop --device, --dtype and --tiny")
    args.device = args.device or ("cpu" if args.dry else "cuda")
    args.dtype = args.dtype or ("float32" if args.dry else "float16")
    args.repeats = args.repeats if args.repeats is not None else (2 if args.dry else 20)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.dry else 3)
    args.plan_repeats = args.plan_repeats if args.plan_repeats is not None else (1 if args.dry else 3)
    args.compile_backend = args.compile_backend or ("eager" if args.dry else "inductor")
    args.compile_batches = args.compile_batches or ((2,) if args.dry else args.batches)
    args.steps = args.steps if args.steps is not None else (5 if args.dry else 20)
    args.exact_steps = args.exact_steps if args.exact_steps is not None else (1 if args.dry else 2)
    if args.repeats < 1 or args.warmup < 0 or args.plan_repeats < 1:
        ap.error("--repeats and --plan-repeats must be >= 1 and --warmup >= 0")
    args.break_steps = args.break_steps if args.break_steps is not None else args.window + 1
    if args.exact_steps < 1 or args.window < 2 or args.steps < args.exact_steps + 2 or args.break_steps < 3:
        ap.error("the batched plan needs --exact-steps >= 1 (a window's stand-in is the last applied output), --window >= 2, "
                 "--steps >= --exact-steps + 2 and --break-steps >= 3")
    return args


def elapsed() -> float:
    return time.monotonic() - _T0


def device_name(torch, device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{device.type}: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads"


def sync(torch, device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def stats(runs: list[float]) -> dict:
    return {"median": statistics.median(runs), "min": min(runs), "max": max(runs), "runs": runs}


def _ms(s: dict) -> str:
    return f"median {s['median'] * 1e3:.2f} ms (min {s['min'] * 1e3:.2f}, max {s['max'] * 1e3:.2f}; {len(s['runs'])} runs)"


def measure_order(batches) -> list[int]:
    """Batch 2 (one CFG step) first, then the others as given: under --time-limit the profile's key number comes first."""
    return [b for b in batches if b == 2] + [b for b in batches if b != 2]


def timed(fn, *, torch, device, warmup: int, repeats: int, deadline: float, before=None) -> tuple[list[float], bool]:
    """(seconds of each timed run, truncated): ``warmup`` untimed calls, then up to ``repeats`` timed ones;
    none starts past ``deadline`` (script-relative seconds) once one has run. ``before()`` runs untimed
    ahead of every call."""
    before = before or (lambda: None)
    for _ in range(warmup):
        before()
        fn()
    sync(torch, device)
    runs: list[float] = []
    for _ in range(repeats):
        if runs and elapsed() > deadline:
            return runs, True
        before()
        sync(torch, device)
        t = time.perf_counter()
        fn()
        sync(torch, device)
        runs.append(time.perf_counter() - t)
    return runs, False


def build_unet(torch, device, dtype, config: dict):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    with torch.device(device):        # weights initialised where they run: no 10 GB host-to-device copy
        unet = UNet2DConditionModel(**config)
    return unet.to(dtype=dtype).eval().requires_grad_(False)


def unet_inputs(torch, device, dtype, config: dict, batch: int, *, resolution_px: int) -> dict:
    g = torch.Generator(device="cpu").manual_seed(batch)
    lat = resolution_px // 8
    text_embeds_dim = config["projection_class_embeddings_input_dim"] - TIME_IDS * config["addition_time_embed_dim"]

    def randn(*shape):
        return torch.randn(*shape, generator=g).to(device=device, dtype=dtype)

    time_ids = torch.tensor([[resolution_px, resolution_px, 0, 0, resolution_px, resolution_px]] * batch, device=device, dtype=dtype)
    # batch 2 (or 1): the pipeline's 0-d timestep; above: one per row, as BatchStep's call on k offsets passes them
    timestep = torch.tensor(500.0, device=device) if batch <= 2 else torch.full((batch,), 500.0, device=device)
    return dict(sample=randn(batch, config["in_channels"], lat, lat),
                timestep=timestep,
                encoder_hidden_states=randn(batch, TEXT_SEQ_LEN, config["cross_attention_dim"]),
                added_cond_kwargs={"text_embeds": randn(batch, text_embeds_dim), "time_ids": time_ids})


def call(unet, inputs: dict):
    """``unet`` on ``inputs`` as ``StableDiffusionXLPipeline`` calls it (sample and timestep positional, the same
    keywords; the raw output tensor): one call form everywhere, so a compiled UNet's graphs serve the plan too."""
    return unet(inputs["sample"], inputs["timestep"], encoder_hidden_states=inputs["encoder_hidden_states"], timestep_cond=None,
                cross_attention_kwargs=None, added_cond_kwargs=inputs["added_cond_kwargs"], return_dict=False)[0]


def time_forward(unet, torch, device, dtype, config: dict, batch: int, *, resolution_px: int, warmup: int, repeats: int,
                 deadline: float) -> tuple[list[float], bool, bool]:
    """(seconds of each timed forward, truncated, output finite) at ``batch``."""
    inputs = unet_inputs(torch, device, dtype, config, batch, resolution_px=resolution_px)
    out = call(unet, inputs)
    assert out.shape == inputs["sample"].shape, (out.shape, inputs["sample"].shape)
    finite = bool(torch.isfinite(out).all())
    runs, cut = timed(lambda: call(unet, inputs), torch=torch, device=device,
                      warmup=warmup, repeats=repeats, deadline=deadline)
    return runs, cut, finite


def time_forward_graph(unet, torch, device, dtype, config: dict, batch: int, *, resolution_px: int, warmup: int,
                       repeats: int, deadline: float) -> tuple[list[float], bool]:
    """(seconds of each timed replay of the forward captured in one CUDA graph, truncated) at ``batch``."""
    inputs = unet_inputs(torch, device, dtype, config, batch, resolution_px=resolution_px)
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):               # warm-up on a side stream, as capture requires
        for _ in range(2):
            call(unet, inputs)
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        call(unet, inputs)
    try:
        return timed(graph.replay, torch=torch, device=device, warmup=warmup, repeats=repeats, deadline=deadline)
    finally:
        del graph                                # its memory pool: batch 8's activations, not kept for the next size
        torch.cuda.empty_cache()


def time_scheduler_step(torch, device, dtype, config: dict, *, resolution_px: int, warmup: int, repeats: int, deadline: float):
    from diffusers import EulerDiscreteScheduler

    lat = resolution_px // 8
    base = EulerDiscreteScheduler(**SDXL_SCHEDULER)
    base.set_timesteps(NUM_STEPS, device=device)
    g = torch.Generator(device="cpu").manual_seed(7)
    latents = torch.randn(1, config["in_channels"], lat, lat, generator=g).to(device=device, dtype=dtype)
    noise_pred = torch.randn(1, config["in_channels"], lat, lat, generator=g).to(device=device, dtype=dtype)
    state = {"sched": None}

    def prime():          # a fresh run's first step (the index lookup) happens outside the timed call
        s = state["sched"]
        if s is None or s.step_index >= NUM_STEPS - 1:
            s = state["sched"] = copy.deepcopy(base)
            s.scale_model_input(latents, s.timesteps[0])
            s.step(noise_pred, s.timesteps[0], latents, return_dict=False)
        s.scale_model_input(latents, s.timesteps[s.step_index])   # as the pipeline does before each forward

    def one_step():
        s = state["sched"]
        s.step(noise_pred, s.timesteps[s.step_index], latents, return_dict=False)

    return timed(one_step, before=prime, torch=torch, device=device, warmup=warmup, repeats=repeats, deadline=deadline)


# ---- parastep, the batched plan, torch.compile -------------------------------------------------------------------

def import_parastep() -> types.SimpleNamespace:
    """What the plan and the graph-break check use of parastep, from the repo root this script lives in, imported
    as the package ``parastep`` when no such package is importable from there (the device machine runs a bare
    copy of the working tree whose folder has another name; pyproject maps the package to the repo root,
    ``package-dir = {"parastep" = "."}``, and an installed checkout is used as is). A missing third-party module
    (pydantic on a bare machine) is an ``ImportError`` naming the wheels to carry."""
    if "parastep" not in sys.modules:
        found = importlib.util.find_spec("parastep")
        if found is None or found.origin is None or Path(found.origin).resolve() != ROOT / "__init__.py":
            spec = importlib.util.spec_from_file_location("parastep", ROOT / "__init__.py", submodule_search_locations=[str(ROOT)])
            module = importlib.util.module_from_spec(spec)
            sys.modules["parastep"] = module
            try:
                spec.loader.exec_module(module)
            except BaseException:
                del sys.modules["parastep"]
                raise
    try:
        from parastep.executor.exchange import LocalExchange
        from parastep.executor.hooks import ParaStepConfig, apply_parastep, remove_parastep
        from parastep.schedules.check import implied_totals, violations
        from parastep.schedules.model import ExactWindow, ParallelWindow, Schedule
    except ModuleNotFoundError as exc:
        raise ImportError(f"parastep's executor hooks need the module {exc.name!r}, not installed here: carry the pydantic, "
                          "pydantic-core, annotated-types, typing-inspection and pyyaml wheels (see the docstring)") from None
    return types.SimpleNamespace(LocalExchange=LocalExchange, ParaStepConfig=ParaStepConfig, apply_parastep=apply_parastep,
                                 remove_parastep=remove_parastep, implied_totals=implied_totals, violations=violations,
                                 ExactWindow=ExactWindow, ParallelWindow=ParallelWindow, Schedule=Schedule)


def plan_windows(ps, *, steps: int, exact_steps: int, window: int, batch: bool, output_bytes: int) -> list:
    """``exact_steps`` exact windows, then parallel windows of ``window`` offsets all on rank 0 (world size 1), the
    last one shorter (or an exact step where one step is left); validated as ``parastep validate`` would."""
    wins = [ps.ExactWindow(start=i) for i in range(exact_steps)]
    start = exact_steps
    while start < steps:
        size = min(window, steps - start)
        wins.append(ps.ParallelWindow(start=start, placement=[0] * size, batch=batch) if size >= 2 else ps.ExactWindow(start=start))
        start += size
    totals = ps.implied_totals(wins, world_size=1, output_bytes=output_bytes)
    schedule = ps.Schedule(model="sdxl", scheduler="EulerDiscreteScheduler", guidance_scale=GUIDANCE_SCALE, num_steps=steps,
                           world_size=1, max_window=window, output_bytes=output_bytes, totals=totals, windows=wins)
    bad = ps.violations(schedule)
    if bad:
        raise SystemExit(f"the batched plan's schedule is invalid: {bad[0].message}")
    return list(schedule.windows)


class GuidedLoop:
    """``StableDiffusionXLPipeline.__call__``'s denoising loop, reduced to what parastep's hooks see: the denoiser
    (``unet``), the ``scheduler``, ``do_classifier_free_guidance``, and per step the guided batch
    ``[latents; latents]`` through ``scale_model_input``, the UNet call with the positional timestep and the
    text conditions, the CFG combine and ``scheduler.step(..., generator=..., return_dict=False)``. Text states
    and added conditions are given as tensors: rows [0, B) unconditional, [B, 2B) conditional."""

    def __init__(self, unet, scheduler, *, encoder_hidden_states, added_cond_kwargs: dict, guidance_scale: float) -> None:
        self.unet = unet
        self.scheduler = scheduler
        self.prompt_embeds = encoder_hidden_states
        self.added_cond_kwargs = added_cond_kwargs
        self.guidance_scale = guidance_scale

    @property
    def do_classifier_free_guidance(self) -> bool:
        return self.guidance_scale > 1

    def __call__(self, noise, *, num_inference_steps: int, generator):
        import torch

        s = self.scheduler
        s.set_timesteps(num_inference_steps, device=noise.device)
        latents = noise * s.init_noise_sigma
        for t in s.timesteps:
            model_input = s.scale_model_input(torch.cat([latents] * 2), t)
            noise_pred = call(self.unet, {"sample": model_input, "timestep": t, "encoder_hidden_states": self.prompt_embeds,
                                          "added_cond_kwargs": self.added_cond_kwargs})
            uncond, cond = noise_pred.chunk(2)
            noise_pred = uncond + self.guidance_scale * (cond - uncond)
            latents = s.step(noise_pred, t, latents, generator=generator, return_dict=False)[0]
        return latents


class PlanBench:
    """A plan's fixed parts: inputs (noise, text conditions), its two schedules (``steps`` steps, ``exact_steps``
    exact ones, then windows of ``window`` offsets, batched or not), and one run of each variant on a given UNet
    (eager, or compiled)."""

    def __init__(self, ps, torch, device, dtype, config: dict, *, steps: int, exact_steps: int, window: int,
                 resolution_px: int) -> None:
        self.ps, self.torch, self.device = ps, torch, device
        self.steps, self.exact_steps, self.window = steps, exact_steps, window
        cond = unet_inputs(torch, device, dtype, config, 2, resolution_px=resolution_px)
        self.cond = {"encoder_hidden_states": cond["encoder_hidden_states"], "added_cond_kwargs": cond["added_cond_kwargs"]}
        lat = resolution_px // 8
        g = torch.Generator(device="cpu").manual_seed(11)
        self.noise = torch.randn(1, config["in_channels"], lat, lat, generator=g).to(device=device, dtype=dtype)
        out_bytes = self.noise.numel() * self.noise.element_size()
        kw = dict(steps=steps, exact_steps=exact_steps, window=window, output_bytes=out_bytes)
        self.windows = {"unbatched": plan_windows(ps, batch=False, **kw), "batched": plan_windows(ps, batch=True, **kw)}

    def loop(self, unet):
        from diffusers import EulerDiscreteScheduler

        return GuidedLoop(unet, EulerDiscreteScheduler(**SDXL_SCHEDULER), guidance_scale=GUIDANCE_SCALE, **self.cond)

    def run(self, unet, variant: str):
        """(final latents, the hooks' handle or None) of one run: ``sequential`` (no hooks), ``unbatched`` or ``batched``."""
        loop = self.loop(unet)
        gen = self.torch.Generator(device=self.device).manual_seed(0)
        if variant == "sequential":
            return loop(self.noise, num_inference_steps=self.steps, generator=gen), None
        ps = self.ps
        handle = ps.apply_parastep(loop, ps.ParaStepConfig(windows=self.windows[variant], num_steps=self.steps,
                                                           exchange=ps.LocalExchange()))
        try:
            return loop(self.noise, num_inference_steps=self.steps, generator=gen), handle
        finally:
            ps.remove_parastep(loop)


def _window_report(handle) -> dict:
    """The hooks' per-window statistics of one run (``WindowStats``; ``calls`` and ``batch_fallbacks`` exist once the
    executor batches) and whether every parallel window made one denoiser call."""
    wins = [{"start": s.start, "kind": s.kind, "size": s.size, "forwards": s.forwards, "calls": getattr(s, "calls", None),
             "batch_fallbacks": getattr(s, "batch_fallbacks", None)} for s in handle.stats()]
    par = [w for w in wins if w["kind"] == "parallel"]
    active = bool(par) and all(w["calls"] == 1 and w["batch_fallbacks"] == 0 for w in par)
    calls = sum(w["calls"] for w in wins) if all(w["calls"] is not None for w in wins) else None
    return {"windows": wins, "denoiser_calls": calls, "batching_active": active,
            "fallback_reasons": list(getattr(handle, "batch_fallback_reasons", []))}


def _max_abs(torch, a, b) -> float:
    return float((a.float() - b.float()).abs().max())


def time_plan(bench: PlanBench, unet, variants: tuple[str, ...], *, warmup: int, repeats: int, deadline: float) -> dict:
    """Every variant once per round, interleaved (one load for all), ``warmup`` untimed rounds then up to ``repeats``
    timed ones (none started past ``deadline`` once one ran); final latents of the first round."""
    torch, device = bench.torch, bench.device
    runs: dict[str, list[float]] = {v: [] for v in variants}
    finals: dict[str, object] = {}
    handles: dict[str, object] = {}
    truncated = False
    for r in range(warmup + repeats):
        if r > warmup and elapsed() > deadline:
            truncated = True
            break
        for v in variants:
            sync(torch, device)
            t = time.perf_counter()
            out, handle = bench.run(unet, v)
            sync(torch, device)
            if r >= warmup:
                runs[v].append(time.perf_counter() - t)
            finals.setdefault(v, out)
            if handle is not None:
                handles[v] = handle
    return {"runs": runs, "finals": finals, "handles": handles, "truncated": truncated}


def batched_plan(bench: PlanBench, unet, *, warmup: int, repeats: int, deadline: float) -> tuple[dict, dict]:
    """The ``batched_plan`` section (and the eager batched run's final latents, the graph-break check's reference)."""
    torch = bench.torch
    got = time_plan(bench, unet, ("sequential", "unbatched", "batched"), warmup=warmup, repeats=repeats, deadline=deadline)
    med = {v: stats(r) for v, r in got["runs"].items()}
    f = got["finals"]
    report = _window_report(got["handles"]["batched"])
    result = {
        "steps": bench.steps, "exact_steps": bench.exact_steps, "window": bench.window,
        "world_size": 1, "scheduler": "EulerDiscreteScheduler", "guidance_scale": GUIDANCE_SCALE,
        "windows": [w.model_dump(mode="json") for w in bench.windows["batched"]],
        "warmup_rounds": warmup, "sequential_s": med["sequential"], "unbatched_s": med["unbatched"], "batched_s": med["batched"],
        "speedup_batched_over_sequential": med["sequential"]["median"] / med["batched"]["median"],
        "speedup_batched_over_unbatched": med["unbatched"]["median"] / med["batched"]["median"],
        "sequential_denoiser_calls": bench.steps,
        "unbatched_denoiser_calls": _window_report(got["handles"]["unbatched"])["denoiser_calls"],
        "batched_denoiser_calls": report["denoiser_calls"],
        "batching_active": report["batching_active"],
        "batch_fallback_reasons": report["fallback_reasons"],
        "batched_windows": report["windows"],
        "max_abs_diff_batched_vs_unbatched": _max_abs(torch, f["batched"], f["unbatched"]),
        "max_abs_diff_plan_vs_sequential": _max_abs(torch, f["unbatched"], f["sequential"]),
        "latents_max_abs": float(f["sequential"].float().abs().max()),
        "output_finite": all(bool(torch.isfinite(x).all()) for x in f.values()),
        "truncated": got["truncated"],
    }
    return result, f


def _dynamo(torch):
    import torch._dynamo
    import torch._dynamo.utils

    return torch._dynamo


def _limit_name(torch) -> str:
    return "recompile_limit" if hasattr(torch._dynamo.config, "recompile_limit") else "cache_size_limit"   # renamed in torch 2.6


def _recompile_limit(torch) -> int:
    """Graphs dynamo keeps per frame before it runs the frame eagerly (default 8)."""
    return int(getattr(_dynamo(torch).config, _limit_name(torch)))


def _site(frames: list[tuple[str, int, str]]) -> str:
    """The innermost of ``frames`` (file, line, function; outermost first) in parastep's own code (not this script),
    else the innermost one: where a graph break sits, as ``executor/hooks.py:512 in _prepare_batch``."""
    def ours(path: str) -> bool:
        p = Path(path).resolve()
        return ROOT in p.parents and ROOT / "benchmarks" not in p.parents and "site-packages" not in p.parts

    mine = [f for f in frames if ours(f[0])]
    if not (mine or frames):
        return "?"
    path, line, name = (mine or frames)[-1]
    shown = Path(path).resolve().relative_to(ROOT) if mine else Path(path).name
    site = f"{shown}:{line}" + (f" in {name}" if name else "")
    if mine and frames[-1] != mine[-1]:      # the break itself sits in a callee (the scheduler's step, copy.deepcopy)
        site += f" -> {Path(frames[-1][0]).name}:{frames[-1][1]}"
    return site


def _short(reason: str) -> str:
    """A dynamo graph-break reason in one line: its title, the developer context, no hint prose or URL."""
    text = " ".join(str(reason).split())
    title = text.split(" Explanation:")[0]
    ctx = re.search(r"Developer debug context: (.*?)(?: For more details|$)", text)
    return (title + (f" [{ctx.group(1)}]" if ctx and ctx.group(1) not in title else ""))[:300]


class BreakSites(logging.Handler):
    """Where dynamo broke graphs while active: the records of its graph-break log, as ``reason at file:line`` ->
    records. A record carries the user code traceback the first time a break is seen; a repeat names only the
    innermost frame, attributed to the site found for that frame before."""

    LOGGER = "torch._dynamo.symbolic_convert.__graph_breaks"
    RECOMPILES = "torch._dynamo.convert_frame"     # its warning when a frame hits the recompile limit

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.sites: dict[str, int] = {}
        self.recompile_limit_hits: list[str] = []   # frames dynamo gave up on (run eagerly from then on)
        self._site_of: dict[str, str] = {}      # innermost "file:line" -> the site its full record named

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = record.getMessage()
        except Exception:   # noqa: BLE001 - a record we cannot format says nothing
            return
        lines = msg.splitlines()
        if record.name == self.RECOMPILES:
            if "recompile_limit" in msg or "cache_size_limit" in msg:
                fn = next((ln.strip() for ln in lines if ln.strip().startswith("function:")), "function: ?")
                why = next((ln.strip() for ln in lines if ln.strip().startswith("last reason:")), "")
                fn = re.sub(r"\((/[^)]*\.py):(\d+)\)", lambda m: f"({_site([(m.group(1), int(m.group(2)), '')])})", fn)
                self.recompile_limit_hits.append(" ".join(f"{fn}; {why.split('#')[0].strip()}".split())[:300])
            return
        at = next((i for i, ln in enumerate(lines) if "Graph Break Reason:" in ln), None)
        title = lines[at].split("Graph Break Reason:", 1)[1].strip() if at is not None else (lines[0] if lines else "")
        if at is not None and (not title or title.endswith(":")):    # "Encountered graph break when ...:", then the reason
            title = next((ln.strip() for ln in lines[at + 1:] if ln.strip()), title)
        m = re.search(r"in user code at (.+?):(\d+)\s*$", lines[0] if lines else "")
        loc = f"{m.group(1)}:{m.group(2)}" if m else "?"
        frames = [(f, int(n), fn) for f, n, fn in re.findall(r'File "([^"]+)", line (\d+), in ([\w<>.]+)', msg)]
        if frames:
            site = self._site_of.setdefault(loc, _site(frames))
        else:
            site = self._site_of.get(loc) or (_site([(m.group(1), int(m.group(2)), "")]) if m else "?")
        key = f"{_short(title)} at {site}"
        self.sites[key] = self.sites.get(key, 0) + 1

    def __enter__(self) -> "BreakSites":
        log = logging.getLogger(self.LOGGER)
        self._saved = (log.level, log.propagate)
        log.setLevel(logging.DEBUG)
        log.propagate = False              # collected here, not printed
        log.addHandler(self)
        logging.getLogger(self.RECOMPILES).addHandler(self)    # collected, and printed as torch prints it
        return self

    def __exit__(self, *exc) -> None:
        log = logging.getLogger(self.LOGGER)
        log.removeHandler(self)
        log.setLevel(self._saved[0])
        log.propagate = self._saved[1]
        logging.getLogger(self.RECOMPILES).removeHandler(self)


def _top(pairs) -> dict[str, int]:
    """(text, count) pairs summed per text, the ``MAX_REASONS`` most frequent first."""
    total: dict[str, int] = {}
    for text, n in pairs:
        total[text] = total.get(text, 0) + n
    return dict(sorted(total.items(), key=lambda kv: -kv[1])[:MAX_REASONS])


def counting_backend(torch, graphs: list[int], inner: str | None = None):
    """A torch.compile backend that appends each graph's op count to ``graphs``, then hands the graph to the backend
    named ``inner`` (None: runs it eagerly, as the ``eager`` backend does)."""
    real = _dynamo(torch).lookup_backend(inner) if inner else None

    def backend(gm, example_inputs):
        graphs.append(sum(1 for n in gm.graph.nodes if n.op in ("call_function", "call_method", "call_module")))
        return real(gm, example_inputs) if real is not None else gm.forward

    return backend


OUTSIDE_HOW = "torch.compile(unet) before apply_parastep: the hooks wrap the compiled module's forward and stay eager"


def counted_run(bench: PlanBench, target, variant: str, *, graphs: list[int], eager, how: str) -> dict:
    """One run of ``variant`` on ``target`` (a compiled UNet whose backend appends to ``graphs``): graphs made,
    graph breaks (``counters['graph_break']``: reasons; the graph-break log: where), frames, frames given up at
    the recompile limit, and its final latents against the eager run's (``eager``)."""
    torch = bench.torch
    counters = _dynamo(torch).utils.counters
    counters.clear()
    before = len(graphs)
    t0 = time.perf_counter()
    entry: dict = {"how": how, "plan": variant}
    sites = BreakSites()
    try:
        with sites:
            latents, handle = bench.run(target, variant)
        entry["max_abs_diff_vs_eager"] = _max_abs(torch, latents, eager)
        if handle is not None:
            report = _window_report(handle)
            entry.update(batching_active=report["batching_active"], denoiser_calls=report["denoiser_calls"])
    except Exception as exc:      # a finding, not a failure of the script: dynamo refusing the hooks' Python
        entry["error"] = " ".join(f"{type(exc).__name__}: {exc}".split())[:600]
    breaks = counters.get("graph_break", {})
    frames = counters.get("frames", {})
    made = graphs[before:]
    entry.update(graphs=len(made), graph_ops=made, graph_breaks=int(sum(breaks.values())),
                 break_reasons=_top((_short(k), int(v)) for k, v in breaks.items()), break_sites=_top(sites.sites.items()),
                 frames_compiled=int(frames.get("ok", 0)), frames_traced=int(frames.get("total", 0)),
                 recompile_limit_hits=sites.recompile_limit_hits, seconds=time.perf_counter() - t0)
    return entry


def graph_break_check(bench: PlanBench, unet, *, eager: dict, outside: bool = True) -> dict:
    """Graphs and graph breaks of whole plan runs under a counting backend (``counted_run``): ``sequential`` (the
    plain loop, ``unet.compile()``: the UNet alone), ``inside`` (the batched plan with parastep applied and
    ``unet.compile()``: the module's call is compiled, and with it the hooks' wrapper of ``forward``, an instance
    attribute that call looks up) and, unless ``outside`` is False (``--compile``'s plan run counts it then),
    ``outside`` (the batched plan with ``torch.compile(unet)`` made before ``apply_parastep``: the hooks wrap the
    compiled module's ``forward`` and run eagerly around it). ``eager``: the eager runs' final latents per plan
    variant. Dynamo's recompile limit is left as it is (what a user of torch.compile gets)."""
    torch = bench.torch
    dynamo = _dynamo(torch)
    out: dict = {"torch": torch.__version__, "steps": bench.steps, "exact_steps": bench.exact_steps, "window": bench.window,
                 "windows": [w.model_dump(mode="json") for w in bench.windows["batched"]], "recompile_limit": _recompile_limit(torch)}
    runs = [("sequential", "sequential", "unet.compile(), no parastep: the UNet's own graphs"),
            ("inside", "batched", "unet.compile() with parastep applied: the module's call is compiled, so the hooks' "
                                  "wrapper of forward (an instance attribute) is traced with it")]
    for name, variant, how in runs + ([("outside", "batched", OUTSIDE_HOW)] if outside else []):
        graphs: list[int] = []
        dynamo.reset()
        if name == "outside":
            target = torch.compile(unet, backend=counting_backend(torch, graphs), dynamic=False)
        else:
            unet.compile(backend=counting_backend(torch, graphs), dynamic=False)
            target = unet
        try:
            out[name] = counted_run(bench, target, variant, graphs=graphs, eager=eager[variant], how=how)
        finally:
            unet._compiled_call_impl = None          # Module.compile's attribute: the module is eager again
    dynamo.reset()
    return out


def compile_section(bench: PlanBench | None, unet, torch, device, dtype, config: dict, order: list[int], args, *,
                    resolution_px: int, deadline: float, eager_batched, outside=None) -> tuple[dict, bool]:
    """torch.compile(unet, dynamic=False): per batch size the first call (compile included) and the steady state,
    then the batched plan with the compiled UNet (``bench``; ``eager_batched``: its eager final latents), and, with
    ``outside`` = (the graph-break check's plan, its eager batched latents), that check's ``outside`` run on this
    compiled UNet (its graphs are this section's: the same batch shapes); (section, truncated)."""
    limit = _recompile_limit(torch)
    # one static graph per batch shape (the plan's too): not the default limit's business here
    setattr(torch._dynamo.config, _limit_name(torch), max(limit, len(set(order) | {2, 2 * args.window}) + 2))
    try:
        return _compile_section(bench, unet, torch, device, dtype, config, order, args, resolution_px=resolution_px,
                                deadline=deadline, eager_batched=eager_batched, outside=outside)
    finally:
        setattr(torch._dynamo.config, _limit_name(torch), limit)


def _compile_section(bench, unet, torch, device, dtype, config: dict, order: list[int], args, *, resolution_px: int,
                     deadline: float, eager_batched, outside) -> tuple[dict, bool]:
    dynamo = _dynamo(torch)
    dynamo.reset()
    graphs: list[int] = []
    compiled = torch.compile(unet, backend=counting_backend(torch, graphs, args.compile_backend), dynamic=False)
    per_batch: dict[str, dict] = {}
    truncated = False
    for batch in order:
        if per_batch and elapsed() > deadline:
            truncated = True
            continue
        inputs = unet_inputs(torch, device, dtype, config, batch, resolution_px=resolution_px)
        sync(torch, device)
        t = time.perf_counter()
        got = call(compiled, inputs)
        sync(torch, device)
        first = time.perf_counter() - t
        diff = _max_abs(torch, got, call(unet, inputs))
        runs, cut = timed(lambda: call(compiled, inputs), torch=torch, device=device,
                          warmup=args.warmup, repeats=args.repeats, deadline=deadline)
        truncated = truncated or cut
        s = stats(runs)
        per_batch[str(batch)] = {"first_call_s": first, "compile_s": max(0.0, first - s["median"]), "forward_s": s,
                                 "max_abs_diff_vs_eager": diff}
        print(f"compiled forward batch {batch}: first call {first:.1f} s (compile included), then {_ms(s)}", flush=True)
    result: dict = {"backend": args.compile_backend, "mode": "default", "dynamic": False, "per_batch": per_batch,
                    "compile_s_total": sum(v["compile_s"] for v in per_batch.values())}
    if outside is not None and elapsed() <= deadline:
        # the graph-break check's "outside" run, on this backend (dynamo breaks graphs the same whatever the backend)
        result["outside"] = counted_run(outside[0], compiled, "batched", graphs=graphs, eager=outside[1], how=OUTSIDE_HOW)
        result["outside"]["note"] = (f"counted in --compile's section, on its {args.compile_backend} backend: 'graphs' are those "
                                     f"new in this run (batch sizes {order} were compiled before it, in this call form)")
    if bench is not None and elapsed() <= deadline:
        got = time_plan(bench, compiled, ("sequential", "batched"), warmup=1, repeats=args.plan_repeats, deadline=deadline)
        seq, bat = stats(got["runs"]["sequential"]), stats(got["runs"]["batched"])
        report = _window_report(got["handles"]["batched"])
        result["batched_plan"] = {"sequential_s": seq, "batched_s": bat, "speedup_batched_over_sequential": seq["median"] / bat["median"],
                                  "batching_active": report["batching_active"], "batched_denoiser_calls": report["denoiser_calls"],
                                  "max_abs_diff_batched_vs_eager_batched": _max_abs(torch, got["finals"]["batched"], eager_batched),
                                  "warmup_rounds": 1, "truncated": got["truncated"]}
        truncated = truncated or got["truncated"]
        print(f"compiled batched plan: sequential {_ms(seq)}, batched {_ms(bat)}: "
              f"{seq['median'] / bat['median']:.2f}x", flush=True)
    elif bench is not None:
        truncated = True
    dynamo.reset()
    return result, truncated


def _print_breaks(gb: dict, only=("sequential", "inside", "outside")) -> None:
    parts = []
    for k in (k for k in only if k in gb):
        e = gb[k]
        if "graphs" not in e:
            parts.append(f"{k}: {e.get('skipped') or e.get('error')}")
            continue
        parts.append(f"{k}: {e['graph_breaks']} breaks, {e['graphs']} graphs" + (f" (error: {e['error']})" if "error" in e else "")
                     + (f", recompile limit hit by {len(e['recompile_limit_hits'])} frame(s)" if e["recompile_limit_hits"] else ""))
    print("graph breaks under torch.compile (whole runs, counted): " + "; ".join(parts), flush=True)


def run(args: argparse.Namespace) -> dict:
    import diffusers
    import torch

    diffusers.utils.logging.set_verbosity_error()   # "modules that should be kept in float32: []" on the cast
    if args.dry:
        torch.set_num_threads(1)   # a shared 2-core test machine: threaded kernels oversubscribe and crawl (tests/conftest.py)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: CUDA is not available here (torch {torch.__version__}); use a GPU machine or --dry")
    dtype = getattr(torch, args.dtype)
    config = DRY_UNET if args.dry else TINY_UNET if args.tiny else SDXL_UNET
    label = "dry" if args.dry else "tiny" if args.tiny else "sdxl-base-1.0"
    resolution_px = 8 * config["sample_size"]
    deadline = args.time_limit
    order = measure_order(args.batches)
    skipped: dict[str, str] = {}
    sections_truncated: list[str] = []
    section_s: dict[str, float] = {}      # wall seconds of each section (what a device run's budget went to)

    t = time.perf_counter()
    unet = build_unet(torch, device, dtype, config)
    sync(torch, device)
    build_s = time.perf_counter() - t
    params = sum(p.numel() for p in unet.parameters())
    print(f"{'DRY RUN (tests the script, measures nothing): ' if args.dry else ''}UNet2DConditionModel ({label} config, random "
          f"weights): {params / 1e9:.4f} B parameters, {args.dtype} on {device_name(torch, device)}; built in {build_s:.1f} s", flush=True)

    forward: dict[str, dict] = {}
    truncated = False
    finite = True
    t_section = time.perf_counter()
    with torch.inference_mode():
        for batch in order:
            if forward and elapsed() > deadline:
                print(f"batch {batch}: skipped, past --time-limit {deadline:g} s", flush=True)
                truncated = True
                continue
            runs, cut, ok = time_forward(unet, torch, device, dtype, config, batch, resolution_px=resolution_px,
                                         warmup=args.warmup, repeats=args.repeats, deadline=deadline)
            truncated, finite = truncated or cut, finite and ok
            forward[str(batch)] = s = stats(runs)
            print(f"forward batch {batch}: {_ms(s)}", flush=True)
        runs, cut = time_scheduler_step(torch, device, dtype, config, resolution_px=resolution_px,
                                        warmup=args.warmup, repeats=args.repeats, deadline=deadline)
        truncated = truncated or cut
        step = stats(runs)
        print(f"EulerDiscreteScheduler.step (1, {config['in_channels']}, {resolution_px // 8}, {resolution_px // 8}): "
              f"median {step['median'] * 1e3:.3f} ms (min {step['min'] * 1e3:.3f}, max {step['max'] * 1e3:.3f})", flush=True)
        peak_eager = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
        section_s["forwards_and_step"] = time.perf_counter() - t_section

        def section(name: str) -> bool:
            """May section ``name`` start (not past --time-limit)? Else it is skipped, and said so."""
            if elapsed() <= deadline:
                return True
            skipped[name] = f"past --time-limit {deadline:g} s"
            sections_truncated.append(name)
            print(f"{name}: skipped, past --time-limit {deadline:g} s", flush=True)
            return False

        bench = break_bench = finals = break_finals = plan = graph_breaks = None
        if not (args.no_plan and args.no_graph_breaks):
            try:
                ps = import_parastep()
            except ImportError as exc:
                print(f"parastep: {exc}", flush=True)
                plan = None if args.no_plan else {"error": str(exc)}
                graph_breaks = None if args.no_graph_breaks else {"error": str(exc)}
            else:
                kw = dict(window=args.window, resolution_px=resolution_px)
                bench = PlanBench(ps, torch, device, dtype, config, steps=args.steps, exact_steps=args.exact_steps, **kw)
                break_bench = (bench if (args.break_steps, 1) == (args.steps, args.exact_steps) else
                               PlanBench(ps, torch, device, dtype, config, steps=args.break_steps, exact_steps=1, **kw))
        if args.no_plan:
            skipped["batched_plan"] = "--no-plan"
        elif bench is not None and section("batched_plan"):
            t_section = time.perf_counter()
            plan, finals = batched_plan(bench, unet, warmup=1, repeats=args.plan_repeats, deadline=deadline)
            section_s["batched_plan"] = time.perf_counter() - t_section
            if plan["truncated"]:
                sections_truncated.append("batched_plan")
            print(f"batched plan ({args.steps} steps, {args.exact_steps} exact, windows of {args.window} on one rank): "
                  f"sequential {_ms(plan['sequential_s'])}; unbatched {_ms(plan['unbatched_s'])}; batched {_ms(plan['batched_s'])}; "
                  f"speedup {plan['speedup_batched_over_sequential']:.2f}x over sequential; denoiser calls "
                  f"{plan['sequential_denoiser_calls']} / {plan['unbatched_denoiser_calls']} / {plan['batched_denoiser_calls']}"
                  f"{'' if plan['batching_active'] else ' (the hooks did not batch: offsets ran one after another)'}; "
                  f"final latents: batched vs unbatched max abs diff {plan['max_abs_diff_batched_vs_unbatched']:.3g}, plan vs "
                  f"sequential {plan['max_abs_diff_plan_vs_sequential']:.3g} (latents max abs {plan['latents_max_abs']:.3g})", flush=True)
        if args.no_graph_breaks:
            skipped["graph_breaks"] = "--no-graph-breaks"
        elif bench is not None and section("graph_breaks"):
            t_section = time.perf_counter()
            break_finals = (finals if break_bench is bench and finals is not None else
                            {v: break_bench.run(unet, v)[0] for v in ("sequential", "batched")})   # eager reference latents
            graph_breaks = graph_break_check(break_bench, unet, eager=break_finals, outside=not args.compile)
            section_s["graph_breaks"] = time.perf_counter() - t_section
            _print_breaks(graph_breaks)

        graphed: dict[str, dict] | None = None
        if args.cuda_graph and device.type != "cuda":
            skipped["forward_cuda_graph_s"] = "CUDA graphs need --device cuda"
        elif args.cuda_graph and section("forward_cuda_graph_s"):
            graphed = {}
            t_section = time.perf_counter()
            for batch in order:
                if graphed and elapsed() > deadline:
                    sections_truncated.append("forward_cuda_graph_s")
                    continue
                try:
                    runs, cut = time_forward_graph(unet, torch, device, dtype, config, batch, resolution_px=resolution_px,
                                                   warmup=args.warmup, repeats=args.repeats, deadline=deadline)
                except Exception as exc:        # capture can fail on a diffusers version that syncs inside forward
                    graphed[str(batch)] = {"error": f"{type(exc).__name__}: {exc}"}
                    print(f"forward batch {batch} (CUDA graph): capture failed: {type(exc).__name__}: {exc}", flush=True)
                    continue
                if cut:
                    sections_truncated.append("forward_cuda_graph_s")
                graphed[str(batch)] = s = stats(runs)
                print(f"forward batch {batch} (CUDA graph replay): {_ms(s)}", flush=True)
            section_s["forward_cuda_graph_s"] = time.perf_counter() - t_section

        compiled = None
        if args.compile and section("compile"):
            t_section = time.perf_counter()
            compiled, cut = compile_section(bench if finals is not None else None, unet, torch, device, dtype, config,
                                            measure_order(args.compile_batches), args, resolution_px=resolution_px, deadline=deadline,
                                            eager_batched=finals["batched"] if finals is not None else None,
                                            outside=(break_bench, break_finals["batched"]) if graph_breaks and break_finals else None)
            section_s["compile"] = time.perf_counter() - t_section
            if cut:
                sections_truncated.append("compile")
        if graph_breaks is not None and "error" not in graph_breaks and "outside" not in graph_breaks:
            graph_breaks["outside"] = (compiled or {}).pop("outside", None) or {
                "how": OUTSIDE_HOW, "skipped": "not run: --compile's section counts it and stopped before (--time-limit)"}
            _print_breaks(graph_breaks, only=("outside",))

    ratio = forward["1"]["median"] / forward["2"]["median"] if "1" in forward and "2" in forward else None
    graphed_ok = graphed or {}
    result = {
        "script": "benchmarks/bench_gpu_unet.py",
        "dry": bool(args.dry),
        "measurement": ("DRY RUN: tests the script on CPU with a tiny UNet; not a measurement of anything" if args.dry
                        else "measured"),
        "config": label,
        "unet_config": {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()},
        "unet_params": params,
        "weights": "random (torch.manual_seed(0), diffusers' default init)",
        "device": str(device),
        "device_name": device_name(torch, device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "diffusers": diffusers.__version__,
        "python": platform.python_version(),
        "dtype": args.dtype,
        "date": _dt.date.today().isoformat(),
        "datetime_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "resolution_px": [resolution_px, resolution_px],
        "latents": [config["in_channels"], resolution_px // 8, resolution_px // 8],
        "text_seq_len": TEXT_SEQ_LEN,
        "attention_processor": type(next(iter(unet.attn_processors.values()))).__name__,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "batches": order,
        "forward_s": forward,
        "step_s": step,
        "forward_over_batch2": ({b: s["median"] / forward["2"]["median"] for b, s in forward.items()} if "2" in forward else None),
        "forward_cuda_graph_s": graphed,
        "cuda_graph_batch1_over_batch2": (graphed_ok["1"]["median"] / graphed_ok["2"]["median"]
                                          if "median" in graphed_ok.get("1", {}) and "median" in graphed_ok.get("2", {}) else None),
        "scheduler": {"class": "EulerDiscreteScheduler", "num_steps": NUM_STEPS, **SDXL_SCHEDULER},
        "batch1_over_batch2": ratio,
        "batch4_over_batch2": forward["4"]["median"] / forward["2"]["median"] if "4" in forward and "2" in forward else None,
        "output_finite": finite,
        "batched_plan": plan,
        "graph_breaks": graph_breaks,
        "compile": compiled,
        "build_s": build_s,
        "peak_memory_eager_bytes": peak_eager,
        "peak_memory_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
        "time_limit_s": args.time_limit,
        "truncated": truncated,
        "sections_truncated": sorted(set(sections_truncated)),
        "skipped": skipped,
        "section_s": section_s,
        "elapsed_s": elapsed(),
    }
    if ratio is not None:
        print(f"batch 1 / batch 2 = {ratio:.3f}: a CFG split's half forward costs {ratio:.3f} of the guided forward "
              f"(ideal split speedup of the forward {1 / ratio:.2f}x)", flush=True)
    if result["cuda_graph_batch1_over_batch2"] is not None:
        print(f"CUDA graph replay: batch 1 / batch 2 = {result['cuda_graph_batch1_over_batch2']:.3f}", flush=True)
    if truncated or sections_truncated:
        cut = ["forwards/step"] * truncated + sorted(set(sections_truncated))
        print(f"truncated: --time-limit {args.time_limit:g} s reached ({', '.join(cut)})", flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = run(args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out} ({result['elapsed_s']:.1f} s){' — DRY RUN, not a measurement' if args.dry else ''}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

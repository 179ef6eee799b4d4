"""GPU evidence for the SDXL profile's compute: forward time of an SDXL-sized UNet at batch 1, 2 and 4, and one scheduler step.

What it measures (random weights, no download; standalone: needs only torch and diffusers):

- ``UNet2DConditionModel`` built from SDXL base 1.0's ``unet/config.json`` written out below (``SDXL_UNET``,
  about 2.57 B parameters), in fp16, at 1024x1024: latents (B, 4, 128, 128), text states (B, 77, 2048),
  ``added_cond_kwargs`` text_embeds (B, 1280) and time_ids (B, 6) — the call ``StableDiffusionXLPipeline``
  makes each step (B = 2 with classifier-free guidance: unconditional and conditional halves);
- its forward at batch 1, 2 and 4 (in that order: 2, 1, 4): ``--warmup`` untimed runs, then ``--repeats``
  timed runs, each ``torch.cuda.synchronize()``-bracketed; the median, min and max seconds;
- one ``EulerDiscreteScheduler.step`` (SDXL's scheduler config, 50 steps) on (1, 4, 128, 128) latents, in the
  steady state of a run (the schedule's index already set, as in every step after the first);
- ``batch1_over_batch2``: a batch-1 forward over a batch-2 forward, the ratio that prices a CFG split (one rank
  computing one half instead of the whole guided batch) on that device.

It prints the summary and writes a JSON (``--out``, default ``gpu_unet.json``). ``profiles/make_sdxl.py
--compute FILE`` turns that JSON into the shipped SDXL profile's compute part (labelled measured, with the
device): forward_s[k-1] = k x the batch-2 median (the executor runs a rank's offsets one after another),
half_forward_s = the batch-1 median, step_s = the step median.

The shipped runs (one H200, JSONs in ``profiles/measurements/``, logs in ``benchmarks/results/gpu/``)
took 20-31 s each, peak GPU memory 9.6 GiB. ``--cuda-graph`` adds each batch size replayed from a
captured CUDA graph (the forward without per-kernel launch cost) to the JSON. ``--time-limit``
(default 240 s from the script's start) is a guard: past it, no further timed run starts (a measurement already
started keeps at least one), a batch size not yet started is skipped (absent from the JSON), and the JSON says
``"truncated": true``. GPU memory: about 5 GB of
fp16 weights (10 GB while the fp32 build is cast), plus activations at batch 4.

On a GPU (the device machine of this workplace: Python 3.12 with torch, huggingface_hub, safetensors, numpy,
regex, requests, Pillow, but no diffusers: carry its pure-Python wheel; on Python >= 3.8 diffusers does not
import its declared importlib_metadata). Once, here, in the repo root:

    echo /.whl/ >> .git/info/exclude
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl diffusers==0.42.1

then the run (carry [".whl"], timeout_s 300)::

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl \
      && export PYTHONPATH=/tmp/site || exit; \
    PYTHONUNBUFFERED=1 python3 benchmarks/bench_gpu_unet.py --cuda-graph --out $OUT/gpu_unet_sdxl.json

Anywhere else with torch (CUDA) and diffusers: ``python benchmarks/bench_gpu_unet.py --out gpu_unet_sdxl.json``.

The shipped profile's compute is the median of the runs in ``profiles/measurements/sdxl_unet_*.json``
(``python -m parastep.profiles.make_sdxl`` rebuilds it from them). To splice runs of another device (several runs
of one device: per batch size the median of their medians)::

    python -m parastep.profiles.make_sdxl --compute run1.json run2.json run3.json --out profiles/sdxl.yaml

(the module form: ``python profiles/make_sdxl.py`` cannot resolve the package's relative imports); for the shipped
file, put the JSONs in ``profiles/measurements/`` instead, so the profile stays reproducible from its inputs.

Tests (CPU, seconds): ``python benchmarks/bench_gpu_unet.py --tiny --device cpu --repeats 2 --out FILE``.
"""

from __future__ import annotations

import argparse
import copy
import datetime as _dt
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

_T0 = time.monotonic()

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

# stabilityai/stable-diffusion-xl-base-1.0, scheduler/scheduler_config.json (the pipeline's default scheduler).
SDXL_SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                      prediction_type="epsilon", interpolation_type="linear", use_karras_sigmas=False,
                      timestep_spacing="leading", steps_offset=1)

TEXT_SEQ_LEN = 77         # CLIP tokenizer's max length
TIME_IDS = 6              # original size (2), crop top-left (2), target size (2)
NUM_STEPS = 50            # StableDiffusionXLPipeline's default num_inference_steps
BATCHES = (2, 1, 4)       # batch 2 first: one CFG step, the number the profile needs most
DTYPES = ("float16", "bfloat16", "float32")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", help="torch device (default: cuda)")
    ap.add_argument("--dtype", default="float16", choices=DTYPES, help="weights and activations (default: float16, as the SDXL pipeline runs)")
    ap.add_argument("--repeats", type=int, default=20, help="timed runs per batch size and for the step (default 20)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed runs before each batch size's timed runs (default 3)")
    ap.add_argument("--out", default="gpu_unet.json", help="JSON to write (default: gpu_unet.json)")
    ap.add_argument("--cuda-graph", action="store_true",
                    help="also time each batch size's forward replayed from a captured CUDA graph (no per-kernel launch "
                         "cost: what a deployment with torch.compile(mode='reduce-overhead') would see); CUDA only")
    ap.add_argument("--tiny", action="store_true", help="a tiny UNet of the same structure (CPU, seconds; for tests)")
    ap.add_argument("--time-limit", type=float, default=240.0,
                    help="seconds from the script's start after which no further timed run starts (default 240)")
    args = ap.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0:
        ap.error("--repeats must be >= 1 and --warmup >= 0")
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
    return dict(sample=randn(batch, config["in_channels"], lat, lat),
                timestep=torch.tensor(500.0, device=device),
                encoder_hidden_states=randn(batch, TEXT_SEQ_LEN, config["cross_attention_dim"]),
                added_cond_kwargs={"text_embeds": randn(batch, text_embeds_dim), "time_ids": time_ids})


def time_forward(unet, torch, device, dtype, config: dict, batch: int, *, resolution_px: int, warmup: int, repeats: int,
                 deadline: float) -> tuple[list[float], bool, bool]:
    """(seconds of each timed forward, truncated, output finite) at ``batch``."""
    inputs = unet_inputs(torch, device, dtype, config, batch, resolution_px=resolution_px)
    out = unet(**inputs, return_dict=False)[0]
    assert out.shape == inputs["sample"].shape, (out.shape, inputs["sample"].shape)
    finite = bool(torch.isfinite(out).all())
    runs, cut = timed(lambda: unet(**inputs, return_dict=False), torch=torch, device=device,
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
            unet(**inputs, return_dict=False)
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        unet(**inputs, return_dict=False)
    return timed(graph.replay, torch=torch, device=device, warmup=warmup, repeats=repeats, deadline=deadline)


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


def run(args: argparse.Namespace) -> dict:
    import diffusers
    import torch

    diffusers.utils.logging.set_verbosity_error()   # "modules that should be kept in float32: []" on the cast
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: CUDA is not available here (torch {torch.__version__}); use a GPU machine or --tiny --device cpu")
    dtype = getattr(torch, args.dtype)
    config = TINY_UNET if args.tiny else SDXL_UNET
    resolution_px = 8 * config["sample_size"]
    deadline = args.time_limit

    t = time.perf_counter()
    unet = build_unet(torch, device, dtype, config)
    sync(torch, device)
    build_s = time.perf_counter() - t
    params = sum(p.numel() for p in unet.parameters())
    print(f"UNet2DConditionModel ({'tiny' if args.tiny else 'SDXL base 1.0'} config, random weights): "
          f"{params / 1e9:.3f} B parameters, {args.dtype} on {device_name(torch, device)}; built in {build_s:.1f} s", flush=True)

    forward: dict[str, dict] = {}
    truncated = False
    finite = True
    with torch.inference_mode():
        for batch in BATCHES:
            if forward and elapsed() > deadline:
                print(f"batch {batch}: skipped, past --time-limit {deadline:g} s", flush=True)
                truncated = True
                continue
            runs, cut, ok = time_forward(unet, torch, device, dtype, config, batch, resolution_px=resolution_px,
                                         warmup=args.warmup, repeats=args.repeats, deadline=deadline)
            truncated, finite = truncated or cut, finite and ok
            forward[str(batch)] = s = stats(runs)
            print(f"forward batch {batch}: median {s['median'] * 1e3:.2f} ms (min {s['min'] * 1e3:.2f}, max {s['max'] * 1e3:.2f}; "
                  f"{len(runs)} runs)", flush=True)
        graphed: dict[str, dict] = {}
        for batch in BATCHES if args.cuda_graph and device.type == "cuda" else ():
            if elapsed() > deadline:
                truncated = True
                continue
            try:
                runs, cut = time_forward_graph(unet, torch, device, dtype, config, batch, resolution_px=resolution_px,
                                               warmup=args.warmup, repeats=args.repeats, deadline=deadline)
            except Exception as exc:        # capture can fail on a diffusers version that syncs inside forward
                graphed[str(batch)] = {"error": f"{type(exc).__name__}: {exc}"}
                print(f"forward batch {batch} (CUDA graph): capture failed: {type(exc).__name__}: {exc}", flush=True)
                continue
            truncated = truncated or cut
            graphed[str(batch)] = s = stats(runs)
            print(f"forward batch {batch} (CUDA graph replay): median {s['median'] * 1e3:.2f} ms (min {s['min'] * 1e3:.2f}, "
                  f"max {s['max'] * 1e3:.2f}; {len(runs)} runs)", flush=True)
        runs, cut = time_scheduler_step(torch, device, dtype, config, resolution_px=resolution_px,
                                        warmup=args.warmup, repeats=args.repeats, deadline=deadline)
    truncated = truncated or cut
    step = stats(runs)
    print(f"EulerDiscreteScheduler.step (1, {config['in_channels']}, {resolution_px // 8}, {resolution_px // 8}): "
          f"median {step['median'] * 1e3:.3f} ms (min {step['min'] * 1e3:.3f}, max {step['max'] * 1e3:.3f})", flush=True)

    ratio = forward["1"]["median"] / forward["2"]["median"] if "1" in forward and "2" in forward else None
    result = {
        "script": "benchmarks/bench_gpu_unet.py",
        "config": "tiny" if args.tiny else "sdxl-base-1.0",
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
        "forward_s": forward,
        "step_s": step,
        "forward_cuda_graph_s": graphed if args.cuda_graph else None,
        "cuda_graph_batch1_over_batch2": (graphed["1"]["median"] / graphed["2"]["median"]
                                          if "median" in graphed.get("1", {}) and "median" in graphed.get("2", {}) else None),
        "scheduler": {"class": "EulerDiscreteScheduler", "num_steps": NUM_STEPS, **SDXL_SCHEDULER},
        "batch1_over_batch2": ratio,
        "batch4_over_batch2": forward["4"]["median"] / forward["2"]["median"] if "4" in forward and "2" in forward else None,
        "output_finite": finite,
        "build_s": build_s,
        "peak_memory_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
        "time_limit_s": args.time_limit,
        "truncated": truncated,
        "elapsed_s": elapsed(),
    }
    if ratio is not None:
        print(f"batch 1 / batch 2 = {ratio:.3f}: a CFG split's half forward costs {ratio:.3f} of the guided forward "
              f"(ideal split speedup of the forward {1 / ratio:.2f}x)", flush=True)
    if result["cuda_graph_batch1_over_batch2"] is not None:
        print(f"CUDA graph replay: batch 1 / batch 2 = {result['cuda_graph_batch1_over_batch2']:.3f}", flush=True)
    if truncated:
        print(f"truncated: --time-limit {args.time_limit:g} s reached", flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    result = run(args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out} ({result['elapsed_s']:.1f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Generate the shipped ``profiles/sdxl.yaml`` (reproducible: ``python -m parastep.profiles.make_sdxl``).

SDXL base 1.0 (stabilityai/stable-diffusion-xl-base-1.0) at 1024x1024 with its default
scheduler (EulerDiscreteScheduler), 50 steps and guidance 5.0 — the defaults of diffusers'
``StableDiffusionXLPipeline.__call__`` (``num_inference_steps=50``, ``guidance_scale=5.0``).

No SDXL weights exist here, so only the compute part is measured by us, on a GPU without weights:

- compute (the shipped file): *measured* on one NVIDIA H200 by ``benchmarks/bench_gpu_unet.py`` (an SDXL-sized
  UNet with random weights, fp16, 1024x1024, eager as ``parastep exec`` runs it; three runs in
  ``profiles/measurements/``, per batch size the median of the runs' medians): forward_s[k-1] = k x the
  batch-2 forward (one CFG step; a rank runs its offsets one after another), batched_forward_s[k-1] = the
  batch-2k forward (BatchStep: one call on k offsets' guided inputs; measured at every k the runs have, a k
  between two measured ones interpolated linearly and said so in the notes; the shipped runs have batches 1, 2,
  4, so k = 1, 2), half_forward_s = the batch-1 forward, step_s = one EulerDiscreteScheduler.step;
  step_overhead_s = 0 (not measured). Measured there: an
  eager forward is launch-bound at batch 1 and 2 (batch 1 / batch 2 = 0.94; 0.64 replayed from a CUDA graph),
  so a CFG split saves little in eager mode. ``--compute FILE...`` splices other runs of one device (the
  profile's name names it), ``--prior-compute`` restores the earlier prior: a *published* end-to-end H100
  latency divided by the step count, and ``HALF_FORWARD_RATIO`` x that per-step forward for a half forward
  (an assumption, ``priors.half_forward_rule``);
- comm: the ``nvlink`` interconnect preset (``profiles/interconnects.py``), its CFG pair swap included;
- deviation, reuse deviation, propagation, similarity: the prior rule of ``profiles/priors.py``, with the
  deviation tables floored by the bundled digits model's *measured* per-sample window errors (the digits
  floor, ``priors.floor_params``; ``--digits PATH`` names the measured digits profile, default the shipped
  ``digits.yaml``; while that has no ``output_errors`` the constants already stored in ``sdxl.yaml`` are kept);
- no calibration (it needs verification runs with real weights).

``parastep profile --model sdxl`` on a machine with the weights and GPUs replaces all of it.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
from pathlib import Path
from typing import Optional

from .interconnects import comm_for, describe
from .io import SHIPPED_DIR, load_profile, write_profile
from .model import Compute, Measured, Prior, Profile, Provenances
from .priors import (
    FLOOR, deviation_tables, floor_params, half_forward_prior, half_forward_rule, propagation, provenance, similarity,
)

NUM_STEPS = 50
MAX_WINDOW = 16           # covers --gpus 8 (and the fixed plan); larger G is re-derived by the planner
COMM_WORLD_SIZE = 64      # exchange entries for g = 2..64
RESOLUTION_PX = (1024, 1024)
GUIDANCE_SCALE = 5.0

# Shapes: SDXL's VAE has 4 down-block levels -> spatial factor 2**3 = 8; the UNet works on
# 4 latent channels; pipelines run the UNet in fp16 (2 bytes). The *guided* output (after the
# CFG combine) has batch 1.
VAE_SCALE_FACTOR = 8
LATENT_CHANNELS = 4
BYTES_PER_ELEMENT = 2     # float16

# Published measurement: Stability AI / NVIDIA, model card of stabilityai/stable-diffusion-xl-1.0-tensorrt,
# "Timings for 30 steps at 1024x1024": H100, Baseline (non-optimized) 2496 ms (TensorRT: 1471 ms).
PUBLISHED_URL = "https://huggingface.co/stabilityai/stable-diffusion-xl-1.0-tensorrt"
PUBLISHED_GPU = "NVIDIA H100"
PUBLISHED_TOTAL_S = 2.496
PUBLISHED_STEPS = 30
FORWARD_OFFSETS = 8       # forward_s for k = 1..8 offsets on one rank

# One EulerDiscreteScheduler.step on a 1x4x128x128 fp16 latent: a handful of elementwise CUDA
# kernels (~10 us each, launch-bound) plus Python bookkeeping: ~0.2 ms. Not measured.
STEP_S = 2e-4

# CFG split: the SDXL UNet on one CFG half (batch 1 instead of 2) at 1024x1024 in fp16 on an H100. An
# *assumption*, not measured (no GPU here): at 128x128 latents the UNet is compute-bound on a large GPU,
# so half the batch is about half the FLOPs and time; 0.02 above 0.5 for what does not halve (kernel
# launches, weight reads, lower occupancy at batch 1). Measured on an H200 since (SHIPPED_COMPUTE): 0.94 eager.
HALF_FORWARD_RATIO = 0.52
HALF_FORWARD_WHY = ("assumption, not measured: at 1024x1024 (128x128 fp16 latents) the SDXL UNet is compute-bound on a "
                    "large GPU, so half the batch is about half the time, plus 0.02 for launches and weight reads that do "
                    "not halve; measure it with a GPU")


def output_bytes(*, height_px: int, width_px: int) -> int:
    """Bytes of one guided output: 1 x 4 x (H/8) x (W/8) fp16."""
    return LATENT_CHANNELS * (height_px // VAE_SCALE_FACTOR) * (width_px // VAE_SCALE_FACTOR) * BYTES_PER_ELEMENT


_DIGITS_SOURCE = re.compile(r"digits floor from measured profile '[^']*' \(sha256 [0-9a-f]{64}\)")


def digits_floor(digits_path: Optional[str] = None) -> tuple[dict[str, float], str]:
    """(floor params, where they come from): from a measured digits profile with ``output_errors``;
    without one (the shipped digits.yaml not yet regenerated), the constants stored in the shipped sdxl.yaml."""
    path = Path(digits_path) if digits_path else Path(SHIPPED_DIR) / "digits.yaml"
    digits, sha = load_profile(path)
    if digits.output_errors is not None:
        return floor_params(digits), f"digits floor from measured profile '{digits.name}' (sha256 {sha})"
    if digits_path:
        raise ValueError(f"{path}: profile '{digits.name}' has no output_errors; pass a measured digits profile with per-sample output errors")
    stored = load_profile(Path(SHIPPED_DIR) / "sdxl.yaml")[0].provenance.deviation
    params = {k: v for k, v in stored.params.items() if k.startswith(FLOOR)}
    m = _DIGITS_SOURCE.search(stored.rule)
    if not params or m is None:
        raise ValueError(f"{path} has no output_errors and sdxl.yaml stores no digits floor; pass --digits PATH")
    return params, m.group(0)


def prior_compute() -> tuple[Compute, Prior]:
    """The compute part without a measurement: the published latency per step, the half-forward prior."""
    per_step_s = PUBLISHED_TOTAL_S / PUBLISHED_STEPS
    half_rule, half_params = half_forward_rule(HALF_FORWARD_RATIO, why=HALF_FORWARD_WHY)
    compute_prov = Prior(
        rule="published end-to-end latency / steps; forward_s[k-1] = k * per-step time (no batching gain assumed); "
             f"step_s = {STEP_S * 1e3:g} ms (estimate: a few launch-bound elementwise kernels); {half_rule}",
        reference=(f"{PUBLISHED_URL} : 'Timings for 30 steps at 1024x1024', {PUBLISHED_GPU}, Baseline (non-optimized) "
                   f"{PUBLISHED_TOTAL_S * 1e3:g} ms -> {per_step_s * 1e3:.1f} ms per step. The end-to-end figure includes "
                   "text encoding and VAE decode, so the per-step forward is an upper bound."),
        params={"published_total_s": PUBLISHED_TOTAL_S, "published_steps": float(PUBLISHED_STEPS),
                "per_step_s": per_step_s, "step_s": STEP_S, **half_params},
    )
    compute = Compute(forward_s=[k * per_step_s for k in range(1, FORWARD_OFFSETS + 1)], step_s=STEP_S, step_overhead_s=0.0,
                      half_forward_s=half_forward_prior(per_step_s, ratio=HALF_FORWARD_RATIO))
    return compute, compute_prov


# What benchmarks/bench_gpu_unet.py must have measured for the shipped SDXL profile (``any_config`` lifts it: tests).
BENCH_CONFIG = "sdxl-base-1.0"
BENCH_DTYPE = "float16"


def _ms(s: dict) -> str:
    return f"{s['median'] * 1e3:.2f} ms (min {s['min'] * 1e3:.2f}, max {s['max'] * 1e3:.2f}, {len(s.get('runs', []))} runs)"


# The shipped profile's compute: three runs of benchmarks/bench_gpu_unet.py on one NVIDIA H200 (run 1 on one
# machine, runs 2 and 3 back to back on another); their JSONs here, their logs in benchmarks/results/gpu/.
MEASUREMENTS_DIR = Path(__file__).resolve().parent / "measurements"
SHIPPED_COMPUTE = tuple(sorted(MEASUREMENTS_DIR.glob("sdxl_unet_*.json")))


def _median_of(runs: list[dict], key: str, batch: str) -> Optional[float]:
    vals = [float(r[key][batch]["median"]) for r in runs if isinstance(r.get(key), dict) and "median" in r[key].get(batch, {})]
    return statistics.median(vals) if vals else None


class _DryRun(Exception):
    """A bench_gpu_unet.py JSON written with --dry."""


def batch_curve(runs: list[dict]) -> tuple[list[float], list[int], list[int]]:
    """(batched_forward_s for k = 1..K, the k measured, the k interpolated) from the runs' eager forwards: one BatchStep
    call on k offsets' guided inputs is the batch-2k forward, per batch size the median of the runs' medians (runs
    that measured it); K = the largest k measured; a k between two measured ones is interpolated linearly between
    them (the profile's curve must be contiguous). Odd batch sizes (a CFG half, batch 1) are not offsets' calls."""
    sizes = sorted({int(b) for r in runs for b in r["forward_s"] if str(b).isdigit() and int(b) >= 2 and int(b) % 2 == 0})
    measured = {b // 2: _median_of(runs, "forward_s", str(b)) for b in sizes}
    measured = {k: v for k, v in measured.items() if v is not None}
    curve, interpolated = [], []
    for k in range(1, max(measured) + 1):
        if k in measured:
            curve.append(measured[k])
            continue
        lo, hi = max(j for j in measured if j < k), min(j for j in measured if j > k)
        curve.append(measured[lo] + (measured[hi] - measured[lo]) * (k - lo) / (hi - lo))
        interpolated.append(k)
    return curve, sorted(measured), interpolated


def _load_run(path: Path, *, any_config: bool) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(data, dict) and data.get("dry"):   # before anything else, whatever --any-config says
            raise _DryRun()
        fwd, step = data["forward_s"], data["step_s"]
        vals = (float(fwd["2"]["median"]), float(fwd["1"]["median"]), float(step["median"]))
        missing = [k for k in ("device_name", "date") if not isinstance(data.get(k), str)]
        if missing:
            raise KeyError(", ".join(missing))
    except _DryRun:
        raise ValueError(f"{path}: a --dry run of benchmarks/bench_gpu_unet.py (CPU, tiny UNet: it tests the script and measures "
                         "nothing); run the script on a GPU without --dry") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: not a benchmarks/bench_gpu_unet.py result with batch 1 and 2 forwards and a step time ({exc!r})") from None
    got = (data.get("config"), data.get("dtype"), list(data.get("resolution_px") or []))
    want = (BENCH_CONFIG, BENCH_DTYPE, list(RESOLUTION_PX))
    if got != want and not any_config:
        raise ValueError(f"{path}: measured config, dtype, resolution {got}; the SDXL profile needs {want} "
                         "(run benchmarks/bench_gpu_unet.py without --tiny/--dtype)")
    if not all(math.isfinite(v) and v > 0 for v in vals):
        raise ValueError(f"{path}: forward and step times must be positive finite seconds")
    if data.get("truncated"):
        raise ValueError(f"{path}: truncated by the script's --time-limit; re-run it with a longer limit")
    return data


def _batch_keys(run: dict) -> list[str]:
    """The run's measured batch sizes: 2 (one CFG step) first, then ascending."""
    return sorted((b for b in run["forward_s"] if str(b).isdigit()), key=lambda b: (b != "2", int(b)))


def _curve_note(curve: list[float], ks: list[int], guessed: list[int]) -> str:
    measured = ", ".join(f"k = {k} (batch {2 * k}) {curve[k - 1] * 1e3:.2f} ms" for k in ks)
    words = (f"batched_forward_s[k-1] = one BatchStep call on k offsets' guided inputs = the batch-2k forward, measured "
             f"on this device (eager, median of the runs' medians): {measured}")
    if guessed:
        words += (f"; k = {', '.join(map(str, guessed))} not measured: interpolated linearly between the measured k on either "
                  f"side ({', '.join(f'{curve[k - 1] * 1e3:.2f} ms' for k in guessed)})")
    return words + f"; beyond k = {len(curve)} the planner extends the curve linearly in its last entry"


def measured_compute(paths, *, any_config: bool = False) -> tuple[Compute, Measured]:
    """The compute part from one or more ``benchmarks/bench_gpu_unet.py`` JSONs of one device: per batch size the
    median over runs of each run's median (one run on this kind of machine varies by 1.6x in eager mode: launch-bound
    at batch 1 and 2), forward_s[k-1] = k x the batch-2 value, batched_forward_s = ``batch_curve`` (the batch-2k
    values), half_forward_s = the batch-1 value, step_s = the scheduler step's. Eager forwards (what ``parastep
    exec`` runs); CUDA-graph replays, where measured, go to the notes. A ``--dry`` JSON is refused."""
    paths = [Path(p) for p in ([paths] if isinstance(paths, (str, Path)) else paths)]
    if not paths:
        raise ValueError("--compute needs at least one benchmarks/bench_gpu_unet.py JSON")
    runs = [_load_run(p, any_config=any_config) for p in paths]
    devices = sorted({r["device_name"] for r in runs})
    if len(devices) > 1:
        raise ValueError(f"--compute: runs of different devices {devices}; pass runs of one device")
    whole, half = _median_of(runs, "forward_s", "2"), _median_of(runs, "forward_s", "1")
    step_s = statistics.median(float(r["step_s"]["median"]) for r in runs)
    b4 = _median_of(runs, "forward_s", "4")
    g1, g2 = _median_of(runs, "forward_cuda_graph_s", "1"), _median_of(runs, "forward_cuda_graph_s", "2")
    first = runs[0]
    curve, ks, guessed = batch_curve(runs)
    per_run = "; ".join(f"{p.name}: " + ", ".join(f"batch {b} {_ms(r['forward_s'][b])}" for b in _batch_keys(r))
                        for p, r in zip(paths, runs))
    graph = (f"; CUDA-graph replay (not what exec runs; no per-kernel launch cost): batch 2 {g2 * 1e3:.2f} ms, batch 1 "
             f"{g1 * 1e3:.2f} ms, batch 1 / batch 2 = {g1 / g2:.4f}" if g1 and g2 else "")
    notes = (f"benchmarks/bench_gpu_unet.py, {len(runs)} run(s) ({first.get('config')} UNet2DConditionModel config, random "
             f"weights, {first.get('dtype')}, {'x'.join(map(str, first.get('resolution_px') or []))} px, latents "
             f"{first.get('latents')}, {first.get('attention_processor')}; {first.get('warmup')} warm-ups then medians, eager "
             f"forwards): {per_run}. Across runs (median of the runs' medians): batch 2 {whole * 1e3:.2f} ms, batch 1 "
             f"{half * 1e3:.2f} ms" + (f", batch 4 {b4 * 1e3:.2f} ms" if b4 else "") + "; forward_s[k-1] = k x batch 2 (one "
             f"CFG step per offset, a rank's offsets run one after another); {_curve_note(curve, ks, guessed)}; "
             f"half_forward_s = batch 1: batch 1 / batch 2 = "
             f"{half / whole:.4f} prices a CFG split on this device{graph}; step_s = EulerDiscreteScheduler.step median "
             f"{step_s * 1e3:.3f} ms on 1 x {'x'.join(map(str, (first.get('latents') or [])))} latents; step_overhead_s = 0, "
             "not measured (pipeline bookkeeping; text encoding and VAE decode are outside the steps)")
    packages = {k: str(first[k]) for k in ("torch", "diffusers", "cuda", "python") if first.get(k)}
    compute = Compute(forward_s=[k * whole for k in range(1, FORWARD_OFFSETS + 1)], step_s=step_s, step_overhead_s=0.0,
                      half_forward_s=half, batched_forward_s=curve)
    return compute, Measured(device=devices[0], date=max(str(r["date"]) for r in runs), packages=packages, notes=notes)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def build_profile(digits_path: Optional[str] = None, compute_paths=SHIPPED_COMPUTE, *, any_config: bool = False) -> Profile:
    """The SDXL profile; ``compute_paths`` (default: the shipped H200 measurements) names bench_gpu_unet.py JSONs,
    an empty sequence or None the published prior compute."""
    floor, floor_source = digits_floor(digits_path)
    dev, reuse = deviation_tables(num_steps=NUM_STEPS, max_window=MAX_WINDOW, params=floor)
    if not compute_paths:
        compute, compute_prov = prior_compute()
        hardware = "h100"
    else:
        compute, compute_prov = measured_compute(compute_paths, any_config=any_config)
        hardware = f"{_slug(compute_prov.device)}-measured"
    comm_prov = Prior(rule="interconnect preset 'nvlink' (ring all-gather alpha-beta model; CFG pair swap: alpha + bytes / beta)",
                      reference=describe("nvlink"))
    no_weights = "no SDXL weights are available here, so this cannot be measured; run 'parastep profile --model sdxl' where they are"
    return Profile(
        name=f"sdxl-base-1.0-1024-euler-50-{hardware}-nvlink-prior",
        model="sdxl",
        resolution_px=RESOLUTION_PX,
        scheduler="EulerDiscreteScheduler",
        guidance_scale=GUIDANCE_SCALE,
        num_steps=NUM_STEPS,
        max_window=MAX_WINDOW,
        output_bytes=output_bytes(height_px=RESOLUTION_PX[0], width_px=RESOLUTION_PX[1]),
        provenance=Provenances(
            deviation=provenance(floor, what=f"{floor_source}; deviation and reuse_deviation tables; {no_weights}; no calibration either "
                                      "(deviation -> PSNR needs verification runs with real weights), so --min-psnr is unavailable"),
            propagation=provenance(what=f"propagation gain; {no_weights}"),
            similarity=provenance(what=f"adjacent-step similarity; {no_weights}"),
            compute=compute_prov,
            comm=comm_prov,
            calibration=None,
        ),
        deviation=dev,
        reuse_deviation=reuse,
        propagation=propagation(num_steps=NUM_STEPS),
        similarity=similarity(num_steps=NUM_STEPS),
        compute=compute,
        comm=comm_for("nvlink", world_size=COMM_WORLD_SIZE),
        calibration=None,
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m parastep.profiles.make_sdxl", description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(Path(SHIPPED_DIR) / "sdxl.yaml"), help="where to write (default: the shipped file)")
    ap.add_argument("--digits", default=None, help="measured digits profile with output_errors for the floor (default: the shipped digits.yaml)")
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--compute", nargs="+", default=None, metavar="FILE",
                     help="JSONs of benchmarks/bench_gpu_unet.py runs on one device: the compute part becomes measured there, "
                          "per batch size the median of the runs' medians (default: the shipped H200 runs in profiles/measurements/)")
    src.add_argument("--prior-compute", action="store_true",
                     help="the published-latency prior instead of a measurement (no GPU measurement needed)")
    ap.add_argument("--any-config", action="store_true",
                    help="with --compute: accept a measurement of another config, dtype or resolution (--tiny; tests only)")
    args = ap.parse_args(argv)
    try:
        compute = () if args.prior_compute else (args.compute or SHIPPED_COMPUTE)
        profile = build_profile(args.digits, compute, any_config=args.any_config)
    except ValueError as exc:
        ap.error(str(exc))
    write_profile(profile, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

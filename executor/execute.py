"""``parastep exec``'s run: a schedule on ``world_size`` processes (docs/design.md §4, §8).

Every rank loads the pipeline (``executor.registry.load_pipeline``), wraps it with
``apply_parastep`` (a ``DistExchange`` over the world) and calls it with the same seed; rank 0
writes the images (PNG) and ``report.json`` into ``--out``, atomically, at the very end
(``executor.results``: an earlier exec/evaluate run's outputs there are removed first, with a note;
other files stay; ``outputs.check_out_dir`` refuses an --out it could not write before any rank
starts):

    world_size, num_steps, latency_s, bytes_exchanged (measured, sum over ranks of bytes
    received), bytes_exchanged_schedule (schedule.totals), forwards_per_rank,
    bytes_received_per_rank, windows: [{start, kind, size, seconds, bytes, exchange_s,
    snapshot_s, replay_s, swap_s, half_forwards, calls, batch_fallbacks}] (rank 0's; CFG-split swaps
    are inside exchange_s too; calls: rank 0's denoiser calls; batch_fallbacks: batched offsets that ran
    as calls of their own, summed over ranks), batch_fallbacks (their total), images, repeats,
    warmup_runs, latency_spread_s: {median, min, max, runs}, and with --reference:
    reference: {latency_s, speedup, psnr_db, ssim, identical, latency_spread_s}; predicted: {speedup,
    psnr_db} (the schedule's own predictions, null where it states none; the summary line prints
    them beside the measurement).

``latency_s`` is rank 0's wall time of the whole pipeline call (prompt encoding and VAE decode
included), started after a barrier. The reference is the plain pipeline (hooks removed), same
seed, on rank 0 alone, after each parallel run. PSNR is ``null`` (and ``identical`` true) when
the images are bit-identical. Ranks other than 0 skip the VAE decode (``output_type="latent"``).

Timing (``--repeats N``, default 1): with ``--reference`` or N > 1, one untimed warm-up run of
each side comes first; then N timed runs of each side, alternating (parallel, then sequential on
rank 0 with the hooks removed while the other ranks wait), so that load changes on a shared machine
hit both sides alike; ``latency_s`` (both sides) is the median and ``speedup`` the ratio of the medians; ``latency_spread_s`` keeps every run's time. Windows
and forwards are the last parallel run's. ``exec --reference`` ends with one human line on
stderr (ranks, latency vs sequential, speedup, PSNR, SSIM); report.json is for tools.

Conditioning comes from the pipeline's own signature (``executor.inputs``, the one home):
``--prompt`` or ``--class-label`` (DiT: index or label name) per sample, nothing for an
unconditional pipeline (``batch_size``), ``--image``/``--strength`` for img2img, ``--height``/
``--width``/``--num-frames``; flags the pipeline cannot take, and a size, frame count or strength
other than the schedule's, are refused in one line before loading or spawning (the schedule's
values are the defaults). report.json adds class_labels, image, strength, resolution_px,
num_frames and frames (per video; null for images).

Test hook: ``PARASTEP_TEST_EXIT_AT=RANK:STEP`` makes that rank ``os._exit(17)`` after that step.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from ..errors import UserError
from ..schedules.model import Schedule
from .inputs import Inputs, call_kwargs, check_inputs, check_strength_recorded, inference_steps_for
from .launch import RankContext
from .pipeline import prepare_pipeline
from .results import write_exec_outputs


@dataclass(frozen=True)
class ExecJob:
    schedule: Schedule
    schedule_path: str
    inputs: Inputs                  # --prompt / --class-label / --image / --strength / size, settled against the schedule
    seed: int
    out_dir: str
    reference: bool
    model_path: Optional[str]
    threads: int
    repeats: int = 1
    check_after_load: bool = False  # the pipeline class was not known before loading: check the inputs then

    @property
    def warmup(self) -> bool:
        """One untimed run of each side first, whenever timings are compared or repeated."""
        return self.reference or self.repeats > 1


def _prepare_pipeline(job: ExecJob, ctx: RankContext):
    return prepare_pipeline(job.schedule, model_path=job.model_path, device=ctx.device, announce=ctx.rank == 0)


def _images_np(images) -> Any:
    """Images (B, H, W, C) or videos (B, F, H, W, C) in [0, 1]: ``executor.media``."""
    from .media import to_numpy

    try:
        return to_numpy(images)
    except ValueError as exc:
        raise UserError(f"{exc}; report the pipeline class to parastep") from None


def _to_tensor(images_np):
    from .media import as_nchw

    return as_nchw(images_np)      # every image, or every frame of every video: PSNR/SSIM over all frames


def _test_exit_observer(rank: int):
    spec = os.environ.get("PARASTEP_TEST_EXIT_AT")
    if not spec:
        return None
    r, step = (int(v) for v in spec.split(":"))
    if r != rank:
        return None

    def observer(record) -> None:
        if record.step >= step:
            os._exit(17)

    return observer


def rank_worker(ctx: RankContext, job: ExecJob) -> None:
    """One rank of ``parastep exec`` (module level so that ``spawn`` can pickle it)."""
    import torch
    import torch.distributed as dist

    from .exchange import DistExchange
    from .hooks import ParaStepConfig, apply_parastep, remove_parastep

    schedule = job.schedule
    pipe = _prepare_pipeline(job, ctx)
    if job.check_after_load:
        check_inputs(pipe, job.inputs)
        check_strength_recorded(pipe, job.inputs, what="schedule")
    steps = inference_steps_for(pipe.scheduler, schedule.num_steps, strength=job.inputs.strength)
    config = ParaStepConfig(windows=schedule.windows, num_steps=schedule.num_steps, exchange=DistExchange(),
                            observer=_test_exit_observer(ctx.rank), sync_timing=ctx.device.type == "cuda")
    handle = apply_parastep(pipe, config)
    sync = torch.cuda.synchronize if ctx.device.type == "cuda" else (lambda: None)

    def parallel_run():
        kw = call_kwargs(pipe, schedule, inputs=job.inputs, seed=job.seed,
                         output_type="np" if ctx.rank == 0 else "latent", num_inference_steps=steps)
        dist.barrier()
        t0 = time.perf_counter()
        result = pipe(**kw)
        sync()
        pipe.set_progress_bar_config(disable=True)   # one progress bar per command, not one per run
        return time.perf_counter() - t0, result, kw

    def sequential_run():
        kw_ref = call_kwargs(pipe, schedule, inputs=job.inputs, seed=job.seed, output_type="np", num_inference_steps=steps)
        t0 = time.perf_counter()
        result = pipe(**kw_ref)
        sync()
        return time.perf_counter() - t0, result

    def sequential_round():
        """With --reference, rank 0 runs the plain pipeline (hooks removed) while the others wait,
        right after a parallel run: the two sides alternate, so a change in the machine's load
        hits both alike (a shared machine's timings drift by +-25 %)."""
        nonlocal handle
        remove_parastep(pipe)
        result = sequential_run() if ctx.rank == 0 else None
        dist.barrier()
        handle = apply_parastep(pipe, config)
        return result

    if job.warmup:
        parallel_run()
        if job.reference:
            sequential_round()
    times, ref_times, ref_out = [], [], None
    for _ in range(job.repeats):   # every run has the same seed, so the same output; the last one's is kept
        t, out, kw = parallel_run()
        times.append(t)
        if handle.steps_done != schedule.num_steps:
            raise UserError(f"the pipeline ran {handle.steps_done} scheduler steps, the schedule has {schedule.num_steps}; "
                            "re-plan with the pipeline's step count")
        mine = {"forwards": handle.forwards, "windows": [vars(w) for w in handle.stats()],
                "batch_fallbacks": list(handle.batch_fallback_reasons)}
        if job.reference:
            seq = sequential_round()
            if seq is not None:
                ref_times.append(seq[0])
                ref_out = seq[1]
    latency_s = statistics.median(times)
    gathered: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(gathered, mine)
    remove_parastep(pipe)
    if ctx.rank != 0:
        return
    images = _images_np(out.images if hasattr(out, "images") else out[0])
    wins0 = gathered[0]["windows"]
    bytes_per_rank = [sum(w["bytes_received"] for w in g["windows"]) for g in gathered]
    windows = []
    for k, w in enumerate(wins0):
        windows.append({"start": w["start"], "kind": w["kind"], "size": w["size"], "seconds": w["seconds"],
                        "bytes": sum(g["windows"][k]["bytes_received"] for g in gathered),
                        "exchange_s": w["exchange_s"], "snapshot_s": w["snapshot_s"], "replay_s": w["replay_s"],
                        "swap_s": w.get("swap_s", 0.0), "half_forwards": w.get("half_forwards", 0),
                        "calls": w.get("calls", 0), "batch_fallbacks": sum(g["windows"][k].get("batch_fallbacks", 0) for g in gathered)})
    report: dict[str, Any] = {
        "schedule": job.schedule_path, "model": schedule.model, "scheduler": type(pipe.scheduler).__name__,
        "world_size": ctx.world_size, "num_steps": schedule.num_steps, "device": str(ctx.device),
        "threads_per_rank": job.threads if ctx.device.type == "cpu" else None, "seed": job.seed,
        "prompts": kw.get("prompt"), "class_labels": kw.get("class_labels"), "image": job.inputs.image,
        "strength": job.inputs.strength, "resolution_px": list(job.inputs.resolution_px or ()) or None,
        "num_frames": job.inputs.num_frames, "latency_s": latency_s,
        "bytes_exchanged": sum(bytes_per_rank), "bytes_exchanged_schedule": schedule.totals.bytes_exchanged,
        "bytes_received_per_rank": bytes_per_rank, "forwards_per_rank": [g["forwards"] for g in gathered],
        "windows": windows, "repeats": job.repeats, "warmup_runs": int(job.warmup),
        "latency_spread_s": _spread(times),
        # the plan's own predictions, so the summary line can put the measurement beside them
        "predicted": {"speedup": schedule.latency.speedup if schedule.latency is not None else None,
                      "psnr_db": (schedule.quality.predicted_psnr.model_dump(mode="json")
                                  if schedule.quality is not None and schedule.quality.predicted_psnr is not None else None)},
    }
    fallbacks = [why for g in gathered for why in g.get("batch_fallbacks", [])]
    report["batch_fallbacks"] = sum(w["batch_fallbacks"] for w in windows)
    if fallbacks:
        print(f"parastep: note: {report['batch_fallbacks']} batched offset(s) ran as calls of their own (correct, but "
              f"slower than planned); first: {fallbacks[0]}", file=sys.stderr)
    if report["bytes_exchanged"] != schedule.totals.bytes_exchanged:
        print(f"parastep: note: {report['bytes_exchanged']} bytes were exchanged but the schedule implies "
              f"{schedule.totals.bytes_exchanged} (its output_bytes={schedule.output_bytes}"
              f"{'' if schedule.raw_half_bytes is None else f' or raw_half_bytes={schedule.raw_half_bytes}'} is for another batch size, "
              "resolution or dtype); the plan's exchange costs may be off", file=sys.stderr)
    if job.reference:
        from .metrics import psnr_db, ssim

        ref_latency_s = statistics.median(ref_times)
        ref_images = _images_np(ref_out.images if hasattr(ref_out, "images") else ref_out[0])
        a, b = _to_tensor(images), _to_tensor(ref_images)
        p = psnr_db(a, b)
        report["reference"] = {"latency_s": ref_latency_s, "speedup": ref_latency_s / latency_s,
                               "psnr_db": None if p == float("inf") else p, "ssim": ssim(a, b),
                               "identical": p == float("inf"), "latency_spread_s": _spread(ref_times)}
    write_exec_outputs(Path(job.out_dir), images, report)
    if job.reference:
        print(summary_line(report, out_dir=job.out_dir), file=sys.stderr)
    else:
        what = "image(s)" if report["frames"] is None else f"video(s) of {report['frames']} frames (PNG frames + GIF)"
        print(f"parastep: wrote {len(images)} {what} and report.json to {job.out_dir} "
              f"(latency {latency_s:.3f} s, {report['bytes_exchanged']} bytes exchanged)", file=sys.stderr)


def _spread(times: list[float]) -> dict[str, Any]:
    return {"median": statistics.median(times), "min": min(times), "max": max(times), "runs": list(times)}


def summary_line(report: dict, *, out_dir: str) -> str:
    """The one human line ``exec --reference`` ends with (report.json keeps every number)."""
    ref = report["reference"]
    n = report["repeats"]
    runs = f"median of {n} runs each" if n > 1 else "1 run each"
    quality = ("identical to sequential (PSNR inf, SSIM 1.000)" if ref["identical"]
               else f"PSNR {ref['psnr_db']:.1f} dB, SSIM {ref['ssim']:.4f} vs sequential")
    ranks = report["world_size"]
    pred = report.get("predicted") or {}
    planned = f", predicted {pred['speedup']:.2f}x" if pred.get("speedup") else ""
    if pred.get("psnr_db"):
        quality += f" (predicted per image: median {pred['psnr_db']['median_db']:.1f} dB, p10 {pred['psnr_db']['p10_db']:.1f} dB)"
    return (f"parastep: {ranks} rank{'s' if ranks != 1 else ''} on {report['device']}: {report['latency_s']:.3f} s "
            f"vs {ref['latency_s']:.3f} s sequential, speedup {ref['speedup']:.2f}x ({runs}{planned}); {quality}; "
            f"report in {Path(out_dir) / 'report.json'}")

"""``parastep exec sched.yaml``: run a schedule on ``world_size`` processes (DESIGN §4, §8).

Every rank loads the pipeline (``executor.registry.load_pipeline``), wraps it with
``apply_parastep`` (a ``DistExchange`` over the world) and calls it with the same seed; rank 0
writes the images (PNG) and ``report.json`` into ``--out``, atomically, at the very end (an
earlier exec/evaluate run's outputs there are removed first, with a note; other files stay;
``outputs.check_out_dir`` refuses an --out it could not write before any rank starts):

    world_size, num_steps, latency_s, bytes_exchanged (measured, sum over ranks of bytes
    received), bytes_exchanged_schedule (schedule.totals), forwards_per_rank,
    bytes_received_per_rank, windows: [{start, kind, size, seconds, bytes, exchange_s,
    snapshot_s, replay_s, swap_s, half_forwards}] (rank 0's CFG-split swaps are inside exchange_s too), images, repeats, warmup_runs, latency_spread_s: {median, min, max,
    runs}, and with --reference:
    reference: {latency_s, speedup, psnr_db, ssim, identical, latency_spread_s}.

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

Conditioning comes from the pipeline's own signature (``executor.evaluate``, the one home):
``--prompt`` or ``--class-label`` (DiT: index or label name) per sample, nothing for an
unconditional pipeline (``batch_size``), ``--image``/``--strength`` for img2img, ``--height``/
``--width``/``--num-frames``; flags the pipeline cannot take, and a size, frame count or strength
other than the schedule's, are refused in one line before loading or spawning (the schedule's
values are the defaults). report.json adds class_labels, image, strength, resolution_px,
num_frames and frames (per video; null for images).

Test hook: ``PARASTEP_TEST_EXIT_AT=RANK:STEP`` makes that rank ``os._exit(17)`` after that step.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from ..errors import UserError
from ..outputs import check_out_dir, clear_earlier_outputs
from ..schedules.check import violations
from ..schedules.io import load_schedule
from ..schedules.model import Schedule
from .evaluate import Inputs, check_inputs, check_strength_recorded, inputs_from_args, settle_inputs
from .launch import RankContext, check_torchrun_world, check_world, in_torchrun, launch, resolve_device

DEFAULT_PROMPT = "a photograph of an astronaut riding a horse"
# pipelines whose prompt is not free text (class-conditional); a pipeline may also define ``default_prompt``
_DEFAULT_PROMPT_BY_CLASS = {"DigitsPipeline": "7"}


def default_prompt(pipe) -> str:
    own = getattr(pipe, "default_prompt", None)
    if isinstance(own, str):
        return own
    return _DEFAULT_PROMPT_BY_CLASS.get(type(pipe).__name__, DEFAULT_PROMPT)


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


def call_kwargs(pipe, schedule: Schedule, *, inputs: Inputs, seed: int, output_type: str,
                num_inference_steps: int) -> dict[str, Any]:
    """The keyword arguments of one pipeline call for ``schedule`` (only those the pipeline accepts):
    the conditioning from the pipeline's own signature (``executor.evaluate.conditioning_kwargs``:
    prompts, class labels, or a batch size for an unconditional pipeline; a default condition when
    none is given) and ``inputs``' image, strength and size (``evaluate.generation_kwargs``)."""
    from .evaluate import call_params, conditioning_kwargs, default_prompts, generation_kwargs, seeded_generator, takes_prompt

    params = call_params(pipe)
    conditions = list(inputs.conditions) if inputs.conditions else \
        ([default_prompt(pipe)] if takes_prompt(pipe) else default_prompts(pipe)[:1])
    # one generator per sample, all from ``seed`` (as evaluate and the profiler seed theirs): image i
    # is then the sample (condition i, seed), whatever else is in the batch
    kw: dict[str, Any] = {"num_inference_steps": num_inference_steps,
                          "generator": seeded_generator(seed) if len(conditions) == 1 else
                          [seeded_generator(seed) for _ in conditions]}
    kw.update(conditioning_kwargs(pipe, conditions, batch=len(conditions)))
    kw.update(generation_kwargs(pipe, inputs))
    if "image" in kw and len(conditions) > 1:          # one input image for every prompt
        kw["image"] = [kw["image"]] * len(conditions)
    if schedule.guidance_scale is not None:
        if "guidance_scale" not in params:
            raise UserError(f"the schedule sets guidance_scale={schedule.guidance_scale} but pipeline "
                            f"{type(pipe).__name__} has no guidance_scale; remove it from the schedule")
        kw["guidance_scale"] = schedule.guidance_scale
    if "height" not in kw and schedule.resolution_px is not None and "height" in params and "width" in params:
        kw["height"], kw["width"] = schedule.resolution_px
    if "output_type" in params:
        kw["output_type"] = output_type
    return kw


def _steps_run(scheduler, n: int, strength: Optional[float]) -> Optional[int]:
    """Scheduler steps a call with ``num_inference_steps=n`` (and img2img ``strength``) makes, on a
    fresh copy of ``scheduler``; None when it cannot be probed. With a strength the pipeline skips
    the first ``n - min(int(n * strength), n)`` timesteps (times the scheduler's order), as the
    diffusers img2img pipelines' ``get_timesteps`` do."""
    probe = type(scheduler).from_config(scheduler.config)   # a fresh one: never the (hooked) original
    try:
        probe.set_timesteps(n)
    except Exception:  # e.g. flow-match with dynamic shifting needs mu: the pipeline knows it
        return None
    count = len(probe.timesteps)
    if strength is None:
        return count
    return count - (n - min(int(n * strength), n)) * int(getattr(probe, "order", 1) or 1)


def inference_steps_for(scheduler, num_steps: int, *, strength: Optional[float] = None) -> int:
    """``num_inference_steps`` that makes ``scheduler`` run exactly ``num_steps`` steps (PNDM/PLMS
    runs one more step than asked for; img2img with ``strength`` S runs about ``n * S`` of ``n``);
    without a strength, ``num_steps`` when it cannot be probed. With a strength that no
    ``num_inference_steps`` turns into ``num_steps`` steps: a one-line ``UserError`` naming the
    ``--steps`` that would work."""
    if strength is None:
        for n in (num_steps, num_steps - 1):
            if n >= 1 and _steps_run(scheduler, n, None) == num_steps:
                return n
        return num_steps
    lo, hi = max(1, int((num_steps - 1) / strength) - 2), int(num_steps / strength) + 3
    seen: dict[int, int] = {}
    for n in range(lo, hi + 1):
        k = _steps_run(scheduler, n, strength)
        if k is None:                 # not probeable: the img2img rule alone
            k = min(int(n * strength), n)
        if k == num_steps:
            return n
        seen[n] = k
    near = min(seen.values(), key=lambda k: (abs(k - num_steps), k)) if seen else None
    raise UserError(f"with --strength {strength:g} scheduler {type(scheduler).__name__} never runs exactly {num_steps} steps "
                    f"(num_inference_steps {lo}..{hi} run {sorted(set(seen.values()))}); profile and plan with "
                    f"--steps {near} for --strength {strength:g}, or pick another --strength")


def prepare_pipeline(schedule: Schedule, *, model_path: Optional[str], device, announce: bool = True):
    """Load the schedule's pipeline on ``device`` (a torch.device) with the schedule's scheduler:
    float32 on CPU (half precision is slow and lossy there), float16 on CUDA (bfloat16 for Flux).
    ``announce``: print the scheduler switch note and show progress bars (rank 0 / one process)."""
    import torch

    from .registry import SCHEDULER_NAMES, load_pipeline, set_scheduler

    if device.type == "cpu":
        dtype = torch.float32
    else:
        dtype = torch.bfloat16 if schedule.model == "flux" else torch.float16
    pipe = load_pipeline(schedule.model, model_path=model_path, device=str(device), dtype=dtype)
    have = type(pipe.scheduler).__name__
    if have != schedule.scheduler:
        if schedule.scheduler not in SCHEDULER_NAMES:
            raise UserError(f"the schedule was planned for scheduler {schedule.scheduler} but the pipeline uses {have}; "
                            f"re-profile and re-plan with {have}, or use one of {', '.join(SCHEDULER_NAMES)}")
        set_scheduler(pipe, schedule.scheduler)
        if announce:
            print(f"parastep: note: switched the pipeline's scheduler from {have} to {schedule.scheduler} as the schedule says",
                  file=sys.stderr)
    pipe.set_progress_bar_config(disable=not announce)
    return pipe


def _prepare_pipeline(job: ExecJob, ctx: RankContext):
    return prepare_pipeline(job.schedule, model_path=job.model_path, device=ctx.device, announce=ctx.rank == 0)


def pipeline_class_of(model: str, model_path: Optional[str]):
    """The pipeline class a run would load (imported, no weights read), or None if unknown here
    (an unknown model or missing folder is reported by ``registry.locate``)."""
    from . import registry

    with _quiet_transformers():   # importing a class may log transformers' optional-backend notes: not ours to print
        return _pipeline_class_of(registry, model, model_path)


@contextlib.contextmanager
def _quiet_transformers():
    try:
        from transformers.utils import logging as tlog
    except ImportError:
        yield
        return
    before = tlog.get_verbosity()
    tlog.set_verbosity_error()
    try:
        yield
    finally:
        tlog.set_verbosity(before)


def _pipeline_class_of(registry, model: str, model_path: Optional[str]):
    try:
        loc = registry.locate(model, model_path=model_path)
        if loc.class_name is not None:
            return registry._resolve_class(loc.class_name)
        name = registry._read_model_index(Path(loc.source))["_class_name"]
        cls = registry._custom_class_for(name)
        if cls is None:
            import diffusers

            cls = getattr(diffusers, name, None)
        return cls
    except (UserError, ImportError, AttributeError):
        return None


def check_model(schedule: Schedule, model_path: Optional[str]):
    """Find the pipeline ``schedule`` runs (nothing loaded; a missing model is one line) and refuse
    a folder whose identity (``registry.folder_identity``) is not the one the schedule's profile
    measured. A ``Profile`` (same two fields) works too. Returns the ``registry.Location``."""
    from .registry import REGISTRY, folder_identity, locate

    loc = locate(schedule.model, model_path=model_path)
    want = schedule.model_identity
    if want is not None and loc.folder is not None:
        have = folder_identity(loc.folder)
        if have != want:
            profiled = f"model '{schedule.model}'" if schedule.model in REGISTRY else f"folder {schedule.model}"
            raise UserError(f"the profiled {profiled} has identity {want[:12]}..., this folder ({loc.where}) has {have[:12]}... "
                            "(its model_index.json or component configs differ); re-profile it (parastep profile "
                            f"--model-path {loc.where}) and re-plan, or pass --model-path the folder that was profiled")
    return loc


def check_request(model: str, model_path: Optional[str], inputs: Inputs, *, folder: Optional[str]) -> Optional[type]:
    """Refuse, before anything loads, flags the pipeline cannot take (``evaluate.check_inputs``,
    from its class's ``__call__`` signature) and a non-digit prompt for the class-conditional digits
    pipeline. Returns the pipeline class, or None when it is not known without loading (the
    checks then run once the pipeline is loaded)."""
    if folder is not None:
        from .schedulers import check_folder_scheduler

        check_folder_scheduler(folder)      # a second-order scheduler: refused before the weights load
    cls = pipeline_class_of(model, model_path)
    if cls is None:
        return None
    check_inputs(cls, inputs, folder=folder)
    if cls.__name__ == "DigitsPipeline" and inputs.prompts:
        from ..models.digits.pipeline import parse_digit_prompt

        for p in inputs.prompts:
            try:
                parse_digit_prompt(p)
            except ValueError:
                raise UserError(f"--prompt {p!r}: the digits model is class-conditional; give a class label "
                                "'0'..'9' per --prompt") from None
    return cls


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


def _write_outputs(out_dir: Path, images_np, report: dict) -> None:
    """PNG per image (per video: PNG frames + a GIF) and report.json; written into a temp folder,
    then moved in (report last)."""
    from .media import frame_count, write_media

    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / f".parastep-tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    names = write_media(tmp, images_np)
    report["images"] = names
    report["frames"] = frame_count(images_np)     # frames per video; null for images
    (tmp / "report.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    note_replaced(out_dir, clear_earlier_outputs(out_dir))
    for name in names + ["report.json"]:
        (out_dir / name).parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp / name, out_dir / name)
    shutil.rmtree(tmp, ignore_errors=True)


def note_replaced(folder: Path, removed: int) -> None:
    if removed:
        print(f"parastep: note: removed {removed} output file(s) of an earlier run from {folder}; it now holds this run's only",
              file=sys.stderr)


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
        mine = {"forwards": handle.forwards, "windows": [vars(w) for w in handle.stats()]}
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
                        "swap_s": w.get("swap_s", 0.0), "half_forwards": w.get("half_forwards", 0)})
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
    }
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
    _write_outputs(Path(job.out_dir), images, report)
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
    return (f"parastep: {ranks} rank{'s' if ranks != 1 else ''} on {report['device']}: {report['latency_s']:.3f} s "
            f"vs {ref['latency_s']:.3f} s sequential, speedup {ref['speedup']:.2f}x ({runs}); {quality}; "
            f"report in {Path(out_dir) / 'report.json'}")


def settled_inputs(schedule: Schedule, args, loc) -> tuple[Inputs, bool]:
    """The command line's :class:`Inputs`, checked against the pipeline class (before loading) and
    settled against the schedule's recorded size and strength; and whether the class was unknown
    here (check again after loading)."""
    inputs = inputs_from_args(args)
    cls = check_request(schedule.model, args.model_path, inputs, folder=loc.folder)
    inputs = settle_inputs(inputs, schedule, what="schedule", fix="re-profile and re-plan with")
    if cls is not None:
        check_strength_recorded(cls, inputs, what="schedule")
    return inputs, cls is None


def run(args) -> int:
    schedule = load_schedule(args.schedule)
    problems = violations(schedule)
    if problems:
        raise UserError(f"{args.schedule}: invalid schedule: {problems[0]}; run 'parastep validate {args.schedule}'")
    check_out_dir(str(args.out))
    if in_torchrun():
        check_torchrun_world(schedule.world_size)
    loc = check_model(schedule, args.model_path)   # unknown, missing or another model: one line before any process starts
    inputs, unknown = settled_inputs(schedule, args, loc)
    job = ExecJob(schedule=schedule, schedule_path=str(args.schedule), inputs=inputs, seed=args.seed,
                  out_dir=str(args.out), reference=bool(args.reference), model_path=args.model_path, threads=args.threads,
                  repeats=getattr(args, "repeats", 1), check_after_load=unknown)
    if not in_torchrun():
        from .registry import weights_bytes

        check_world(schedule.world_size, device=resolve_device(args.device),
                    copy_bytes=weights_bytes(loc.folder) if loc.folder is not None else None)
    launch(rank_worker, job, world_size=schedule.world_size, device=args.device, threads=args.threads,
           timeout_s=args.timeout_s)
    return 0

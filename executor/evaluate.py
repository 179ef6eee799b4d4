"""A schedule's output quality on ONE device (docs/design.md §8 ``parastep evaluate``).

A schedule's output does not depend on where its offsets run (``exchange.LocalExchange``: one
process plays every rank, bit-identical to a distributed run on the same device and threads), so
its quality can be measured on one GPU, or a CPU, before it is deployed on eight:

- :func:`run_schedule_local` runs a schedule (or, with ``None``, the plain sequential pipeline)
  in this process, all samples in ONE pipeline call, one seeded generator per sample;
- :func:`psnr_db_per_sample` (from ``metrics``) compares each decoded sample with the sequential
  one of the same prompt and seed, capped at 100 dB (identical images get exactly the cap);
- :func:`evaluate` does both for every prompt x seed and returns one :class:`ImageQuality`
  per sample; :func:`aggregates` gives mean, 10th percentile and minimum;
- :func:`quality_report` is ``parastep evaluate``'s ``quality.json`` from those records.

``run_schedule_local`` and ``psnr_db_per_sample`` are drop-in for the profiler's calibration
(same signatures and semantics as ``profiler/calibrate.py``'s ``run_schedule`` and
``psnr_db_per_sample``).

Defaults (``inputs.default_prompts``, :data:`DEFAULT_SEEDS`): the digits model gets every class
``"0"`` .. ``"9"``, any other pipeline the exec default prompt (or no prompt at all when it takes
none); seeds 1000 and 1001 (none of them are the profiler's calibration seeds 0..). What a
pipeline is called with (conditioning, size, seeded noise) comes from ``executor.inputs``.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from ..errors import UserError
from ..profiles.model import PSNR_CAP_DB   # one cap: the profile's predicted distribution uses it too
from .inputs import conditioning_kwargs, seeded_generator
from .metrics import psnr_db_per_sample, ssim_per_sample

__all__ = ["DEFAULT_SEEDS", "PSNR_CAP_DB", "ImageQuality", "aggregates", "call_pipeline", "evaluate", "evaluate_outputs",
           "psnr_db_per_sample", "quality_report", "quantile", "run_schedule_local", "samples_of"]

DEFAULT_SEEDS: tuple[int, ...] = (1000, 1001)


def samples_of(prompts: Sequence[Any], seeds: Sequence[int]) -> tuple[list[Any], list[int]]:
    """Every prompt with every seed, seed-major: (prompt per sample, seed per sample)."""
    return [p for s in seeds for p in prompts], [int(s) for s in seeds for _ in prompts]


def _is_pil(value) -> bool:
    return hasattr(value, "mode") and hasattr(value, "size") and hasattr(value, "convert")


def call_pipeline(pipe, *, prompts: Sequence[Any], seeds: Sequence[int], num_steps: int, call_kwargs: Mapping[str, Any]):
    """One pipeline call for all samples: the conditioning of ``inputs.conditioning_kwargs`` (a prompt
    or a class label per sample, or ``batch_size=len(seeds)`` for a pipeline without conditioning)
    and one ``inputs.seeded_generator`` per sample (on an H200 a generator on the pipeline's device drew
    other noise than ``exec``'s, so ``evaluate`` there scored other images than ``exec`` makes from the
    same seeds: per-image PSNR up to 22 dB off the CPU's, benchmarks/gpu_smoke.sh).
    ``call_kwargs`` may override ``num_inference_steps`` (default ``num_steps``)."""
    if len(prompts) != len(seeds):
        raise ValueError(f"{len(prompts)} prompts for {len(seeds)} seeds: give one prompt per sample (see samples_of)")
    kwargs = dict(call_kwargs)
    kwargs.setdefault("num_inference_steps", num_steps)
    kwargs["generator"] = [seeded_generator(s) for s in seeds]
    kwargs.update(conditioning_kwargs(pipe, prompts, batch=len(seeds)))
    if _is_pil(kwargs.get("image")) and len(seeds) > 1:      # one input image for every sample
        kwargs["image"] = [kwargs["image"]] * len(seeds)
    return pipe(**kwargs)


def run_schedule_local(pipe, schedule, *, num_steps: int, prompts: Sequence[Any], seeds: Sequence[int],
                       call_kwargs: Mapping[str, Any]):
    """The decoded output (torch tensor in [0, 1]: images ``(B, H, W, C)``, videos ``(B, F, H, W, C)``,
    see ``executor.media``) of ``schedule`` run in this one process, every offset computed
    locally (``LocalExchange``); ``schedule=None`` runs the plain sequential pipeline.

    ``prompts[i]`` and ``seeds[i]`` are sample i (see :func:`samples_of`); all samples go through
    one pipeline call with one generator per sample. ``call_kwargs`` are passed to the call
    (guidance_scale, height, width, ...); ``output_type`` is forced to ``"np"``.
    A run that makes a different number of scheduler steps than the schedule is a ``UserError``."""
    import torch

    from .hooks import ParaStepConfig, apply_parastep, remove_parastep

    kw = {**call_kwargs, "output_type": "np"}
    handle = None
    if schedule is not None:
        if schedule.num_steps != num_steps:
            raise ValueError(f"schedule has {schedule.num_steps} steps, not {num_steps}")
        handle = apply_parastep(pipe, ParaStepConfig(windows=schedule.windows, num_steps=num_steps))
    try:
        with torch.no_grad():
            out = call_pipeline(pipe, prompts=prompts, seeds=seeds, num_steps=num_steps, call_kwargs=kw)
        if handle is not None and handle.steps_done != num_steps:
            raise UserError(f"the pipeline ran {handle.steps_done} scheduler steps, the schedule has {num_steps}; "
                            "re-plan with the pipeline's step count")
    finally:
        if schedule is not None:
            remove_parastep(pipe)
    from .media import output_of, to_numpy

    return torch.as_tensor(to_numpy(output_of(out)))    # images (B, H, W, C) or videos (B, F, H, W, C)


@dataclass(frozen=True)
class ImageQuality:
    """One sample: its prompt (None for an unconditional pipeline) and seed, PSNR (dB, capped at
    :data:`PSNR_CAP_DB`) and SSIM of the schedule's output against the sequential output."""

    prompt: Optional[str]
    seed: int
    psnr_db: float
    ssim: float
    identical: bool

    def as_dict(self) -> dict:
        return asdict(self)


def quantile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated quantile (numpy's default): ``quantile(v, 0.1)`` is the 10th percentile."""
    v = sorted(values)
    if not v:
        raise ValueError("quantile of no values")
    pos = q * (len(v) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


def aggregates(values: Sequence[float]) -> dict[str, float]:
    """``{mean, median, p10, min}`` of per-image values."""
    return {"mean": sum(values) / len(values), "median": quantile(values, 0.5), "p10": quantile(values, 0.1), "min": min(values)}


def evaluate(pipe, schedule, *, prompts: Sequence[Any], seeds: Sequence[int], call_kwargs: Mapping[str, Any],
             num_steps: Optional[int] = None, cap_db: float = PSNR_CAP_DB) -> list[ImageQuality]:
    """Every prompt x seed: ``schedule`` run locally vs the sequential pipeline (two pipeline calls,
    each with all samples batched). Records in :func:`samples_of` order (seed-major)."""
    return evaluate_outputs(pipe, schedule, prompts=prompts, seeds=seeds, call_kwargs=call_kwargs, num_steps=num_steps,
                            cap_db=cap_db)[0]


def evaluate_outputs(pipe, schedule, *, prompts: Sequence[Any], seeds: Sequence[int], call_kwargs: Mapping[str, Any],
                     num_steps: Optional[int] = None, cap_db: float = PSNR_CAP_DB):
    """:func:`evaluate`'s records and both outputs: ``(records, schedule's output, sequential output)``,
    each a tensor as :func:`run_schedule_local` returns it (images or videos, sample order)."""
    T = schedule.num_steps if num_steps is None else num_steps
    ps, ss = samples_of(prompts, seeds)
    if not ps:
        raise ValueError("no samples: give at least one prompt and one seed")
    ref = run_schedule_local(pipe, None, num_steps=T, prompts=ps, seeds=ss, call_kwargs=call_kwargs)
    out = run_schedule_local(pipe, schedule, num_steps=T, prompts=ps, seeds=ss, call_kwargs=call_kwargs)
    psnr = psnr_db_per_sample(out, ref, cap_db=cap_db)
    ssims = ssim_per_sample(out, ref)
    same = [bool((a == b).all()) for a, b in zip(out, ref)]
    records = [ImageQuality(prompt=None if p is None else str(p), seed=s, psnr_db=q, ssim=m, identical=i)
               for p, s, q, m, i in zip(ps, ss, psnr, ssims, same)]
    return records, out, ref


def quality_report(schedule, *, schedule_path, model_path, scheduler: str, device: str, inputs,
                   records: Sequence[ImageQuality], files: Sequence[str], frames) -> dict[str, Any]:
    """``quality.json`` of ``parastep evaluate`` (docs/design.md §8): the schedule (path, name, sha256
    of its file), what ran (model, scheduler, device, inputs), every sample's record with its output
    ``file``, the PSNR and SSIM :func:`aggregates`, and the schedule's predicted per-image PSNR
    distribution beside them (``predicted_psnr_db``; null where the schedule states none)."""
    text = Path(schedule_path).read_bytes()
    return {
        "schedule": {"path": str(schedule_path), "name": Path(schedule_path).stem,
                     "sha256": hashlib.sha256(text).hexdigest()},
        "model": schedule.model, "model_path": model_path, "scheduler": scheduler,
        "num_steps": schedule.num_steps, "world_size": schedule.world_size, "policy": schedule.policy,
        "device": device, "psnr_cap_db": PSNR_CAP_DB, "frames": frames, "image": inputs.image,
        "strength": inputs.strength, "resolution_px": list(inputs.resolution_px or ()) or None,
        "num_frames": inputs.num_frames,
        "images": [{**r.as_dict(), "file": f} for r, f in zip(records, files)],
        "psnr_db": aggregates([r.psnr_db for r in records]), "ssim": aggregates([r.ssim for r in records]),
        "predicted_psnr_db": (schedule.quality.predicted_psnr.model_dump(mode="json")
                              if schedule.quality is not None and schedule.quality.predicted_psnr is not None else None),
    }

"""A schedule's output quality on ONE device (DESIGN §8 ``parastep evaluate``, issue 7 item 5).

A schedule's output does not depend on where its offsets run (``exchange.LocalExchange``: one
process plays every rank, bit-identical to a distributed run on the same device and threads), so
its quality can be measured on one GPU, or a CPU, before it is deployed on eight:

- :func:`run_schedule_local` runs a schedule (or, with ``None``, the plain sequential pipeline)
  in this process, all samples in ONE pipeline call, one seeded generator per sample;
- :func:`psnr_db_per_sample` (from ``metrics``) compares each decoded sample with the sequential
  one of the same prompt and seed, capped at 100 dB (identical images get exactly the cap);
- :func:`evaluate` does both for every prompt x seed and returns one :class:`ImageQuality`
  per sample; :func:`aggregates` gives mean, 10th percentile and minimum.

``run_schedule_local`` and ``psnr_db_per_sample`` are drop-in for the profiler's calibration
(same signatures and semantics as ``profiler/calibrate.py``'s ``run_schedule`` and
``psnr_db_per_sample``).

Defaults (:func:`default_prompts`, :data:`DEFAULT_SEEDS`): the digits model gets every class
``"0"`` .. ``"9"``, any other pipeline the exec default prompt (or no prompt at all when it takes
none); seeds 1000 and 1001 (none of them are the profiler's calibration seeds 0..).
"""

from __future__ import annotations

import inspect
import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Optional, Sequence

from ..errors import UserError
from .metrics import psnr_db_per_sample, ssim_per_sample

__all__ = ["DEFAULT_SEEDS", "PSNR_CAP_DB", "ImageQuality", "aggregates", "default_prompts", "evaluate",
           "psnr_db_per_sample", "quantile", "run_schedule_local", "samples_of"]

DEFAULT_SEEDS: tuple[int, ...] = (1000, 1001)
PSNR_CAP_DB = 100.0


def samples_of(prompts: Sequence[Any], seeds: Sequence[int]) -> tuple[list[Any], list[int]]:
    """Every prompt with every seed, seed-major: (prompt per sample, seed per sample)."""
    return [p for s in seeds for p in prompts], [int(s) for s in seeds for _ in prompts]


def takes_prompt(pipe) -> bool:
    return "prompt" in inspect.signature(pipe.__call__).parameters


def takes_class_labels(pipe) -> bool:
    """Class-conditional pipelines (DiT) take ``class_labels`` instead of a prompt."""
    return "class_labels" in inspect.signature(pipe.__call__).parameters and not takes_prompt(pipe)


def default_prompts(pipe) -> list[Optional[str]]:
    """The digits model: every class ``"0"``..``"9"``; a class-conditional pipeline (DiT): its first
    two class indices; a pipeline without conditioning: ``[None]`` (one unconditional sample per
    seed); any other: exec's default prompt."""
    if type(pipe).__name__ == "DigitsPipeline":
        return [str(d) for d in range(10)]
    if takes_class_labels(pipe):
        return ["0", "1"]
    if not takes_prompt(pipe):
        return [None]
    from .command import default_prompt

    return [default_prompt(pipe)]


def class_label_ids(pipe, labels: Sequence[Any]) -> list[int]:
    """Class indices for ``labels``, each an index (``"207"``) or one of the pipeline's label names
    (DiT: ``pipe.id2label`` / ``get_label_ids``); an unknown label is a one-line ``UserError``."""
    names = getattr(pipe, "labels", None) or {}          # DiT: label name -> index (from id2label)
    known = set(int(v) for v in names.values())
    out = []
    for label in labels:
        text = str(label).strip()
        if text.isdigit() and (not known or int(text) in known):
            out.append(int(text))
        elif text in names:
            out.append(int(names[text]))
        else:
            some = ", ".join(repr(n) for n in sorted(names)[:3])
            valid = f"an index 0..{max(known)}" if known else "a class index"
            raise UserError(f"unknown class label {text!r} for {type(pipe).__name__}; give {valid} or a label name"
                            f"{' such as ' + some if some else ''}")
    return out


def conditioning_kwargs(pipe, conditions: Sequence[Any], *, batch: int) -> dict[str, Any]:
    """The call's conditioning, from the pipeline's own signature: ``prompt=[...]`` (text),
    ``class_labels=[...]`` (class-conditional: index or label name per sample), or, for a pipeline
    without conditioning, ``batch_size`` (a condition given to it is a ``UserError``)."""
    params = inspect.signature(pipe.__call__).parameters
    if takes_prompt(pipe):
        return {"prompt": list(conditions)}
    if takes_class_labels(pipe):
        return {"class_labels": class_label_ids(pipe, [0 if c is None else c for c in conditions])}
    if any(c is not None for c in conditions):
        raise UserError(f"pipeline {type(pipe).__name__} takes no prompt or class label (it is unconditional); drop --prompt")
    return {"batch_size": batch} if "batch_size" in params else {}


def call_pipeline(pipe, *, prompts: Sequence[Any], seeds: Sequence[int], num_steps: int, call_kwargs: Mapping[str, Any]):
    """One pipeline call for all samples: the conditioning of :func:`conditioning_kwargs` (a prompt
    or a class label per sample, or ``batch_size=len(seeds)`` for a pipeline without conditioning)
    and one generator per sample, seeded, on the pipeline's device.
    ``call_kwargs`` may override ``num_inference_steps`` (default ``num_steps``)."""
    import torch

    if len(prompts) != len(seeds):
        raise ValueError(f"{len(prompts)} prompts for {len(seeds)} seeds: give one prompt per sample (see samples_of)")
    dev = getattr(pipe, "device", "cpu")
    kwargs = dict(call_kwargs)
    kwargs.setdefault("num_inference_steps", num_steps)
    kwargs["generator"] = [torch.Generator(device=dev).manual_seed(int(s)) for s in seeds]
    kwargs.update(conditioning_kwargs(pipe, prompts, batch=len(seeds)))
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
    """``{mean, p10, min}`` of per-image values."""
    return {"mean": sum(values) / len(values), "p10": quantile(values, 0.1), "min": min(values)}


def evaluate(pipe, schedule, *, prompts: Sequence[Any], seeds: Sequence[int], call_kwargs: Mapping[str, Any],
             num_steps: Optional[int] = None, cap_db: float = PSNR_CAP_DB) -> list[ImageQuality]:
    """Every prompt x seed: ``schedule`` run locally vs the sequential pipeline (two pipeline calls,
    each with all samples batched). Records in :func:`samples_of` order (seed-major)."""
    T = schedule.num_steps if num_steps is None else num_steps
    ps, ss = samples_of(prompts, seeds)
    if not ps:
        raise ValueError("no samples: give at least one prompt and one seed")
    ref = run_schedule_local(pipe, None, num_steps=T, prompts=ps, seeds=ss, call_kwargs=call_kwargs)
    out = run_schedule_local(pipe, schedule, num_steps=T, prompts=ps, seeds=ss, call_kwargs=call_kwargs)
    psnr = psnr_db_per_sample(out, ref, cap_db=cap_db)
    ssims = ssim_per_sample(out, ref)
    same = [bool((a == b).all()) for a, b in zip(out, ref)]
    return [ImageQuality(prompt=None if p is None else str(p), seed=s, psnr_db=q, ssim=m, identical=i)
            for p, s, q, m, i in zip(ps, ss, psnr, ssims, same)]

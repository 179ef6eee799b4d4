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
from dataclasses import asdict, dataclass, replace
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


def call_params(pipe_or_class) -> Mapping[str, inspect.Parameter]:
    """The parameters of a pipeline's ``__call__`` (an instance or the class: no weights needed)."""
    cls = pipe_or_class if isinstance(pipe_or_class, type) else type(pipe_or_class)
    return inspect.signature(cls.__call__).parameters


def takes_prompt(pipe) -> bool:
    return "prompt" in call_params(pipe)


def takes_class_labels(pipe) -> bool:
    """Class-conditional pipelines (DiT) take ``class_labels`` instead of a prompt."""
    return "class_labels" in call_params(pipe) and not takes_prompt(pipe)


# the parameter a video pipeline takes its frame count by (Latte says video_length)
FRAME_PARAMS: tuple[str, ...] = ("num_frames", "video_length")


def frames_param(pipe) -> Optional[str]:
    """The name of the pipeline's frames-per-video parameter, or None (not a video pipeline)."""
    params = call_params(pipe)
    return next((n for n in FRAME_PARAMS if n in params), None)


def takes_image(pipe) -> bool:
    """Image-to-image pipelines: an ``image`` and a ``strength`` (how much of the schedule runs)."""
    params = call_params(pipe)
    return "image" in params and "strength" in params


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


def label_ids(labels: Sequence[Any], *, names: Mapping[str, int], num_classes: Optional[int], pipeline: str) -> list[int]:
    """Class indices for ``labels``, each an index (``"207"``) or one of the label ``names`` (name ->
    index); an index outside ``names``' values (or ``0..num_classes-1`` when there are no names) or
    an unknown name is a one-line ``UserError`` listing a few valid ones."""
    known = sorted(set(int(v) for v in names.values())) or (list(range(num_classes)) if num_classes else [])
    out = []
    for label in labels:
        text = str(label).strip()
        if text.isdigit() and (not known or int(text) in known):
            out.append(int(text))
        elif text in names:
            out.append(int(names[text]))
        else:
            some = ", ".join(repr(n) for n in sorted(names)[:3])
            valid = f"an index {known[0]}..{known[-1]}" if known else "a class index"
            raise UserError(f"unknown class label {text!r} for {pipeline}; give {valid} or a label name"
                            f"{' such as ' + some if some else ''}")
    return out


def _num_classes(pipe) -> Optional[int]:
    cfg = getattr(getattr(pipe, "transformer", None), "config", None)
    n = getattr(cfg, "num_embeds_ada_norm", None) if cfg is not None else None
    return n if isinstance(n, int) and n > 0 else None


def class_label_ids(pipe, labels: Sequence[Any]) -> list[int]:
    """Class indices for ``labels``, each an index (``"207"``) or one of the pipeline's label names
    (DiT: ``pipe.labels``, from ``id2label``; without names, indices below the transformer's
    ``num_embeds_ada_norm``); an unknown label is a one-line ``UserError``."""
    names = getattr(pipe, "labels", None) or {}          # DiT: label name -> index (from id2label)
    return label_ids(labels, names=names, num_classes=_num_classes(pipe), pipeline=type(pipe).__name__)


def conditioning_kwargs(pipe, conditions: Sequence[Any], *, batch: int) -> dict[str, Any]:
    """The call's conditioning, from the pipeline's own signature: ``prompt=[...]`` (text),
    ``class_labels=[...]`` (class-conditional: index or label name per sample), or, for a pipeline
    without conditioning, ``batch_size`` (a condition given to it is a ``UserError``)."""
    params = call_params(pipe)
    if takes_prompt(pipe):
        return {"prompt": list(conditions)}
    if takes_class_labels(pipe):
        return {"class_labels": class_label_ids(pipe, [0 if c is None else c for c in conditions])}
    if any(c is not None for c in conditions):
        raise UserError(f"pipeline {type(pipe).__name__} takes no prompt or class label (it is unconditional); drop --prompt")
    return {"batch_size": batch} if "batch_size" in params else {}


# ---- what a run generates beyond prompt and seed: the CLI's conditioning flags (issue 8 item 2) ----

@dataclass(frozen=True)
class Inputs:
    """The conditioning and generation flags of ``exec``, ``evaluate`` and ``profile``: ``--prompt``
    or ``--class-label`` (per sample), ``--image``/``--strength`` (img2img), ``--height``/``--width``
    and ``--num-frames`` (video). ``None``: not given."""

    prompts: Optional[tuple[str, ...]] = None
    class_labels: Optional[tuple[str, ...]] = None
    image: Optional[str] = None
    strength: Optional[float] = None
    height: Optional[int] = None
    width: Optional[int] = None
    num_frames: Optional[int] = None

    @property
    def conditions(self) -> Optional[tuple[str, ...]]:
        """Per-sample conditions: the prompts or the class labels (``conditioning_kwargs`` maps them)."""
        return self.prompts or self.class_labels

    @property
    def resolution_px(self) -> Optional[tuple[int, int]]:
        return None if self.height is None else (self.height, self.width)


def inputs_from_args(args, *, prompts_attr: str = "prompt") -> Inputs:
    """The :class:`Inputs` of a parsed command line (``profile`` keeps its prompts in ``prompts``)."""
    def tup(v):
        return tuple(v) if v else None

    return Inputs(prompts=tup(getattr(args, prompts_attr, None)), class_labels=tup(getattr(args, "class_labels", None)),
                  image=getattr(args, "image", None), strength=getattr(args, "strength", None),
                  height=getattr(args, "height", None), width=getattr(args, "width", None),
                  num_frames=getattr(args, "num_frames", None))


def folder_labels(folder) -> tuple[dict[str, int], Optional[int]]:
    """A class-conditional folder's label names (model_index.json's ``id2label``, split at commas as
    DiT does) and class count (the transformer's ``num_embeds_ada_norm``), read without loading."""
    import json
    from pathlib import Path

    names: dict[str, int] = {}
    count = None
    try:
        index = json.loads((Path(folder) / "model_index.json").read_text(encoding="utf-8"))
        for key, value in (index.get("id2label") or {}).items():
            for name in str(value).split(","):
                names[name.lstrip().rstrip()] = int(key)
        cfg = json.loads((Path(folder) / "transformer" / "config.json").read_text(encoding="utf-8"))
        n = cfg.get("num_embeds_ada_norm")
        count = n if isinstance(n, int) and n > 0 else None
    except (OSError, ValueError, AttributeError, TypeError):
        pass
    return dict(sorted(names.items())), count


def _check_image_file(path: str) -> None:
    from pathlib import Path

    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    if not p.is_file():
        raise UserError(f"--image {path}: {'is a folder' if p.is_dir() else 'no such file'}; pass an image file (PNG, JPEG)")
    try:
        with Image.open(p) as im:
            im.verify()
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise UserError(f"--image {path}: cannot read it as an image ({type(exc).__name__}); pass a PNG or JPEG file") from None


def image_size_px(path: str) -> tuple[int, int]:
    """(height, width) of an image file: the size an image-to-image output takes (the pipelines
    round it down to their VAE's multiple, the same way for the profile and for exec)."""
    from PIL import Image

    with Image.open(path) as im:
        w, h = im.size
    return int(h), int(w)


def check_inputs(pipe_or_class, inputs: Inputs, *, folder=None) -> None:
    """Refuse, in one line naming the fix, flags the pipeline cannot take, from its ``__call__``
    signature (the class is enough: call it before loading anything). ``folder``: where class label
    names are read from (model_index.json's ``id2label``), if known."""
    cls = pipe_or_class if isinstance(pipe_or_class, type) else type(pipe_or_class)
    params = call_params(cls)
    name = cls.__name__
    if inputs.prompts and inputs.class_labels:
        raise UserError("give --prompt or --class-label, not both")
    if inputs.prompts and "prompt" not in params:
        if "class_labels" in params:
            raise UserError(f"this pipeline takes no prompt; {name} is class-conditional: give --class-label L "
                            "(a class index or label name) instead of --prompt")
        raise UserError(f"this pipeline takes no prompt; {name} is unconditional: drop --prompt (--seed picks the sample)")
    if inputs.class_labels:
        if not takes_class_labels(cls):
            fix = "use --prompt" if "prompt" in params else "drop --class-label (it is unconditional)"
            raise UserError(f"pipeline {name} takes no class labels; {fix}")
        if folder is not None:
            names, count = folder_labels(folder)
            label_ids(inputs.class_labels, names=names, num_classes=count, pipeline=name)
    if inputs.image is not None:
        if "image" not in params:
            raise UserError(f"pipeline {name} takes no input image (its __call__ has no image parameter); drop --image, "
                            "or use its image-to-image pipeline")
        _check_image_file(inputs.image)
    elif takes_image(cls):
        raise UserError(f"pipeline {name} is image-to-image: pass --image PATH (and --strength S, 0 < S <= 1)")
    if inputs.strength is not None:
        if "strength" not in params:
            raise UserError(f"pipeline {name} takes no strength; drop --strength")
        if inputs.image is None:
            raise UserError("--strength needs --image PATH (the image the schedule starts from)")
    if (inputs.height is None) != (inputs.width is None):
        raise UserError("pass both --height and --width (or neither: the schedule's size)")
    if inputs.height is not None and not ("height" in params and "width" in params):
        raise UserError(f"pipeline {name} takes no height/width (its output size comes from its input or its model); "
                        "drop --height/--width")
    if inputs.num_frames is not None and frames_param(cls) is None:
        raise UserError(f"pipeline {name} makes no video (its __call__ has no num_frames); drop --num-frames")


def default_strength(pipe_or_class) -> Optional[float]:
    """An img2img pipeline's own default strength (its ``__call__`` default, else 1.0); None for others."""
    if not takes_image(pipe_or_class):
        return None
    d = call_params(pipe_or_class)["strength"].default
    return float(d) if isinstance(d, (int, float)) and not isinstance(d, bool) and 0 < d <= 1 else 1.0


def check_strength_recorded(pipe_or_class, inputs: Inputs, *, what: str) -> None:
    """An img2img pipeline runs ``strength`` of its steps: a ``what`` (schedule) that records no
    strength was not planned for the steps it would run; refuse in one line."""
    if inputs.strength is None and takes_image(pipe_or_class):
        name = pipe_or_class.__name__ if isinstance(pipe_or_class, type) else type(pipe_or_class).__name__
        raise UserError(f"the {what} records no img2img strength, so its steps are not the ones {name} would run; "
                        "re-profile with --image PATH --strength S and re-plan")


def settle_inputs(inputs: Inputs, recorded, *, what: str, fix: str) -> Inputs:
    """``inputs`` with the generation size and strength ``recorded`` (a schedule or profile) was
    measured at filled in; a flag that differs from it is a one-line ``UserError`` naming both
    values and the fix (``fix``: how to make a ``what`` at the new value)."""
    have_res = recorded.resolution_px
    want: dict[str, Any] = {}
    if inputs.height is not None:
        if have_res is None or tuple(have_res) != (inputs.height, inputs.width):
            at = "the pipeline's default size (not recorded)" if have_res is None else f"{have_res[0]}x{have_res[1]} px"
            keep = "drop --height/--width" if have_res is None else f"pass --height {have_res[0]} --width {have_res[1]}"
            raise UserError(f"--height {inputs.height} --width {inputs.width} differs from the {what}'s size, {at} (its "
                            f"costs and quality were measured there); {keep}, or {fix} --height {inputs.height} "
                            f"--width {inputs.width}")
    elif have_res is not None:
        if inputs.image is not None and getattr(recorded, "strength", None) is not None:
            size = image_size_px(inputs.image)          # an image-to-image output takes the input's size
            if size != tuple(have_res):
                raise UserError(f"--image {inputs.image} is {size[0]}x{size[1]} px but the {what} was measured on a "
                                f"{have_res[0]}x{have_res[1]} px image (the output takes the input's size; its costs and "
                                f"quality were measured there); resize the image to {have_res[0]}x{have_res[1]}, or {fix} "
                                f"--image {inputs.image}")
        want["height"], want["width"] = int(have_res[0]), int(have_res[1])
    for field, flag, mine, theirs, none, remeasure in (
            ("num_frames", "--num-frames", inputs.num_frames, getattr(recorded, "num_frames", None),
             "the pipeline's default (not recorded)", "--num-frames {v:g}"),
            ("strength", "--strength", inputs.strength, getattr(recorded, "strength", None),
             "none (it runs the whole schedule)", "--image IMAGE --strength {v:g}")):
        if mine is None:
            if theirs is not None:
                want[field] = theirs
            continue
        if theirs is None or not math.isclose(float(theirs), float(mine), rel_tol=1e-9, abs_tol=0.0):
            at = none if theirs is None else f"{theirs:g}"
            keep = f"drop {flag}" if theirs is None else f"pass {flag} {theirs:g}"
            why = "its steps were planned for it" if field == "strength" else "its costs and quality were measured there"
            raise UserError(f"{flag} {mine:g} differs from the {what}'s {at} ({why}); {keep}, or {fix} "
                            f"{remeasure.format(v=mine)}")
    return replace(inputs, **want) if want else inputs


def generation_kwargs(pipe, inputs: Inputs) -> dict[str, Any]:
    """The call's keyword arguments for ``inputs`` beyond the conditioning, those the pipeline
    takes: ``image`` (an RGB PIL image; :func:`call_pipeline` repeats it per sample), ``strength``,
    ``height``/``width`` and the frame count (``num_frames`` or Latte's ``video_length``)."""
    params = call_params(pipe)
    kw: dict[str, Any] = {}
    if inputs.image is not None and "image" in params:
        from PIL import Image

        with Image.open(inputs.image) as im:
            kw["image"] = im.convert("RGB")
    if inputs.strength is not None and "strength" in params:
        kw["strength"] = inputs.strength
    if inputs.height is not None and "height" in params and "width" in params:
        kw["height"], kw["width"] = inputs.height, inputs.width
    fp = frames_param(pipe)
    if inputs.num_frames is not None and fp is not None:
        kw[fp] = inputs.num_frames
    kw.update(_config_kwargs(pipe, params))
    return kw


# PixArt pipelines bin the requested size to an aspect-ratio table that exists only for these
# transformer sample sizes (latent pixels: 256, 512, 1024, 2048 px images); any other size makes the
# pipeline raise "Invalid sample size" unless binning is off
_PIXART_BINNED_SAMPLE_SIZES = (32, 64, 128, 256)


def _config_kwargs(pipe, params: Mapping[str, inspect.Parameter]) -> dict[str, Any]:
    """Call arguments the folder's own configs fix, so a pipeline whose defaults do not fit its
    denoiser still runs without a flag the user would have to guess: the text length a CogVideoX
    transformer was built for (``max_text_seq_length``; the pipeline's default is 226), and no
    resolution binning for a PixArt transformer of a size the pipeline has no bins for."""
    den = getattr(pipe, "transformer", None) or getattr(pipe, "unet", None)
    cfg = getattr(den, "config", None)
    if cfg is None:
        return {}
    kw: dict[str, Any] = {}
    text_len = getattr(cfg, "max_text_seq_length", None)
    if "max_sequence_length" in params and isinstance(text_len, int):
        kw["max_sequence_length"] = text_len
    size = getattr(cfg, "sample_size", None)
    if "use_resolution_binning" in params and isinstance(size, int) and size not in _PIXART_BINNED_SAMPLE_SIZES:
        kw["use_resolution_binning"] = False
    return kw


def _is_pil(value) -> bool:
    return hasattr(value, "mode") and hasattr(value, "size") and hasattr(value, "convert")


def seeded_generator(seed: int):
    """How a seed becomes noise, for ``exec``, ``evaluate`` and the profiler alike: a CPU generator whatever
    the pipeline's device, so seed S is the same initial noise on a CPU, one GPU or eight."""
    import torch

    return torch.Generator(device="cpu").manual_seed(int(seed))


def call_pipeline(pipe, *, prompts: Sequence[Any], seeds: Sequence[int], num_steps: int, call_kwargs: Mapping[str, Any]):
    """One pipeline call for all samples: the conditioning of :func:`conditioning_kwargs` (a prompt
    or a class label per sample, or ``batch_size=len(seeds)`` for a pipeline without conditioning)
    and one :func:`seeded_generator` per sample (on an H200 a generator on the pipeline's device drew
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
    """``{mean, p10, min}`` of per-image values."""
    return {"mean": sum(values) / len(values), "p10": quantile(values, 0.1), "min": min(values)}


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

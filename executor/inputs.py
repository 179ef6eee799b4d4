"""What a pipeline is called with: the one home of its inputs (docs/design.md §4, §8).

Every choice comes from the pipeline's own ``__call__`` signature, so one set of flags serves
text-to-image, class-conditional (DiT), unconditional, image-to-image and video pipelines alike:

- which conditioning it takes (:func:`takes_prompt`, :func:`takes_class_labels`,
  :func:`takes_image`, :func:`frames_param`) and the call's conditioning
  (:func:`conditioning_kwargs`: ``prompt=``, ``class_labels=`` or ``batch_size``);
- the default condition (:func:`default_prompt` for one run, :func:`default_prompts` for
  ``evaluate``'s samples);
- the command line's conditioning and size flags (:class:`Inputs`, :func:`inputs_from_args`),
  refused in one line where the pipeline cannot take them (:func:`check_inputs`,
  :func:`check_request`, before anything loads) and settled against what a schedule or profile
  recorded (:func:`settle_inputs`, :func:`settled_inputs`);
- the call's keyword arguments (:func:`generation_kwargs`, :func:`call_kwargs`), its seeded
  noise (:func:`seeded_generator`) and the ``num_inference_steps`` that runs exactly a
  schedule's steps (:func:`inference_steps_for`).

``exec``, ``evaluate``, the profiler and ``plan --verify`` all build their calls here. Nothing
here loads weights; torch and PIL are imported only where a call or an image needs them.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, replace
from typing import Any, Mapping, Optional, Sequence

from ..errors import UserError
from ..schedules.model import Schedule
from .pipeline import pipeline_class_of
from .registry import DIGIT_PIPELINES

DEFAULT_PROMPT = "a photograph of an astronaut riding a horse"
# pipelines whose prompt is not free text (class-conditional); a pipeline may also define ``default_prompt``
_DEFAULT_PROMPT_BY_CLASS = {name: "7" for name in DIGIT_PIPELINES}


def default_prompt(pipe) -> str:
    """The condition of a run given none: the pipeline's own ``default_prompt``, else its class's
    (the bundled digit models: ``"7"``), else :data:`DEFAULT_PROMPT`."""
    own = getattr(pipe, "default_prompt", None)
    if isinstance(own, str):
        return own
    return _DEFAULT_PROMPT_BY_CLASS.get(type(pipe).__name__, DEFAULT_PROMPT)



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
    """The bundled digit models: every class ``"0"``..``"9"``; a class-conditional pipeline (DiT): its first
    two class indices; a pipeline without conditioning: ``[None]`` (one unconditional sample per
    seed); any other: exec's default prompt."""
    if type(pipe).__name__ in DIGIT_PIPELINES:
        return [str(d) for d in range(10)]
    if takes_class_labels(pipe):
        return ["0", "1"]
    if not takes_prompt(pipe):
        return [None]
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


# ---- what a run generates beyond prompt and seed: the CLI's conditioning flags ----

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


def seeded_generator(seed: int):
    """How a seed becomes noise, for ``exec``, ``evaluate`` and the profiler alike: a CPU generator whatever
    the pipeline's device, so seed S is the same initial noise on a CPU, one GPU or eight."""
    import torch

    return torch.Generator(device="cpu").manual_seed(int(seed))


def call_kwargs(pipe, schedule: Schedule, *, inputs: Inputs, seed: int, output_type: str,
                num_inference_steps: int) -> dict[str, Any]:
    """The keyword arguments of one pipeline call for ``schedule`` (only those the pipeline accepts):
    the conditioning from the pipeline's own signature (:func:`conditioning_kwargs`: prompts, class
    labels, or a batch size for an unconditional pipeline; a default condition when none is given)
    and ``inputs``' image, strength and size (:func:`generation_kwargs`)."""
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


def check_request(model: str, model_path: Optional[str], inputs: Inputs, *, folder: Optional[str]) -> Optional[type]:
    """Refuse, before anything loads, flags the pipeline cannot take (:func:`check_inputs`, from
    its class's ``__call__`` signature) and a non-digit prompt for the class-conditional bundled
    digit pipelines. Returns the pipeline class, or None when it is not known without loading (the
    checks then run once the pipeline is loaded)."""
    if folder is not None:
        from .schedulers import check_folder_scheduler

        check_folder_scheduler(folder)      # a second-order scheduler: refused before the weights load
    cls = pipeline_class_of(model, model_path)
    if cls is None:
        return None
    check_inputs(cls, inputs, folder=folder)
    if cls.__name__ in DIGIT_PIPELINES and inputs.prompts:
        from ..models.digits.pipeline import parse_digit_prompt

        for p in inputs.prompts:
            try:
                parse_digit_prompt(p)
            except ValueError:
                raise UserError(f"--prompt {p!r}: the {cls.__name__} digit model is class-conditional; give a class label "
                                "'0'..'9' per --prompt") from None
    return cls


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

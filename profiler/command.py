"""``parastep profile``: measure a model (docs/design.md §2) and write its profile YAML.

    parastep profile --model digits --gpus 8 --steps 50 --max-window 16 --out digits.yaml \\
        [--plot curves.png] [--seed S]... [--prompt P]... [--verify N] [--interconnect NAME]
    parastep profile --model-path DIR --out prof.yaml [--class-label L]... [--image PATH --strength S]
        [--height H --width W] [--num-frames F] ...

The pipeline is loaded offline like ``exec`` loads it (registry name or ``--model-path``), called
with the registry's default guidance scale and resolution. A folder alone is enough: without
``--model`` the profile's model is the folder's absolute path (``plan`` and ``exec`` find it
there). Either way the profile records the pipeline class and the folder's identity
(``executor.registry.folder_identity``: its model_index.json and component configs), which the
schedule carries on and ``exec`` / ``evaluate`` check. Every new profile ends with a PSNR
calibration (``parastep.profiler.calibrate``: split conformal on ``--calibration-samples N`` plans
the optimizer picks, default 24), which is what ``plan --min-psnr`` needs; ``--no-calibration``
skips it. Where the default calibration cannot be fitted (every plan lossless) the profile is
written without one and one warning line says why. Progress goes to stderr; the profile goes to ``--out``.

Conditioning comes from the pipeline's own signature (``executor.inputs``): ``--prompt`` for text
pipelines, ``--class-label`` for class-conditional ones (DiT), nothing for unconditional ones;
``--image PATH --strength S`` for img2img, where ``--steps T`` are the steps actually run (the call
asks for about T / S); ``--height --width`` and ``--num-frames`` set the size. The profile records
the size, frames and strength it measured, and ``exec`` refuses others. Flags the pipeline cannot
take are refused before it loads.
"""

from __future__ import annotations

import sys
from pathlib import Path

from ..errors import UserError
from ..outputs import check_out_file
from ..profiles.model import DEFAULT_CALIBRATION_PLANS
from .call import default_call, generation
from .instrument import sample_conditions

DEFAULT_SEEDS = (0, 1)


def model_label(args) -> str:
    """The profile's ``model``: ``--model``, else the ``--model-path`` folder's absolute path."""
    if args.model is not None:
        return args.model
    if args.model_path is None:
        raise UserError("profile needs --model NAME or --model-path DIR; pass one")
    return str(Path(args.model_path).expanduser().resolve())


def checked_inputs(args, model: str):
    """The conditioning and size flags (``executor.inputs.Inputs``), checked against the pipeline
    class's ``__call__`` before anything loads; and whether the class was unknown (check after loading)."""
    from dataclasses import replace

    from ..executor.inputs import check_request, default_strength, inputs_from_args
    from ..executor.registry import locate

    inputs = inputs_from_args(args, prompts_attr="prompts")
    folder = locate(model, model_path=args.model_path).folder
    cls = check_request(model, args.model_path, inputs, folder=folder)
    if cls is not None and inputs.strength is None and not getattr(args, "recalibrate", None):
        inputs = replace(inputs, strength=default_strength(cls))     # img2img: the pipeline's own default, recorded
    return inputs, cls is None


def identified(profile, pipe, *, model: str, model_path):
    """``profile`` with the pipeline class and the identity of the folder that was measured."""
    from ..executor.registry import folder_identity, locate

    loc = locate(model, model_path=model_path)
    identity = folder_identity(loc.folder) if loc.folder is not None else None
    return profile.model_copy(update={"pipeline_class": type(pipe).__name__, "model_identity": identity})


def run(args) -> int:
    from ..executor.registry import load_pipeline
    from ..profiles.io import dump_profile, write_profile
    from ..profiles.model import profile_sha256
    from .measure import measure_profile
    from .settings import ProfilerSettings

    no_cal = bool(getattr(args, "no_calibration", False))
    if args.verify is not None and args.verify < 6:
        raise UserError(f"--calibration-samples {args.verify} is too few plans to fit and check a calibration; pass 6 or more "
                        f"(default {DEFAULT_CALIBRATION_PLANS})")
    if args.verify is not None and no_cal:
        raise UserError("--calibration-samples and --no-calibration contradict each other; pass one")
    if args.correct is not None and no_cal:
        raise UserError("--correct ROUNDS needs a calibration to correct against; drop --no-calibration")
    if no_cal and getattr(args, "recalibrate", None):
        raise UserError("--no-calibration applies to a new profile; --recalibrate keeps the profile's calibration unless "
                        "--calibration-samples N refits it")
    if getattr(args, "batch_curve", False) and not getattr(args, "recalibrate", None):
        raise UserError("--batch-curve adds the batch curve to an existing profile: add --recalibrate PROFILE (or drop "
                        "--batch-curve for a new profile, which measures it anyway)")
    if getattr(args, "retime", False) and not getattr(args, "recalibrate", None):
        raise UserError("--retime re-measures an existing profile's costs: add --recalibrate PROFILE (or drop --retime "
                        "for a new profile, which measures them anyway)")
    if getattr(args, "recalibrate", None):
        fixed = [f for f, v in (("--steps", args.steps), ("--max-window", args.max_window)) if v is not None]
        if fixed:
            raise UserError(f"{' and '.join(fixed)} cannot change with --recalibrate (the profile's tables are kept); "
                            f"drop {' and '.join(fixed)}, or profile anew")
    if args.interconnect is not None:
        from ..profiles.interconnects import preset

        preset(args.interconnect)                     # unknown name: one-line UserError
    out = Path(args.out)
    check_out_file(args.out)                          # before hours of measuring: a folder, no folder, not writable
    if args.plot:
        check_out_file(args.plot, flag="--plot")
    model = model_label(args)
    inputs, unknown = checked_inputs(args, model)       # flags the pipeline cannot take: one line, nothing loaded
    if args.steps is not None and args.steps < 2 and not getattr(args, "recalibrate", None):
        raise UserError(f"--steps {args.steps}: profiling needs at least 2 steps; pass --steps 2 or more")
    pipe = load_pipeline(model, model_path=args.model_path)
    from ..executor.schedulers import check_pipeline_supported

    check_pipeline_supported(pipe)    # what exec would refuse (second-order schedulers, several stages): before measuring
    if unknown:
        from dataclasses import replace

        from ..executor.inputs import check_inputs, default_strength

        check_inputs(pipe, inputs)
        if inputs.strength is None and not getattr(args, "recalibrate", None):
            inputs = replace(inputs, strength=default_strength(pipe))
    kwargs, resolution, default_prompts, default_steps = default_call(pipe, model)
    if getattr(args, "recalibrate", None):
        return recalibrate(pipe, args, kwargs=kwargs, out=out, model=model, inputs=inputs)
    T = args.steps or default_steps
    if T < 2:
        raise UserError(f"--steps {T}: profiling needs at least 2 steps; pass --steps 2 or more")
    J = min(args.max_window or max(args.gpus, 8), T)
    resolution, num_frames = generation(pipe, inputs, kwargs=kwargs, resolution=resolution, num_steps=T)
    prompts = tuple(inputs.conditions) if inputs.conditions else default_prompts
    seeds = tuple(args.seeds) if args.seeds else DEFAULT_SEEDS
    name = None if args.model is not None else f"{Path(model).name}-{type(pipe.scheduler).__name__}-{T}steps"
    settings = ProfilerSettings(model=model, name=name, num_steps=T, max_window=J, gpus=args.gpus, prompts=prompts,
                                seeds=seeds, call_kwargs=kwargs, interconnect=args.interconnect,
                                propagation_stride=getattr(args, "propagation_stride", 1) or 1,
                                threads=getattr(args, "threads", 1) or 1, resolution_px=resolution,
                                calibration_plans=0 if no_cal else (args.verify or DEFAULT_CALIBRATION_PLANS))

    def say(msg: str) -> None:
        print(f"parastep profile: {msg}", file=sys.stderr, flush=True)

    try:
        run_ = measure_profile(pipe, settings, progress=say)
    except ValueError as exc:
        raise UserError(str(exc).splitlines()[0]) from None
    profile = identified(run_.profile, pipe, model=model, model_path=args.model_path)
    profile = profile.model_copy(update={"num_frames": num_frames, "strength": inputs.strength})
    if not no_cal:
        from .calibrate import calibrate_profile     # imports torch: only where a calibration is fitted

        try:
            profile = calibrate_profile(pipe, profile, settings=settings, count=args.verify or DEFAULT_CALIBRATION_PLANS,
                                        say=say)
        except UserError as exc:
            if args.verify is not None or args.correct is not None:     # asked for: its failure is the command's
                raise
            say(f"warning: no PSNR calibration, so plan --min-psnr is unavailable with this profile: {exc}")
    if args.correct is not None:
        from .correct import correct_profile

        profile = correct_profile(pipe, profile, settings=settings, rounds=args.correct, say=say)
    write_profile(profile, out)
    say(f"wrote {out} (sha256 {profile_sha256(dump_profile(profile))[:12]}...)")
    if args.plot:
        from .plot import plot_profile

        plot_profile(profile, args.plot)
        say(f"wrote {args.plot}")
    return 0


def recalibrate(pipe, args, *, kwargs, out: Path, model: str, inputs) -> int:
    """``--recalibrate PROFILE``: re-time compute/exchange (``--retime``) and/or re-fit the
    calibration (``--verify N``) of an existing profile on this machine; its quality tables stay."""
    from ..profiles.io import dump_profile, load_profile, write_profile
    from ..profiles.model import profile_sha256
    from .measure import add_batch_costs, retime
    from .settings import ProfilerSettings

    pipe.set_progress_bar_config(disable=True)
    profile, _ = load_profile(args.recalibrate)
    here = identified(profile, pipe, model=model, model_path=args.model_path)
    if profile.model_identity is not None and here.model_identity is not None:
        if profile.model_identity != here.model_identity:
            raise UserError(f"--recalibrate {args.recalibrate} is a profile of a folder with identity {profile.model_identity[:12]}..., "
                            f"this one has {here.model_identity[:12]}...; pass the folder that was profiled, or profile this one")
    elif profile.model != model:
        raise UserError(f"--recalibrate {args.recalibrate} is a profile of '{profile.model}', not --model {model}")
    profile = here
    batch_curve = getattr(args, "batch_curve", False)
    if not args.retime and args.verify is None and args.correct is None and not batch_curve:
        raise UserError("--recalibrate needs --retime, --batch-curve, --verify N and/or --correct ROUNDS; pass one")
    if profile.guidance_scale is not None and "guidance_scale" in kwargs:
        kwargs["guidance_scale"] = profile.guidance_scale
    from ..executor.inputs import settle_inputs

    inputs = settle_inputs(inputs, profile, what="profile", fix="profile anew with")   # its size and strength
    generation(pipe, inputs, kwargs=kwargs, resolution=profile.resolution_px, num_steps=profile.num_steps)
    prompts = tuple(dict.fromkeys(s.prompt for s in profile.output_errors.samples)) if profile.output_errors else ("0",)
    prompts = sample_conditions(pipe, prompts)
    settings = ProfilerSettings(model=profile.model, num_steps=profile.num_steps, max_window=profile.max_window,
                                gpus=args.gpus, prompts=prompts, seeds=(0,), call_kwargs=kwargs, interconnect=args.interconnect,
                                threads=getattr(args, "threads", 1) or 1, resolution_px=profile.resolution_px)

    def say(msg: str) -> None:
        print(f"parastep profile: {msg}", file=sys.stderr, flush=True)

    if args.retime:
        try:
            profile = retime(pipe, profile, settings, say=say)
        except ValueError as exc:
            raise UserError(str(exc).splitlines()[0]) from None
    elif batch_curve:   # --retime measures the curve too
        try:
            profile = add_batch_costs(pipe, profile, settings, say=say)
        except ValueError as exc:
            raise UserError(str(exc).splitlines()[0]) from None
    if args.verify is not None:
        from .calibrate import calibrate_profile     # imports torch: only where a calibration is fitted

        profile = calibrate_profile(pipe, profile, settings=settings, count=args.verify, say=say)
    if args.correct is not None:
        from .correct import correct_profile

        profile = correct_profile(pipe, profile, settings=settings, rounds=args.correct, say=say)
    write_profile(profile, out)
    say(f"wrote {out} (sha256 {profile_sha256(dump_profile(profile))[:12]}...)")
    return 0

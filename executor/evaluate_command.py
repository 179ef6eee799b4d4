"""``parastep evaluate SCHEDULE [--prompt P | --class-label L]... [--seed S]... [--model-path DIR] --out DIR`` (docs/design.md §8).

Runs the schedule's semantics on one device (no ranks launched, every offset computed in this
process: ``executor.evaluate``) against the sequential pipeline for every prompt x seed, and writes
``DIR/quality.json`` atomically:

    schedule: {path, name, sha256}, model, scheduler, num_steps, world_size, device,
    psnr_cap_db, frames (per video; null for images), strength, resolution_px, num_frames,
    images: [{prompt, seed, psnr_db, ssim, identical, file}],
    psnr_db: {mean, p10, min}, ssim: {mean, p10, min}

and the schedule's outputs beside it (``executor.media``): ``image_000.png``..., or per video
``video_000.gif`` plus its PNG frames ``video_000/frame_000.png``...; the sequential outputs of the
same samples under ``sequential/``. ``file`` is each sample's image or GIF. For a class-conditional
pipeline (DiT) ``prompt`` is the class label as given. Conditioning and size flags (``--class-label``,
``--image``/``--strength``, ``--height``/``--width``, ``--num-frames``) are checked as ``exec``
checks them (``executor.inputs.check_inputs``, ``settle_inputs``), before the model loads.

PSNR is capped at ``psnr_cap_db`` (100): an image identical to the sequential one scores exactly
the cap, so every number is finite. Default prompts: every class 0-9 on digits, exec's default
prompt otherwise; default seeds 1000 and 1001. One line on stderr sums it up. Bad input (schedule,
``--out`` an existing file, prompts the model cannot take) is refused before the model loads.
"""

from __future__ import annotations

import sys
from pathlib import Path

from ..errors import UserError
from ..outputs import check_out_dir
from ..schedules.check import violations
from ..schedules.io import load_schedule
from .inputs import call_kwargs, check_inputs, check_strength_recorded, default_prompts, inference_steps_for, settled_inputs
from .pipeline import check_model, prepare_pipeline
from .results import write_evaluate_outputs, write_json_atomically


def _once(values, flag: str) -> list:
    """``values`` with repeats dropped (a repeated sample would count twice in the aggregates), and a
    note naming them."""
    kept = list(dict.fromkeys(values))
    if len(kept) < len(values):
        repeated = [v for v in kept if list(values).count(v) > 1]
        print(f"parastep: note: repeated {flag} {', '.join(map(str, repeated))} counted once", file=sys.stderr)
    return kept


def run(args) -> int:
    schedule = load_schedule(args.schedule)
    problems = violations(schedule)
    if problems:
        raise UserError(f"{args.schedule}: invalid schedule: {problems[0]}; run 'parastep validate {args.schedule}'")
    check_out_dir(args.out)
    seeds = _once(args.seed, "--seed") if args.seed else None
    loc = check_model(schedule, args.model_path)   # unknown, missing or another model: one line, nothing loaded
    inputs, unknown = settled_inputs(schedule, args, loc)   # flags the pipeline cannot take: one line, nothing loaded
    label = "class label" if inputs.class_labels else "prompt"
    prompts = _once(inputs.conditions, f"--{label.replace(' ', '-')}") if inputs.conditions else None

    import torch

    from .evaluate import DEFAULT_SEEDS, evaluate_outputs, quality_report
    from .launch import cpu_threads, resolve_device

    device = torch.device(resolve_device(args.device))
    with cpu_threads(device, args.threads):
        pipe = prepare_pipeline(schedule, model_path=args.model_path, device=device, announce=True)
        pipe.set_progress_bar_config(disable=True)
        if unknown:
            check_inputs(pipe, inputs)
            check_strength_recorded(pipe, inputs, what="schedule")
        prompts = prompts or default_prompts(pipe)
        seeds = seeds or list(DEFAULT_SEEDS)
        steps = inference_steps_for(pipe.scheduler, schedule.num_steps, strength=inputs.strength)
        kw = call_kwargs(pipe, schedule, inputs=inputs, seed=0, output_type="np", num_inference_steps=steps)
        for key in ("generator", "prompt", "class_labels", "batch_size"):   # per sample: set by evaluate
            kw.pop(key, None)
        records, out_media, ref_media = evaluate_outputs(pipe, schedule, prompts=prompts, seeds=seeds, call_kwargs=kw,
                                                         num_steps=schedule.num_steps)

    files, frames = write_evaluate_outputs(Path(args.out), out_media, ref_media)
    quality = quality_report(schedule, schedule_path=args.schedule, model_path=args.model_path,
                             scheduler=type(pipe.scheduler).__name__, device=str(device), inputs=inputs,
                             records=records, files=files, frames=frames)
    out = Path(args.out) / "quality.json"
    write_json_atomically(out, quality)
    a = quality["psnr_db"]
    same = sum(r.identical for r in records)
    note = f", {same} identical" if same else ""
    def n(k: int, what: str) -> str:
        return f"{k} {what}{'' if k == 1 else 's'}"

    unit = n(len(records), "image") if frames is None else f"{n(len(records), 'video')} of {frames} frames"
    pred = schedule.quality.predicted_psnr if schedule.quality is not None else None
    beside = (f" (predicted: median {pred.median_db:.1f} / p10 {pred.p10_db:.1f} dB; measured median {a['median']:.1f} dB)"
              if pred is not None else "")
    print(f"parastep: {unit} ({n(len(prompts), label)} x {n(len(seeds), 'seed')}{note}): "
          f"PSNR mean {a['mean']:.1f} / p10 {a['p10']:.1f} / min {a['min']:.1f} dB{beside}, "
          f"SSIM mean {quality['ssim']['mean']:.4f} vs sequential{' (over every frame)' if frames else ''}; "
          f"wrote {out} and the outputs beside it", file=sys.stderr)
    return 0

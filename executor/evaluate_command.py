"""``parastep evaluate SCHEDULE [--prompt P]... [--seed S]... [--model-path DIR] --out DIR`` (DESIGN §8).

Runs the schedule's semantics on one device (no ranks launched, every offset computed in this
process: ``executor.evaluate``) against the sequential pipeline for every prompt x seed, and writes
``DIR/quality.json`` atomically:

    schedule: {path, name, sha256}, model, scheduler, num_steps, world_size, device,
    psnr_cap_db, images: [{prompt, seed, psnr_db, ssim, identical}],
    psnr_db: {mean, p10, min}, ssim: {mean, p10, min}

PSNR is capped at ``psnr_cap_db`` (100): an image identical to the sequential one scores exactly
the cap, so every number is finite. Default prompts: every class 0-9 on digits, exec's default
prompt otherwise; default seeds 1000 and 1001. One line on stderr sums it up. Bad input (schedule,
``--out`` an existing file, prompts the model cannot take) is refused before the model loads.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..schedules.check import violations
from ..schedules.io import load_schedule
from .command import call_kwargs, check_model, check_out_dir, check_prompts, inference_steps_for, prepare_pipeline


def _write_json_atomically(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.parastep-tmp-{os.getpid()}"
    try:
        tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def run(args) -> int:
    schedule = load_schedule(args.schedule)
    problems = violations(schedule)
    if problems:
        raise UserError(f"{args.schedule}: invalid schedule: {problems[0]}; run 'parastep validate {args.schedule}'")
    check_out_dir(args.out)
    prompts = list(args.prompt) if args.prompt else None
    seeds = list(dict.fromkeys(args.seed)) if args.seed else None
    check_prompts(schedule.model, args.model_path, prompts)
    check_model(schedule, args.model_path)   # unknown, missing or another model: one line, nothing loaded

    import torch

    from .evaluate import DEFAULT_SEEDS, PSNR_CAP_DB, aggregates, default_prompts, evaluate
    from .launch import cpu_threads, resolve_device

    device = torch.device(resolve_device(args.device))
    with cpu_threads(device, args.threads):
        pipe = prepare_pipeline(schedule, model_path=args.model_path, device=device, announce=True)
        pipe.set_progress_bar_config(disable=True)
        prompts = prompts or default_prompts(pipe)
        seeds = seeds or list(DEFAULT_SEEDS)
        steps = inference_steps_for(pipe.scheduler, schedule.num_steps)
        kw = call_kwargs(pipe, schedule, prompts=None, seed=0, device=device, output_type="np", num_inference_steps=steps)
        for key in ("generator", "prompt", "batch_size"):   # per sample: set by evaluate
            kw.pop(key, None)
        records = evaluate(pipe, schedule, prompts=prompts, seeds=seeds, call_kwargs=kw, num_steps=schedule.num_steps)

    text = Path(args.schedule).read_bytes()
    psnr = [r.psnr_db for r in records]
    ssims = [r.ssim for r in records]
    quality: dict[str, Any] = {
        "schedule": {"path": str(args.schedule), "name": Path(args.schedule).stem,
                     "sha256": hashlib.sha256(text).hexdigest()},
        "model": schedule.model, "model_path": args.model_path, "scheduler": type(pipe.scheduler).__name__,
        "num_steps": schedule.num_steps, "world_size": schedule.world_size, "policy": schedule.policy,
        "device": str(device), "psnr_cap_db": PSNR_CAP_DB,
        "images": [r.as_dict() for r in records],
        "psnr_db": aggregates(psnr), "ssim": aggregates(ssims),
    }
    out = Path(args.out) / "quality.json"
    _write_json_atomically(out, quality)
    a = quality["psnr_db"]
    same = sum(r.identical for r in records)
    note = f", {same} identical" if same else ""
    def n(k: int, what: str) -> str:
        return f"{k} {what}{'' if k == 1 else 's'}"

    print(f"parastep: {n(len(records), 'image')} ({n(len(prompts), 'prompt')} x {n(len(seeds), 'seed')}{note}): "
          f"PSNR mean {a['mean']:.1f} / p10 {a['p10']:.1f} / min {a['min']:.1f} dB, "
          f"SSIM mean {quality['ssim']['mean']:.4f} vs sequential; wrote {out}", file=sys.stderr)
    return 0

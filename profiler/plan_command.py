"""``parastep plan``: the planner's command, plus ``--verify N``, which measures the chosen plan.

``--verify N`` runs the plan in ONE process (the executor's hooks; which rank computes an offset
does not change its value) on N held-out images (the profile's calibration prompts, seeds from
``HELD_OUT_SEED0`` on: none the profile saw) against the sequential output of the same seed, and
records per-image PSNR in ``quality.measured``. The pipeline is called as the profiler called it
(``profiler.command.generation``: the profile's size, frames and step count; class labels or no
condition from the pipeline's signature); an image-to-image profile is refused in one line (there
is no input image here: ``parastep evaluate SCHED --image PATH`` measures such a schedule).
If the plan misses its target, the quality model is corrected from the measurement and the plan
re-made, at most ``MAX_ROUNDS`` rounds:

- ``--min-psnr DB --coverage Q``: the target is "at least Q of the measured images at or above
  DB". Missed by S dB at that quantile, the next round plans for DB + S + 0.25 dB (the per-image
  calibration was S dB too kind on these plans).
- no budget (the default plan): the target is the fixed plan's own measured mean and 10th
  percentile on the same images. Missed, the per-sample bounds (a share of the fixed plan's
  predicted errors) are tightened by ``TIGHTEN`` and the plan re-made.
- ``--budget X`` or ``--policy fixed``: nothing to aim at; the measurement is recorded.

It imports the executor (to run the pipeline) and the planner, so it lives in the profiler
layer, above both (DESIGN §6); ``parastep.planner.command`` stays executor-free.
"""

from __future__ import annotations

import statistics
import sys
import time

from ..errors import UserError

HELD_OUT_SEED0 = 10_000
MAX_ROUNDS = 3
TIGHTEN = 0.7


def held_out_samples(profile, n: int) -> tuple[list[str], list[int]]:
    """N (prompt, seed) pairs: the profile's calibration prompts, seeds it never saw."""
    if profile.output_errors is not None:
        prompts = list(dict.fromkeys(s.prompt for s in profile.output_errors.samples))
    else:
        prompts = list(dict.fromkeys(getattr(profile.provenance.deviation, "prompts", []) or []))
    if not prompts:
        raise UserError(f"profile '{profile.name}' names no prompts to verify with; re-profile it or drop --verify")
    return [prompts[k % len(prompts)] for k in range(n)], [HELD_OUT_SEED0 + k // len(prompts) for k in range(n)]


def run(args) -> int:
    from ..planner.command import emit, make_plan, request_from_args

    n = getattr(args, "verify", 0) or 0
    if n < 0:
        raise UserError(f"--verify {n} must be >= 0 images; pass e.g. --verify 10")
    req = request_from_args(args)
    if n == 0:
        emit(make_plan(req), req.profile)
        return 0
    result = _verified(req, n=n, model_path=getattr(args, "model_path", None))
    emit(result, req.profile)
    return 0


def _refuse_img2img(profile) -> None:
    """``--verify`` has no input image to run an image-to-image pipeline on: one line naming the fix."""
    raise UserError(f"plan --verify needs an input image: profile '{profile.name}' is image-to-image; plan without "
                    "--verify, then measure the schedule with 'parastep evaluate SCHED --image PATH'")


def _verified(req, *, n: int, model_path):
    import torch

    from ..executor.command import check_model
    from ..executor.registry import load_pipeline
    from ..planner.command import make_plan
    from ..schedules.model import MeasuredQuality
    from ..executor.evaluate import Inputs, psnr_db_per_sample, quantile, run_schedule_local, settle_inputs, takes_image
    from .command import default_call, generation, sample_conditions
    from ..executor.launch import cpu_threads

    profile = req.profile
    say = lambda msg: print(f"parastep plan: {msg}", file=sys.stderr, flush=True)  # noqa: E731
    prompts, seeds = held_out_samples(profile, n)
    if profile.strength is not None:
        _refuse_img2img(profile)
    check_model(profile, model_path)          # another folder than the one profiled: one line, nothing loaded
    # the size, frames and strength the profile measured (a video's frames: Latte's video_length)
    inputs = settle_inputs(Inputs(), profile, what="profile", fix="profile anew with")
    result = make_plan(req)
    t0 = time.perf_counter()
    pipe = load_pipeline(profile.model, model_path=model_path)
    pipe.set_progress_bar_config(disable=True)
    if takes_image(pipe):
        _refuse_img2img(profile)              # a profile from before strength was recorded
    kwargs, _res, _p, _s = default_call(pipe, profile.model)
    if profile.guidance_scale is not None and "guidance_scale" in kwargs:
        kwargs["guidance_scale"] = profile.guidance_scale
    T = profile.num_steps
    generation(pipe, inputs, kwargs=kwargs, resolution=profile.resolution_px, num_steps=T)   # the profiler's call
    conditions = list(sample_conditions(pipe, prompts))      # an unconditional pipeline: None per sample

    with cpu_threads(pipe, max(1, torch.get_num_threads())):
        ref = run_schedule_local(pipe, None, num_steps=T, prompts=conditions, seeds=seeds, call_kwargs=kwargs)

        def measure(schedule) -> list[float]:
            out = run_schedule_local(pipe, schedule, num_steps=T, prompts=conditions, seeds=seeds, call_kwargs=kwargs)
            return psnr_db_per_sample(out, ref)

        target = None               # (name, check(psnr) -> bool, shortfall(psnr) -> dB)
        if req.policy == "optimal" and req.min_psnr_db is not None:
            db, q = req.min_psnr_db, req.coverage

            def ok(p):
                return sum(1 for x in p if x >= db) >= q * len(p) - 1e-9

            target = (f"{q:.0%} of images >= {db:g} dB", ok, lambda p: db - quantile(p, 1 - q))
        elif req.policy == "optimal" and req.budget is None:
            from ..planner.plan import plan_schedule

            fixed = plan_schedule(profile, profile_sha256=req.sha256, world_size=req.world_size, max_window=req.max_window,
                                  policy="fixed", warmup=req.warmup).schedule
            fp = measure(fixed)
            f_mean, f_p10 = statistics.fmean(fp), quantile(fp, 0.1)

            def ok(p):
                return statistics.fmean(p) >= f_mean and quantile(p, 0.1) >= f_p10

            target = (f"the fixed plan's mean {f_mean:.2f} dB and p10 {f_p10:.2f} dB", ok, None)

        from ..planner.plan import DEFAULT_FIXED_MARGIN

        rounds, factor, plan_db = 1, DEFAULT_FIXED_MARGIN, req.min_psnr_db
        psnr = measure(result.schedule)
        while target is not None and not target[1](psnr) and rounds < MAX_ROUNDS:
            if target[2] is not None:
                plan_db += target[2](psnr) + 0.25
                say(f"verify round {rounds}: missed {target[0]}; re-planning for {plan_db:.2f} dB")
                result = make_plan(req, budget=profile.calibration.deviation_for_psnr(plan_db))
            else:
                factor *= TIGHTEN
                say(f"verify round {rounds}: missed {target[0]}; re-planning with per-image bounds x{factor:.2f}")
                result = make_plan(req, fixed_bound_factor=factor)
            rounds += 1
            psnr = measure(result.schedule)
    met = None if target is None else bool(target[1](psnr))
    measured = MeasuredQuality(samples=n, prompts=list(prompts), seeds=list(seeds), psnr_db_mean=statistics.fmean(psnr),
                               psnr_db_p10=quantile(psnr, 0.1), psnr_db_min=min(psnr), rounds=rounds, target_met=met)
    s = result.schedule
    s = s.model_copy(update={"quality": s.quality.model_copy(update={"measured": measured})})
    warnings = list(result.warnings)
    if met is False:
        warnings.append(f"after {rounds} verify rounds the plan still misses {target[0]} on {n} held-out images "
                        f"(mean {measured.psnr_db_mean:.2f} dB, p10 {measured.psnr_db_p10:.2f} dB); lower the target or re-profile")
    say(f"verify: {n} held-out images, mean {measured.psnr_db_mean:.2f} dB, p10 {measured.psnr_db_p10:.2f} dB, "
        f"min {measured.psnr_db_min:.2f} dB; {rounds} round(s), {time.perf_counter() - t0:.1f} s"
        + ("" if target is None else f"; target ({target[0]}) {'met' if met else 'MISSED'}"))
    return type(result)(schedule=s, warnings=tuple(warnings), problem=result.problem)

"""``parastep plan --verify N``: the chosen plan measured, and re-made until it meets its target.

``--verify N`` runs the plan in ONE process (the executor's hooks; which rank computes an offset
does not change its value) on N held-out images (the profile's calibration prompts, seeds from
``HELD_OUT_SEED0`` on: none the profile saw) against the sequential output of the same seed, and
records per-image PSNR in ``quality.measured``. The pipeline is called as the profiler called it
(``profiler.call.generation``: the profile's size, frames and step count; class labels or no
condition from the pipeline's signature); an image-to-image profile is refused in one line (there
is no input image here: ``parastep evaluate SCHED --image PATH`` measures such a schedule).
If the plan misses its target, the quality model is corrected from the measurement and the plan
re-made, at most ``MAX_ROUNDS`` plans measured in all:

- ``--min-psnr DB --coverage Q``: the target is "at least Q of the measured images at or above
  DB". Missed by S dB at that quantile, the next round plans for DB + S + 0.25 dB (the per-image
  calibration was S dB too kind on these plans).
- no budget (the default plan): the target is the fixed plan's own measured mean and 10th
  percentile on the same images. Missed, the per-sample bounds (a share of the fixed plan's
  predicted errors) are tightened by ``TIGHTEN`` and the plan re-made.
- ``--budget X`` or ``--policy fixed``: nothing to aim at; the measurement is recorded.

The check is two-sided for ``--min-psnr``: met with more than ``SLACK_DB`` to spare at the coverage
quantile (the model was too cautious for this plan), a faster plan for a lower internal target is
tried, and kept only if it meets the user's target on the same images (``aim``).

It imports the executor (to run the pipeline) and the planner, so it lives in the profiler
layer, above both (docs/design.md §6); ``parastep.planner.request`` stays executor-free.
"""

from __future__ import annotations

import statistics
import sys
import time
from typing import Optional

from ..errors import UserError
from ..executor.evaluate import quantile
from ..planner.request import make_plan

HELD_OUT_SEED0 = 10_000
MAX_ROUNDS = 3
TIGHTEN = 0.7
# --min-psnr met with the image at the coverage quantile more than this above the target: --verify
# tries a faster plan (``aim``)
SLACK_DB = 3.0


class Target:
    """What ``--verify`` aims at on the measured images: ``met(psnr)``; for ``--min-psnr`` also the
    statement (``db`` at ``coverage``), which says how far a measurement is from it in dB."""

    def __init__(self, name: str, met, *, db: Optional[float] = None, coverage: Optional[float] = None):
        self.name, self.met, self.db, self.coverage = name, met, db, coverage

    @classmethod
    def min_psnr(cls, db: float, coverage: float) -> "Target":
        def met(p):
            return sum(1 for x in p if x >= db) >= coverage * len(p) - 1e-9

        return cls(f"{coverage:.0%} of images >= {db:g} dB", met, db=db, coverage=coverage)

    def margin_db(self, psnr) -> float:
        """dB by which the image at the coverage quantile is above the target (negative: below)."""
        return quantile(psnr, 1 - self.coverage) - self.db


def aim(result, *, measure, replan, target: Optional[Target], say=lambda msg: None):
    """Measure ``result``'s plan and re-plan until it meets ``target`` on the measured images, at most
    ``MAX_ROUNDS`` plans in all: (result, its measured PSNR per image, plans measured).

    Missed: ``--min-psnr`` re-plans for the target plus the shortfall at the coverage quantile plus
    0.25 dB; the default plan tightens its per-image bounds by ``TIGHTEN``. Met with room to spare
    (``--min-psnr`` only, the image at the coverage quantile more than ``SLACK_DB`` above the
    target): re-plans for a target lowered by that room less ``SLACK_DB`` / 2, and keeps the new plan
    only if it is faster *and* meets the target on the same images; otherwise the plan it has stays
    (so a plan that met the target is never traded for one that did not)."""
    from ..planner.plan import DEFAULT_FIXED_MARGIN

    rounds, factor, plan_db = 1, DEFAULT_FIXED_MARGIN, target.db if target is not None else None
    psnr = measure(result.schedule)
    if target is None:
        return result, psnr, rounds
    while not target.met(psnr) and rounds < MAX_ROUNDS:
        if target.db is not None:
            plan_db += -target.margin_db(psnr) + 0.25
            say(f"verify round {rounds}: missed {target.name}; re-planning for {plan_db:.2f} dB")
            result = replan(plan_db=plan_db)
        else:
            factor *= TIGHTEN
            say(f"verify round {rounds}: missed {target.name}; re-planning with per-image bounds x{factor:.2f}")
            result = replan(factor=factor)
        rounds += 1
        psnr = measure(result.schedule)
    while target.db is not None and target.met(psnr) and target.margin_db(psnr) > SLACK_DB and rounds < MAX_ROUNDS:
        room = target.margin_db(psnr)
        try_db = plan_db - (room - SLACK_DB / 2)
        say(f"verify round {rounds}: met {target.name} with {room:.2f} dB to spare; trying a plan for {try_db:.2f} dB")
        candidate = replan(plan_db=try_db)
        if candidate.schedule.latency.predicted_s >= result.schedule.latency.predicted_s:
            break                                  # no faster plan there: nothing to gain, nothing measured
        cand_psnr = measure(candidate.schedule)
        rounds += 1
        if not target.met(cand_psnr):
            say(f"verify round {rounds}: the faster plan missed {target.name}; keeping the plan that met it")
            break
        result, psnr, plan_db = candidate, cand_psnr, try_db
    return result, psnr, rounds


def held_out_samples(profile, n: int) -> tuple[list[str], list[int]]:
    """N (prompt, seed) pairs: the profile's calibration prompts, seeds it never saw."""
    if profile.output_errors is not None:
        prompts = list(dict.fromkeys(s.prompt for s in profile.output_errors.samples))
    else:
        prompts = list(dict.fromkeys(getattr(profile.provenance.deviation, "prompts", []) or []))
    if not prompts:
        raise UserError(f"profile '{profile.name}' names no prompts to verify with; re-profile it or drop --verify")
    return [prompts[k % len(prompts)] for k in range(n)], [HELD_OUT_SEED0 + k // len(prompts) for k in range(n)]


def _refuse_img2img(profile) -> None:
    """``--verify`` has no input image to run an image-to-image pipeline on: one line naming the fix."""
    raise UserError(f"plan --verify needs an input image: profile '{profile.name}' is image-to-image; plan without "
                    "--verify, then measure the schedule with 'parastep evaluate SCHED --image PATH'")


def verified(req, *, n: int, model_path):
    """The plan for ``req`` measured on ``n`` held-out images and re-made until it meets its target
    (:func:`aim`), its measurement recorded in ``quality.measured``: a ``PlanResult``."""
    import torch

    from ..executor.evaluate import psnr_db_per_sample, run_schedule_local
    from ..executor.inputs import Inputs, settle_inputs, takes_image
    from ..executor.launch import cpu_threads
    from ..executor.pipeline import check_model
    from ..executor.registry import load_pipeline
    from ..schedules.model import MeasuredQuality
    from .call import default_call, generation
    from .instrument import sample_conditions

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

        target = None
        if req.policy == "optimal" and req.min_psnr_db is not None:
            target = Target.min_psnr(req.min_psnr_db, req.coverage)
        elif req.policy == "optimal" and req.budget is None:
            from ..planner.plan import plan_schedule

            fixed = plan_schedule(profile, profile_sha256=req.sha256, world_size=req.world_size, max_window=req.max_window,
                                  policy="fixed", warmup=req.warmup).schedule
            fp = measure(fixed)
            f_mean, f_p10 = statistics.fmean(fp), quantile(fp, 0.1)
            target = Target(f"the fixed plan's mean {f_mean:.2f} dB and p10 {f_p10:.2f} dB",
                            lambda p: statistics.fmean(p) >= f_mean and quantile(p, 0.1) >= f_p10)

        def replan(plan_db=None, factor=None):
            if plan_db is not None:
                return make_plan(req, budget=profile.calibration.at(req.world_size).deviation_for_psnr(plan_db),
                                 measured_target_db=plan_db)
            return make_plan(req, fixed_bound_factor=factor)

        result, psnr, rounds = aim(result, measure=measure, replan=replan, target=target, say=say)
    met = None if target is None else bool(target.met(psnr))
    measured = MeasuredQuality(samples=n, prompts=list(prompts), seeds=list(seeds), psnr_db_mean=statistics.fmean(psnr),
                               psnr_db_p10=quantile(psnr, 0.1), psnr_db_min=min(psnr), rounds=rounds, target_met=met)
    s = result.schedule
    s = s.model_copy(update={"quality": s.quality.model_copy(update={"measured": measured})})
    warnings = list(result.warnings)
    if met is False:
        warnings.append(f"after {rounds} verify rounds the plan still misses {target.name} on {n} held-out images "
                        f"(mean {measured.psnr_db_mean:.2f} dB, p10 {measured.psnr_db_p10:.2f} dB); lower the target or re-profile")
    say(f"verify: {n} held-out images, mean {measured.psnr_db_mean:.2f} dB, p10 {measured.psnr_db_p10:.2f} dB, "
        f"min {measured.psnr_db_min:.2f} dB; {rounds} round(s), {time.perf_counter() - t0:.1f} s"
        + ("" if target is None else f"; target ({target.name}) {'met' if met else 'MISSED'}"))
    return type(result)(schedule=s, warnings=tuple(warnings), problem=result.problem)

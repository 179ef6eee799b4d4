"""What ``parastep plan`` asks for, checked, and the plan it gets (docs/design.md §3, §8).

- :func:`request_from_args`: the command line's arguments checked (one-line ``UserError``) and
  the profile loaded, adapted to the requested steps and window (``_adapt``: a prior's tables
  re-derived) and, with ``--interconnect``, priced by that preset
  (``profiles.interconnects.with_interconnect``): a :class:`PlanRequest`;
- :func:`make_plan`: the plan for a request (``plan.plan_schedule``), over smaller world sizes too
  with ``--try-fewer-gpus``; the preset is recorded in the schedule (``profile.interconnect``) so
  ``simulate`` prices it as the plan did.

No executor, no torch: ``plan --verify`` (``profiler.verify``) adds the measurement on top.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Optional

from ..errors import UserError
from ..profiles.interconnects import with_interconnect
from ..profiles.io import resolve_profile
from ..profiles.model import Prior, Profile, recalibrate_command
from .problem import default_max_window


def _derivable(profile: Profile) -> bool:
    """Can the deviation and propagation tables be re-derived (prior rules with parameters)?"""
    parts = (profile.provenance.deviation, profile.provenance.propagation)
    return all(isinstance(p, Prior) and p.params for p in parts)


def _adapt(profile: Profile, *, num_steps: int, max_window: int) -> Profile:
    """The profile for T steps and windows up to J: itself, a re-derived prior, or a refusal."""
    if num_steps == profile.num_steps and max_window <= profile.max_window:
        return profile
    if not _derivable(profile):
        if num_steps != profile.num_steps:
            raise UserError(f"profile '{profile.name}' was measured for T={profile.num_steps} steps; re-profile with --steps {num_steps} (or plan with --steps {profile.num_steps})")
        raise UserError(f"profile '{profile.name}' holds windows up to {profile.max_window} steps; re-profile with --max-window {max_window} (or pass --max-window {profile.max_window})")
    from ..profiles.priors import derive_for_steps

    try:
        return derive_for_steps(profile, num_steps=num_steps, max_window=max(max_window, profile.max_window))
    except ValueError as exc:
        raise UserError(str(exc)) from None


@dataclass(frozen=True)
class PlanRequest:
    """What ``parastep plan``'s arguments ask for, checked: the (adapted) profile and the statement."""

    profile: Profile
    sha256: str
    world_size: int
    max_window: int
    budget: Optional[float]
    coverage: Optional[float]
    min_psnr_db: Optional[float]
    policy: str
    warmup: Optional[int]
    solver: str
    options: object
    allow_split: bool = True
    allow_batch: bool = True
    try_fewer_gpus: bool = False
    interconnect: Optional[str] = None    # --interconnect: recorded in the schedule (simulate prices as the plan did)
    relax: bool = True                    # --min-psnr plans to the predicted share (plan.relaxed_plan); --per-image-bound: off


def request_from_args(args) -> PlanRequest:
    """Check the arguments and load/adapt the profile (one-line UserError on bad input)."""
    from .options import SolverOptions

    if args.model is None and args.profile is None:
        raise UserError("plan needs --model NAME or --profile FILE; pass one")
    per_image = bool(getattr(args, "per_image_bound", False))
    if per_image and args.min_psnr is None:
        raise UserError("--per-image-bound applies to --min-psnr; pass --min-psnr DB or drop it")
    profile, sha = resolve_profile(args.model, args.profile)
    G = args.gpus
    T = args.steps if args.steps is not None else profile.num_steps
    # default max window (plan.default_max_window): one offset per GPU, or with a batch curve every
    # window the profile holds, capped at what the profile holds. For a prior that cap is the evidence
    # behind it (a prior must not plan windows longer than anything measured: at 128 GPUs an uncapped
    # prior planned "1 forward + a 36-step reuse chain"); --max-window beyond it re-derives the
    # prior's tables, with a warning.
    allow_batch = getattr(args, "batch", "auto") != "off"
    J = args.max_window if args.max_window is not None else default_max_window(profile, world_size=G, allow_batch=allow_batch,
                                                                               policy=args.policy)
    if args.warmup is not None and args.warmup >= T:
        raise UserError(f"--warmup {args.warmup} must be less than the number of steps ({T}); pass a smaller --warmup")
    if args.policy != "optimal" and (args.budget is not None or args.min_psnr is not None):
        raise UserError("--budget/--min-psnr apply to --policy optimal; the fixed plan's error is set by --warmup: drop the budget or use --policy optimal")
    if J > profile.max_window and _derivable(profile):
        print(f"parastep: warning: --max-window {J} is beyond the {profile.max_window} steps the prior '{profile.name}' "
              "was built for: its longer windows are extrapolated, not evidence", file=sys.stderr)
    profile = _adapt(profile, num_steps=T, max_window=J)
    if args.interconnect is not None:
        profile = with_interconnect(profile, args.interconnect, world_size=G)
    if G >= 2:
        try:
            profile.comm_entry(G)
        except ValueError as exc:
            raise UserError(f"{exc}; pass --interconnect NAME or re-profile with --gpus {G}") from None
    budget = args.budget
    coverage = args.coverage
    if coverage is not None and not (math.isfinite(coverage) and 0 < coverage <= 1):
        raise UserError(f"--coverage {coverage} must be in (0, 1]; pass e.g. --coverage 0.9")
    if coverage is not None and budget is None and args.min_psnr is None:
        raise UserError("--coverage applies to --min-psnr or --budget; pass one of them")
    if args.min_psnr is not None:
        if not math.isfinite(args.min_psnr):
            raise UserError(f"--min-psnr {args.min_psnr} is not a finite number of dB; pass e.g. --min-psnr 35")
        if profile.calibration is None:
            raise UserError(f"--min-psnr needs a profile with a PSNR calibration and '{profile.name}' has none; calibrate it where its model runs ('{recalibrate_command(G)}') or pass --budget")
        budget = profile.calibration.at(G).deviation_for_psnr(args.min_psnr)
        coverage = 0.9 if coverage is None else coverage
    options = SolverOptions(time_limit_s=args.time_limit_s, workers=args.workers, seed=args.seed,
                            deterministic=bool(getattr(args, "deterministic", False)))
    return PlanRequest(profile=profile, sha256=sha, world_size=G, max_window=J, budget=budget, coverage=coverage,
                       min_psnr_db=args.min_psnr, policy=args.policy, warmup=args.warmup, solver=args.solver, options=options,
                       allow_split=getattr(args, "cfg_split", "auto") != "off", allow_batch=allow_batch,
                       try_fewer_gpus=bool(getattr(args, "try_fewer_gpus", False)), interconnect=args.interconnect,
                       relax=not per_image)


def make_plan(req: PlanRequest, *, budget: Optional[float] = None, fixed_bound_factor: Optional[float] = None,
              measured_target_db: Optional[float] = None):
    """Plan ``req`` (``budget`` overrides the request's, e.g. a re-plan after a measurement, and
    ``measured_target_db`` the target a plan the calibration measured must meet: ``plan_schedule``).

    ``--try-fewer-gpus``: also plan every smaller world size that is not dominated window by window
    (``plan.world_size_candidates``; same quality statement, default bounds from the hand plan on all
    ``--gpus``) and keep the fastest; a tie keeps the smaller world. One solve per candidate."""
    from dataclasses import replace

    from .plan import plan_schedule, world_size_candidates

    def one(world_size: int):
        b = req.budget if budget is None else budget
        if budget is None and req.min_psnr_db is not None and world_size != req.world_size:
            b = req.profile.calibration.at(world_size).deviation_for_psnr(req.min_psnr_db)    # each world size its own calibration
        res = plan_schedule(req.profile, profile_sha256=req.sha256, world_size=world_size, max_window=req.max_window,
                            budget=b, coverage=req.coverage, min_psnr_db=req.min_psnr_db,
                            policy=req.policy, warmup=req.warmup, solver=req.solver, options=req.options,
                            fixed_bound_factor=fixed_bound_factor, allow_split=req.allow_split, allow_batch=req.allow_batch,
                            fixed_world_size=req.world_size if req.policy == "optimal" else None,
                            measured_target_db=measured_target_db, relax=req.relax)
        if req.interconnect is None:
            return res
        s = res.schedule
        return replace(res, schedule=s.model_copy(update={"profile": s.profile.model_copy(update={"interconnect": req.interconnect})}))

    if not req.try_fewer_gpus or req.policy != "optimal":
        return one(req.world_size)
    sizes = world_size_candidates(req.profile, world_size=req.world_size, max_window=req.max_window, allow_split=req.allow_split,
                                  allow_batch=req.allow_batch)
    print(f"parastep plan: --try-fewer-gpus: planning world sizes {sizes} (the others are dominated window by window)", file=sys.stderr)
    results = [one(g) for g in sizes]
    best = min(results, key=lambda r: (r.schedule.latency.predicted_s, r.schedule.world_size))
    if best.schedule.world_size < req.world_size:
        full = next((r for r in results if r.schedule.world_size == req.world_size), None)
        vs = f" vs {full.schedule.latency.predicted_s:.4g} s on all {req.world_size}" if full is not None else ""
        note = (f"planned on {best.schedule.world_size} of the {req.world_size} GPUs: predicted {best.schedule.latency.predicted_s:.4g} s{vs} "
                f"(more ranks cost more in exchanges than they save); run it with {best.schedule.world_size} ranks")
        best = replace(best, warnings=best.warnings + (note,))
    return best

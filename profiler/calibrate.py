"""PSNR calibration of a profile's per-image quality model (docs/design.md §2, §3).

Verification plans are the plans the optimizer picks (``sample_schedules``): for each world size,
the default plan (every sample no worse than under the fixed plan), optimal plans at per-image
bounds spread log-uniformly around the fixed plan's own per-sample errors with coverage 0.9 and 1,
and the fixed plan at random warm-ups. ``executor.evaluate.run_schedule_local`` runs one in ONE process (the executor's
hooks with ``LocalExchange``: a schedule's output does not depend on where its offsets run) on the
profile's own calibration samples, so each image n has the planner's prediction E_n (the sum over
the plan's windows of sample n's output error, ``predicted_per_sample``) and a measured PSNR.

``fit_calibration`` is split conformal: the central line ``psnr_n = intercept - slope * log10(E_n)``
is fitted by least squares on the (plan, image) points of the bootstrap plans, and the residuals
(measured minus central) of the optimizer's ``--min-psnr`` picks of the sweeps (``sweep_schedules``)
give the per-image lower bound at level 0.9: the k-th smallest residual, k = floor((m + 1) x 0.1),
added to the central intercept; per world size, and pooled for world sizes without their own part
(before any sweep, the bootstrap plans are split at random into the line's and the residuals'
halves). For a new (plan, image) pair exchangeable with the held-out ones (a plan the optimizer
picks, one of the profile's calibration images), P(measured >= bound) >= 0.9.
After the sweeps, the plans the final calibration picks are measured as well (up to
``CHECK_ROUNDS`` times, for the picks their own measurement moves), kept as measured plans
but not refitted into the bound, so the ``--min-psnr`` plans users get are ones the calibration ran.
The residuals are kept in the profile, so ``plan`` states a plan's predicted per-image PSNR
distribution (central prediction + residual, over images and residuals). Too few informative
images (every sampled plan nearly lossless) makes ``calibrate_profile`` sample more plans, not
ask the user to. A non-positive slope is refused (the model does not predict quality).
"""

from __future__ import annotations

import json
import math
import random
import statistics
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional, Sequence

from ..errors import UserError
from ..planner.plan import predicted_per_sample
from ..executor.evaluate import psnr_db_per_sample, run_schedule_local
from ..profiles.model import Calibration, MeasuredPlan, Profile, conformal_lower_offset
from ..schedules.model import plan_identity
from .instrument import calibration_samples


@dataclass(frozen=True)
class VerificationRun:
    world_size: int
    policy: str
    budget: float
    predicted: list[float]                # planner's predicted output error, per sample
    speedup: float                        # planner's predicted speedup
    psnr_db: list[float]                  # measured, per sample
    windows: int
    pick: bool = False                    # an optimizer's --min-psnr pick of the sweep (else a bootstrap plan)
    key: str = ""                         # the plan's identity (``schedules.model.plan_identity``)
    plan_windows: tuple = ()              # the plan's windows as plain data (``Calibration.measured_windows``)
    fresh_psnr_db: tuple = ()             # measured on fresh images (none of the calibration's), picks only

    @property
    def mean_psnr_db(self) -> float:
        return statistics.fmean(self.psnr_db)


def plan_key(schedule) -> tuple:
    """A hashable identity of a plan: its world size and its windows as plain data (placements may
    hold CFG-split pairs, which are lists)."""
    return schedule.world_size, json.dumps([w.model_dump(mode="json") for w in schedule.windows], sort_keys=True)


def sample_schedules(profile: Profile, profile_sha256: str, *, count: int, world_sizes: Sequence[int] = (2, 4, 8),
                     seed: int = 0, fixed_share: float = 0.2, span_decades: tuple[float, float] = (-1.5, 1.0),
                     max_window: Optional[int] = None) -> list[Any]:
    """``count`` distinct schedules the optimizer picks (see the module docstring), cycling through
    ``world_sizes``."""
    from ..planner.options import SolverOptions
    from ..planner.plan import plan_schedule

    rng = random.Random(seed)
    T = profile.num_steps
    out: list[Any] = []
    seen: set = set()
    attempts = 0
    options = SolverOptions(workers=1, time_limit_s=3.0)     # near-optimal plans suffice to calibrate
    while len(out) < count and attempts < 20 * count:
        G = world_sizes[attempts % len(world_sizes)]
        first_round = attempts < len(world_sizes)
        attempts += 1
        J = min(G, profile.max_window) if max_window is None else min(max_window, profile.max_window)
        if first_round:
            res = plan_schedule(profile, profile_sha256=profile_sha256, world_size=G, max_window=J, options=options)
        elif rng.random() < fixed_share:
            W = rng.randint(1, min(15, T - 1))
            res = plan_schedule(profile, profile_sha256=profile_sha256, world_size=G, max_window=J, policy="fixed", warmup=W)
        else:
            fixed = plan_schedule(profile, profile_sha256=profile_sha256, world_size=G, max_window=J, policy="fixed")
            per = predicted_per_sample(fixed.schedule, profile)
            budget = statistics.median(per) * 10 ** rng.uniform(*span_decades)
            res = plan_schedule(profile, profile_sha256=profile_sha256, world_size=G, max_window=J, budget=budget,
                                coverage=rng.choice([0.9, 1.0]), options=options)
        _keep_if_new(res.schedule, seen, out)
    return out


def _keep_if_new(schedule, seen: set, out: list) -> None:
    """Append a lossy ``schedule`` whose plan is not in ``seen`` (and record it there)."""
    key = plan_key(schedule)
    if key not in seen and schedule.quality.predicted > 0:
        seen.add(key)
        out.append(schedule)


FRESH_SEED0 = 20_000       # fresh images' seeds from here (plan --verify's held-out ones start at 10 000)
FRESH_POOL = 2             # the fresh pool holds this many times the calibration images ...
FRESH_PER_PICK = 0.5       # ... and each pick runs on this share of the calibration images' count of them, in turn


@dataclass(frozen=True)
class FreshPool:
    """Images none of the calibration's (its prompts, other seeds) and their sequential outputs: the
    picks of the sweeps run on a rotating subset, which gives the share's conformal scores."""

    prompts: list
    seeds: list
    reference: Any
    per_pick: int

    def subset(self, k: int) -> list[int]:
        n = len(self.seeds)
        return [(k * self.per_pick + i) % n for i in range(self.per_pick)]


def fresh_pool(pipe, *, prompts: Sequence[Any], seeds: Sequence[int], num_steps: int,
               call_kwargs: Mapping[str, Any]) -> FreshPool:
    """``FRESH_POOL`` x N images: the calibration prompts in turn with seeds from ``FRESH_SEED0`` that
    are not calibration seeds, and their sequential outputs (one call)."""
    used = set(seeds)
    fresh_seeds, s = [], FRESH_SEED0
    for _ in range(FRESH_POOL * len(prompts)):
        while s in used:
            s += 1
        fresh_seeds.append(s)
        s += 1
    fresh_prompts = [prompts[k % len(prompts)] for k in range(len(fresh_seeds))]
    ref = run_schedule_local(pipe, None, num_steps=num_steps, prompts=fresh_prompts, seeds=fresh_seeds, call_kwargs=call_kwargs)
    return FreshPool(prompts=fresh_prompts, seeds=fresh_seeds, reference=ref,
                     per_pick=max(1, round(FRESH_PER_PICK * len(prompts))))


def verify(pipe, profile: Profile, schedules: Sequence[Any], *, prompts: Sequence[Any], seeds: Sequence[int],
           call_kwargs: Mapping[str, Any], progress: Optional[Callable[[str], None]] = None,
           pick: bool = False, fresh: Optional[FreshPool] = None, fresh_start: int = 0) -> list[VerificationRun]:
    """Run every schedule once (one batch of all samples) and measure per-image PSNR vs sequential.
    ``prompts``/``seeds`` must be the profile's calibration samples, in its order (predictions are
    per sample). With ``fresh``, schedule k also runs on the pool's subset ``fresh_start + k``."""
    if not schedules:
        return []
    T = schedules[0].num_steps
    ref = run_schedule_local(pipe, None, num_steps=T, prompts=prompts, seeds=seeds, call_kwargs=call_kwargs)
    runs = []
    for k, s in enumerate(schedules):
        out = run_schedule_local(pipe, s, num_steps=T, prompts=prompts, seeds=seeds, call_kwargs=call_kwargs)
        fresh_psnr: tuple = ()
        if fresh is not None:
            idx = fresh.subset(fresh_start + k)
            got = run_schedule_local(pipe, s, num_steps=T, prompts=[fresh.prompts[i] for i in idx],
                                     seeds=[fresh.seeds[i] for i in idx], call_kwargs=call_kwargs)
            fresh_psnr = tuple(psnr_db_per_sample(got, fresh.reference[idx]))
        runs.append(VerificationRun(fresh_psnr_db=fresh_psnr, world_size=s.world_size, policy=s.policy, budget=s.quality.budget,
                                    predicted=predicted_per_sample(s, profile), speedup=s.latency.speedup,
                                    psnr_db=psnr_db_per_sample(out, ref), windows=len(s.windows), pick=pick,
                                    key=plan_identity(s.world_size, s.windows),
                                    plan_windows=tuple(w.model_dump(mode="json") for w in s.windows)))
        if progress is not None and (k % 10 == 9 or k == len(schedules) - 1):
            progress(f"verify: {k + 1}/{len(schedules)} schedules")
    return runs


def _ranks(values: Sequence[float]) -> list[float]:
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2.0
        i = j + 1
    return ranks


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman rank correlation (average ranks for ties)."""
    ra, rb = _ranks(a), _ranks(b)
    ma, mb = statistics.fmean(ra), statistics.fmean(rb)
    num = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    den = math.sqrt(sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb))
    return num / den if den > 0 else 0.0


def fit_line(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """Least squares ``y = a + b x``: (a, b)."""
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    var = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var if var > 0 else 0.0
    return my - b * mx, b


def _points(runs: Sequence[VerificationRun], idx: Sequence[int], *, cap_db: float = 100.0) -> list[tuple[float, float]]:
    """(log10 E_n, psnr_n) of every image with a nonzero prediction and a PSNR below the cap."""
    return [(math.log10(e), p) for i in idx for e, p in zip(runs[i].predicted, runs[i].psnr_db) if e > 0 and p < cap_db]


CALIBRATION_LEVEL = 0.9   # conformal level of the per-image bound ``Calibration.psnr_db``


class TooFewPoints(ValueError):
    """The verification runs hold too few images with a nonzero predicted error (``calibrate_profile``
    samples more plans instead of asking the user to)."""


def _fit_part(line_runs: Sequence[VerificationRun], resid_runs: Sequence[VerificationRun], *, level: float,
              what: str) -> tuple[Calibration, dict]:
    """The central line by least squares on ``line_runs``' images, the conformal offset at ``level``
    from ``resid_runs``' images (disjoint plans). TooFewPoints / ValueError as ``fit_calibration``."""
    fit_pts, held_pts = _points(line_runs, range(len(line_runs))), _points(resid_runs, range(len(resid_runs)))
    need = math.ceil((1 - 1e-12) / (1 - level)) - 1     # the least m with floor((m + 1)(1 - level)) >= 1
    if len(fit_pts) < 3 or len(held_pts) < need:
        raise TooFewPoints(f"calibration{what}: {len(fit_pts)} + {len(held_pts)} images with a nonzero predicted error, "
                           f"{need} held-out ones needed for a bound at level {level:g}")
    a_central, b = fit_line([x for x, _ in fit_pts], [y for _, y in fit_pts])
    if not b < 0:
        raise ValueError(f"measured PSNR does not fall with the predicted error on the verification runs{what}; "
                         "the profile's quality model does not predict quality")
    slope = -b
    residuals = sorted(y - (a_central - slope * x) for x, y in held_pts)
    q = conformal_lower_offset(residuals, level)
    rho = spearman([x for x, _ in held_pts], [y for _, y in held_pts]) if len(held_pts) > 1 else 0.0
    mae = statistics.median(abs(r) for r in residuals)
    met = sum(1 for r in residuals if r >= q) / len(residuals)
    picks = sum(1 for r in resid_runs if r.pick)
    info = {"central_intercept_db": a_central, "conformal_offset_db": q, "level": level, "slope_db_per_decade": slope,
            "fit_runs": len(line_runs), "held_out_runs": len(resid_runs), "held_out_picks": picks,
            "fit_images": len(fit_pts), "held_out_images": len(held_pts), "spearman_held_out": rho,
            "median_abs_error_db": mae, "held_out_images_at_or_above_bound": met}
    source = (f"the optimizer's --min-psnr picks{what}" if picks == len(resid_runs) else
              "verification plans the optimizer picks (default, per-image bounds, fixed)")
    cal = Calibration(
        intercept_db=a_central + q, slope_db_per_decade=slope, fitted_on=len(line_runs), spearman=rho,
        median_abs_error_db=mae, central_intercept_db=a_central, level=level, residuals_db=residuals,
        how=(f"split conformal, per image: least squares of PSNR (output vs sequential, same prompt and seed) on log10 of "
             f"the planner's predicted error for that image over {len(fit_pts)} images of {len(line_runs)} plans: central "
             f"intercept {a_central:.2f} dB, slope {slope:.2f} dB per decade; residuals of the {len(held_pts)} images of "
             f"{len(resid_runs)} other plans ({source}): the k-th smallest, k = floor((m + 1)(1 - {level:g})), is "
             f"{q:+.2f} dB, so the bound holds for a new (plan, image) pair like these with probability >= {level:g}; "
             f"held-out Spearman {rho:.3f}, median |residual| {mae:.2f} dB"),
    )
    return cal, info


def fit_calibration(runs: Sequence[VerificationRun], *, seed: int = 0, level: float = CALIBRATION_LEVEL) -> tuple[Calibration, dict]:
    """Split conformal calibration (module docstring).

    Without picks (``VerificationRun.pick``): the central line on the images of a random half of the
    plans, residuals (measured minus central) on the images of the other half, the per-image lower
    bound at ``level`` = central + the finite-sample conformal quantile of those residuals
    (``conformal_lower_offset``).

    With picks (the optimizer's ``--min-psnr`` plans of the sweeps): the central line on the
    bootstrap plans only, and the residuals of every pick, so the bound is set by the plans users
    get and no bad pick can hide in the line's half. Pooled over world sizes, and per world size G
    (Mondrian: G's bootstrap plans fit G's line, G's picks give its residuals), kept in
    ``Calibration.by_world_size``. A world size whose part cannot be fitted uses the pooled one
    (``info["world_sizes_skipped"]`` says why). The line does not move as picks are added, so a
    pick that met the bound never loosens it (``conformal_lower_offset``)."""
    picks = [r for r in runs if r.pick]
    boot = [r for r in runs if not r.pick]
    if not picks:
        idx = list(range(len(runs)))
        random.Random(seed).shuffle(idx)
        half = len(idx) // 2
        if half < 3:
            raise TooFewPoints(f"calibration needs at least 6 verification runs, got {len(runs)}")
        cal, info = _fit_part([runs[i] for i in idx[:half]], [runs[i] for i in idx[half:]], level=level, what="")
        return cal, info
    cal, info = _fit_part(boot, picks, level=level, what="")
    parts: dict[int, Calibration] = {}
    skipped: dict[int, str] = {}
    per_g: dict[int, dict] = {}
    for G in sorted({r.world_size for r in picks}):
        try:
            parts[G], per_g[G] = _fit_part([r for r in boot if r.world_size == G], [r for r in picks if r.world_size == G],
                                           level=level, what=f" at G = {G}")
        except (TooFewPoints, ValueError) as exc:
            skipped[G] = str(exc)
    info.update({"world_sizes": per_g, "world_sizes_skipped": skipped})

    def scored(c: Calibration, runs: Sequence[VerificationRun]) -> Calibration:
        return c.model_copy(update={"share_scores": share_scores(c, runs), "own_share_scores": share_scores(c, runs, own=True)})

    parts = {G: scored(c, [r for r in picks if r.world_size == G]) for G, c in parts.items()}
    cal = scored(cal, picks)
    return with_measured(cal.model_copy(update={"by_world_size": parts, "measured_plans": {}, "measured_windows": {}}),
                         runs), info


def share_scores(cal: Calibration, picks: Sequence[VerificationRun], *, own: bool = False) -> list[float]:
    """Sorted conformal scores of the predicted share: for each pick and each fresh image it ran on,
    the pick's predicted share (``Calibration.predicted_share`` under ``cal``; with ``own``, from
    the pick's own residuals on the calibration images, as a plan the calibration ran is stated) at
    or above what that image measured. A calibrated share makes them uniform; a share that overstates new images (the
    optimizer fits its plans to the calibration images' own errors) pushes them up, and
    ``Calibration.required_share`` asks for that much more."""
    out = []
    for r in picks:
        if r.fresh_psnr_db and any(e > 0 for e in r.predicted):
            out += cal.predicted_shares(r.predicted, r.fresh_psnr_db, r.psnr_db if own else None)
    return sorted(out)


def with_measured(cal: Calibration, runs: Sequence[VerificationRun]) -> Calibration:
    """``cal`` that also keeps ``runs``' plans as measured (PSNR per image, and windows where the run
    has them), by identity; the bound is not refitted."""
    measured = {**cal.measured_plans, **{r.key: list(r.psnr_db) for r in runs if r.key}}
    plans = {**cal.measured_windows, **{r.key: MeasuredPlan(world_size=r.world_size, windows=list(r.plan_windows))
                                        for r in runs if r.key and r.plan_windows}}
    return cal.model_copy(update={"measured_plans": measured, "measured_windows": plans})


def verification_world_sizes(gpus: int) -> tuple[int, ...]:
    """World sizes whose plans calibrate a profile: 2, 4 and 8 up to ``--gpus``, and ``--gpus``
    itself; 1 for a one-GPU profile (its plans reuse and batch)."""
    if gpus <= 1:
        return (1,)
    return tuple(sorted({g for g in (2, 4, 8) if g <= gpus} | {gpus}))


def calibration_world_sizes(profile: Profile, gpus: int) -> tuple[int, ...]:
    """The world sizes ``calibrate_profile`` plans at: ``verification_world_sizes(gpus)`` and every
    one ``profile`` is already calibrated at, so a recalibration adds world sizes and never drops
    one (``plan`` names '--recalibrate P --gpus G' to add G)."""
    kept = profile.calibration.calibrated_world_sizes() if profile.calibration is not None else []
    return tuple(sorted(set(verification_world_sizes(gpus)) | set(kept)))


MORE_PLAN_ROUNDS = 2      # calibrate_profile's extra bootstrap rounds (2x, then 4x the plans) while too few images are lossy
SWEEP_TARGETS_DB = tuple(25.0 + 2.5 * k for k in range(9))     # --min-psnr 25, 27.5, ..., 45: the qualities users ask for
SWEEP_COVERAGE = 0.9      # plan --min-psnr's default coverage
SWEEP_ROUNDS = 4          # at most this many sweeps; each plans every (G, target) under the calibration fitted so far
SWEEP_SETTLED_DB = 0.25   # ... and they stop once no world size's bound moved by more than this in a sweep
CHECK_ROUNDS = 4          # then the plans the final calibration picks are measured (not refitted), up to this many times


def sweep_schedules(profile: Profile, profile_sha256: str, *, world_sizes: Sequence[int],
                    targets_db: Sequence[float] = SWEEP_TARGETS_DB, seen: set) -> list[Any]:
    """The optimizer's plans for ``plan --gpus G --min-psnr X`` (default window and split, coverage
    0.9) for every G and target under ``profile.calibration``, and the default plan at each G; only
    lossy plans not in ``seen`` (which this updates). Without the measured alternatives
    (``planner.plan.measured_alternative``): the sweeps calibrate the model's own picks."""
    from ..planner.options import SolverOptions
    from ..planner.plan import plan_schedule

    options = SolverOptions(workers=1, seed=0, deterministic=True, time_limit_s=3.0)
    out: list[Any] = []
    for G in world_sizes:
        cal = profile.calibration.at(G)
        statements = [{}] + [{"budget": cal.deviation_for_psnr(x), "coverage": SWEEP_COVERAGE, "min_psnr_db": x}
                             for x in targets_db]
        for st in statements:
            _keep_if_new(plan_schedule(profile, profile_sha256=profile_sha256, world_size=G, options=options, measured=False,
                                      **st).schedule,
                         seen, out)
    return out


def _bounds_db(cal: Calibration, sizes: Sequence[int]) -> list[float]:
    """The per-image bound's intercept at each world size (its part, or the pooled one)."""
    return [cal.at(g).intercept_db for g in sizes]


def calibration_cost_forwards(*, num_steps: int, bootstrap_plans: int, picks: int, fresh_picks: int = 0) -> int:
    """Forwards of a calibration, each one call on all N calibration samples' worth of images: the
    sequential reference and every verification plan run once, T each (a plan's windows compute T
    forwards in all); with ``fresh_picks`` (the sweeps' picks), the fresh pool's reference
    (``FRESH_POOL`` N images) and each of those picks on ``FRESH_PER_PICK`` N fresh images."""
    fresh = (FRESH_POOL + FRESH_PER_PICK * fresh_picks) if fresh_picks else 0
    return round(num_steps * (1 + bootstrap_plans + picks + fresh))


def calibrate_profile(pipe, profile, *, settings, count: int, say) -> Profile:
    """``profile`` with a per-image PSNR calibration: ``count`` bootstrap plans (``sample_schedules``)
    give a first fit; then sweeps of the optimizer's ``--min-psnr`` picks at every calibrated world
    size (``sweep_schedules``), each measured and refitted, until a sweep picks no plan not yet
    measured (or ``SWEEP_ROUNDS``). All plans run on the profile's own calibration samples (each
    image's prediction is per sample). The world sizes: ``verification_world_sizes(settings.gpus)``
    and every one ``profile`` is already calibrated at (a recalibration adds, never drops)."""
    import time

    from ..executor.launch import cpu_threads
    from ..profiles.io import dump_profile
    from ..profiles.model import Measured, profile_sha256

    if profile.output_errors is None:
        raise UserError(f"profile '{profile.name}' has no per-sample quality model (output_errors) to calibrate; re-profile it")
    sha = profile_sha256(dump_profile(profile))
    sizes = calibration_world_sizes(profile, settings.gpus)
    for g in sizes:
        try:
            profile.comm_entry(g)
        except ValueError:
            raise UserError(f"profile '{profile.name}' has no exchange costs for {g} ranks, and its calibration plans on "
                            f"{', '.join(map(str, sizes))} ranks; add --retime --gpus {max(sizes)} (with --interconnect NAME for "
                            "ranks beyond this machine), or profile anew with --gpus 2 or more") from None
    prompts, seeds = calibration_samples(pipe, profile)
    T = profile.num_steps
    per_sweep = len(sizes) * (len(SWEEP_TARGETS_DB) + 1)
    most = calibration_cost_forwards(num_steps=T, bootstrap_plans=count, picks=(SWEEP_ROUNDS + CHECK_ROUNDS) * per_sweep,
                                     fresh_picks=SWEEP_ROUNDS * per_sweep)
    say(f"calibration: {count} bootstrap plans, then up to {SWEEP_ROUNDS} sweeps of the optimizer's --min-psnr "
        f"{SWEEP_TARGETS_DB[0]:g}..{SWEEP_TARGETS_DB[-1]:g} dB picks at G = {', '.join(map(str, sizes))} and up to "
        f"{CHECK_ROUNDS} checks of the final picks, each plan run once "
        f"on the {len(prompts)} calibration images (and each sweep's pick on "
        f"{max(1, round(FRESH_PER_PICK * len(prompts)))} of {FRESH_POOL * len(prompts)} fresh ones): {calibration_cost_forwards(num_steps=T, bootstrap_plans=count, picks=0)} "
        f"forwards of {len(prompts)} images before the sweeps, at most {most} in all")
    runs: list[VerificationRun] = []
    done: set = set()
    t0 = time.perf_counter()
    cal = None
    for attempt in range(MORE_PLAN_ROUNDS + 1):     # too few informative images: sample more plans, never ask the user
        schedules = [s for s in sample_schedules(profile, sha, count=count * 2 ** attempt, world_sizes=sizes, seed=attempt)
                     if plan_key(s) not in done]
        done.update(plan_key(s) for s in schedules)
        say(f"verify: {len(schedules)} {'more ' if attempt else ''}distinct plans for world sizes {list(sizes)}")
        with cpu_threads(pipe, settings.threads):
            runs += verify(pipe, profile, schedules, prompts=prompts, seeds=seeds, call_kwargs=settings.call_kwargs, progress=say)
        try:
            cal, info = fit_calibration(runs)
            break
        except TooFewPoints as exc:
            if attempt == MORE_PLAN_ROUNDS or (attempt and not schedules):     # no new plan to be had: stop
                raise UserError(f"{exc} after {len(runs)} plans: the optimizer's plans on this profile are (nearly) "
                                "lossless, so there is no quality to calibrate; plan with --budget") from None
            say(f"{exc}; sampling more plans")
        except ValueError as exc:
            raise UserError(str(exc)) from None
    per_plan_s = (time.perf_counter() - t0) / max(1, len(runs))
    say(f"bootstrap fit: central {cal.central_intercept_db:.2f} dB, slope {cal.slope_db_per_decade:.2f} dB per decade; "
        f"{per_plan_s:.1f} s per plan here, so each sweep of up to {len(sizes) * (len(SWEEP_TARGETS_DB) + 1)} plans takes "
        f"at most {per_plan_s * len(sizes) * (len(SWEEP_TARGETS_DB) + 1):.0f} s")
    # images the calibration has not seen, for the conformal scores of the predicted share: the
    # optimizer fits its picks to the calibration images' own errors, which those cannot show
    with cpu_threads(pipe, settings.threads):
        pool = fresh_pool(pipe, prompts=prompts, seeds=seeds, num_steps=T, call_kwargs=settings.call_kwargs)
    picks = 0
    converged = False
    for rnd in range(SWEEP_ROUNDS):
        current = profile.model_copy(update={"calibration": cal})
        new = sweep_schedules(current, sha, world_sizes=sizes, seen=done)
        if not new:
            converged = True
            break
        say(f"sweep {rnd + 1}: {len(new)} new plans (the optimizer's picks under the calibration so far)")
        with cpu_threads(pipe, settings.threads):
            runs += verify(pipe, profile, new, prompts=prompts, seeds=seeds, call_kwargs=settings.call_kwargs, progress=say,
                           pick=True, fresh=pool, fresh_start=picks)
        picks += len(new)
        before = _bounds_db(cal, sizes)
        try:
            cal, info = fit_calibration(runs)
        except ValueError as exc:
            raise UserError(str(exc)) from None
        moved = max(abs(a - b) for a, b in zip(before, _bounds_db(cal, sizes)))
        if rnd and moved <= SWEEP_SETTLED_DB:      # the first sweep replaces the bootstrap bound; later ones refine it
            say(f"sweep {rnd + 1}: every world size's bound moved by at most {moved:.2f} dB: settled")
            converged = True
            break
    # the plans users now get: each refit above can change the picks, and a pick the calibration
    # never ran would be stated by G's pooled residuals, not its own. So the final picks are
    # measured too, kept as measured plans but not refitted into the bound (which would change the
    # picks again): at plan time their share reads their own residuals (and a per-image bound's
    # measured miss is re-planned), which moves some picks; those are measured in the next check
    checked = unchecked = 0
    for rnd in range(CHECK_ROUNDS + 1):
        final = sweep_schedules(profile.model_copy(update={"calibration": cal}), sha, world_sizes=sizes, seen=done)
        if not final or rnd == CHECK_ROUNDS:
            unchecked = len(final)
            break
        say(f"check {rnd + 1}: {len(final)} plans the final calibration picks, measured (kept as measured plans, "
            "not refitted into the bound)")
        with cpu_threads(pipe, settings.threads):
            checks = verify(pipe, profile, final, prompts=prompts, seeds=seeds, call_kwargs=settings.call_kwargs,
                            progress=say, pick=True)
        cal = with_measured(cal, checks)
        checked += len(checks)
    parts = ", ".join(f"G = {g}: {c.central_intercept_db:.2f} - {c.slope_db_per_decade:.2f} log10(E), offset "
                      f"{c.intercept_db - c.central_intercept_db:+.2f} dB over {len(c.residuals_db)} residuals, "
                      + (f"predicted share >= {c.required_share(SWEEP_COVERAGE):.3f} for {SWEEP_COVERAGE:g} of new images "
                         f"({len(c.share_scores)} fresh-image scores)" if c.required_share(SWEEP_COVERAGE) is not None
                         else f"too few fresh-image scores ({len(c.share_scores)}) for a share statement")
                      for g, c in sorted(cal.by_world_size.items()))
    say(f"calibration: {len(runs) + checked} plans ({picks} picks, {checked} checked), "
        f"{calibration_cost_forwards(num_steps=T, bootstrap_plans=len(runs) - picks, picks=picks + checked, fresh_picks=picks)} "
        f"forwards, {time.perf_counter() - t0:.0f} s; pooled psnr >= {cal.intercept_db:.2f} - {cal.slope_db_per_decade:.2f} "
        f"log10(E) per image at level {cal.level:g} ({len(cal.residuals_db)} held-out residuals, median |residual| "
        f"{cal.median_abs_error_db:.2f} dB){'; ' + parts if parts else ''}"
        + ("" if converged else f"; the bound was still moving after {SWEEP_ROUNDS} sweeps")
        + (f"; {unchecked} re-planned picks left unmeasured after {CHECK_ROUNDS} checks" if unchecked else ""))
    for g, why in info.get("world_sizes_skipped", {}).items():
        say(f"calibration: G = {g} uses the pooled calibration ({why})")
    old = profile.provenance
    dev = old.deviation
    prov = old.model_copy(update={"calibration": Measured(
        device=dev.device if isinstance(dev, Measured) else "unknown", date=dev.date if isinstance(dev, Measured) else "",
        prompts=sorted({str(p) for p in prompts}), seeds=sorted(set(seeds)),
        packages=dev.packages if isinstance(dev, Measured) else {},
        notes=(f"{len(runs) + checked} verification plans ({len(runs) - picks} bootstrap, {picks} --min-psnr picks of the "
               f"sweeps{'' if converged else ', not converged'}, {checked} final picks checked) run in one process on the calibration samples (quality does not "
               "depend on hardware)"))})
    return profile.model_copy(update={"calibration": cal, "provenance": prov})

"""Profile -> checked ``Schedule``: the planner's public entry point (``plan_schedule``).

Steps: choose the budget (given, or the fixed plan's own error) and its integer scale, build the
problem, solve it (CP-SAT or the DP oracle), decode the path into windows, fill in every field of
the schedule, then check it twice before it is returned: ``schedules.check.violations`` (the
invariants of DESIGN §1) and ``verify_schedule``, an independent recomputation of the schedule's
latency and error from its own windows and the profile (OR-Tools sample style). A failure of
either check is a bug in the planner, never the user's fault: ``RuntimeError``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Optional, Sequence

from ..errors import UserError
from ..profiles.model import Profile
from ..schedules.check import implied_totals, violations
from ..schedules.model import (
    ExactWindow, Latency, ParallelWindow, ProfileRef, Quality, ReuseWindow, Schedule, Solver, Window,
)
from .fixed import FixedWindow, default_warmup, fixed_error, fixed_error_units, fixed_latency_units, fixed_windows
from .problem import (
    DEFAULT_LATENCY_UNITS_PER_S, Problem, budget_units_for, build_problem, candidate_windows, error_scale_for,
    error_units,
)

SolverName = Literal["cp-sat", "dp"]
Policy = Literal["optimal", "fixed"]


@dataclass(frozen=True)
class PlanResult:
    schedule: Schedule
    warnings: tuple[str, ...]
    problem: Optional[Problem]            # None for the fixed policy


@dataclass(frozen=True)
class _Chosen:
    """A decoded window, whatever produced it."""

    start: int
    size: int
    kind: str
    predictor: Optional[str]
    placement: tuple[int, ...]
    latency_s: float                     # the planner's own numbers for this window
    error: float


def _to_window(c: _Chosen) -> Window:
    if c.kind == "exact":
        return ExactWindow(start=c.start)
    if c.kind == "parallel":
        return ParallelWindow(start=c.start, placement=list(c.placement), predictor=c.predictor)
    return ReuseWindow(start=c.start, size=c.size, predictor=c.predictor)


# ---- independent check ---------------------------------------------------------------------

def _window_size(w: Window, stop: int) -> int:
    return 1 if isinstance(w, ExactWindow) else stop - w.start


def recompute(schedule: Schedule, profile: Profile) -> tuple[float, float, list[float], list[float]]:
    """(latency_s, error, per-window latencies, per-window errors) of a schedule, recomputed from
    its windows with docs/cost-model.md written out here (not the planner's edge data)."""
    G = schedule.world_size
    fwd = profile.forward_time_s
    step = profile.compute.step_s + profile.compute.step_overhead_s
    lats, errs = [], []
    for w, (start, stop) in zip(schedule.windows, schedule.window_bounds()):
        size = _window_size(w, stop)
        if isinstance(w, ExactWindow):
            lats.append(fwd(1) + step)
            errs.append(0.0)
        elif isinstance(w, ReuseWindow):
            lats.append(w.size * step)
            errs.append(profile.window_deviation("reuse", start=start, size=w.size, predictor=w.predictor))
        else:
            per_rank = [sum(1 for r in w.placement if r == rank) for rank in range(G)]
            exchange = 0.0 if G == 1 else profile.exchange_time_s(G, size)
            lats.append((size - 1) * step + max(fwd(n) for n in per_rank) + exchange + size * step)
            errs.append(profile.window_deviation("parallel", start=start, size=size, predictor=w.predictor))
    if any(e is None for e in errs):
        raise RuntimeError("planner bug: a window has no deviation in the profile")
    return math.fsum(lats), math.fsum(errs), lats, errs


def verify_schedule(schedule: Schedule, profile: Profile) -> None:
    """Raise RuntimeError unless the schedule is valid and its declared numbers are its own."""
    problems = violations(schedule)
    if problems:
        raise RuntimeError(f"planner bug: emitted schedule breaks an invariant: {problems[0]}")
    step_kinds = [w.kind for w, (a, b) in zip(schedule.windows, schedule.window_bounds()) for _ in range(a, b)]
    for w in schedule.windows:
        if w.kind != "exact":
            back = 2 if w.predictor == "linear" else 1
            if any(step_kinds[w.start - d] == "reuse" for d in range(1, back + 1)):
                raise RuntimeError(f"planner bug: window at step {w.start} ({w.kind}, {w.predictor}) extrapolates from a reuse step's stand-in")
    latency_s, error, lats, errs = recompute(schedule, profile)
    if not math.isclose(latency_s, schedule.latency.predicted_s, rel_tol=1e-9, abs_tol=1e-12):
        raise RuntimeError(f"planner bug: declared latency {schedule.latency.predicted_s} s, recomputed {latency_s} s")
    q = schedule.quality
    if not math.isclose(error, q.predicted, rel_tol=1e-9, abs_tol=1e-300):
        raise RuntimeError(f"planner bug: declared error {q.predicted}, recomputed {error}")
    units = sum(math.ceil(e * q.error_units_per_unit) for e in errs)
    if units != q.predicted_units:
        raise RuntimeError(f"planner bug: declared {q.predicted_units} error units, recomputed {units}")
    s = schedule.solver
    if s.name != "fixed" and units > q.budget_units:
        raise RuntimeError(f"planner bug: {units} error units exceed the budget of {q.budget_units}")
    if s.objective is not None:
        lat_units = sum(round(x * s.latency_units_per_s) for x in lats)
        if lat_units != s.objective:
            raise RuntimeError(f"planner bug: solver objective {s.objective} latency units, recomputed {lat_units}")


# ---- smallest feasible budget ----------------------------------------------------------------

def smallest_feasible_budget(profile: Profile, *, world_size: int, max_window: int) -> tuple[float, int, float]:
    """(budget, budget_units, error_units_per_unit): the least budget whose integer instance is
    feasible (a min-error path over every candidate window, before any budget pruning). The
    freshness rule is relaxed here, which cannot matter: the all-exact plan has zero error and
    obeys it, so the least error is 0 on both graphs."""
    cands = candidate_windows(profile, world_size=world_size, max_window=max_window)
    T = profile.num_steps

    def min_error(weight) -> float:
        best = [math.inf] * (T + 1)
        best[0] = 0
        for (s, w, _k, _p, _pl, _l, err) in sorted(cands, key=lambda c: c[0]):
            v = best[s] + weight(err)
            if v < best[s + w]:
                best[s + w] = v
        return best[T]

    budget = min_error(lambda e: e)
    for _ in range(10):
        scale = error_scale_for(budget)
        need = min_error(lambda e: error_units(e, scale=scale))
        if budget_units_for(budget, scale=scale) >= need:
            return budget, int(need), scale
        budget = (need + 0.5) / scale
    raise RuntimeError("planner bug: no self-consistent smallest budget")


# ---- the entry point ---------------------------------------------------------------------------

def plan_schedule(profile: Profile, *, profile_sha256: str, world_size: int, max_window: Optional[int] = None,
                  budget: Optional[float] = None, min_psnr_db: Optional[float] = None, policy: Policy = "optimal",
                  warmup: Optional[int] = None, solver: SolverName = "dp", options=None,
                  latency_units_per_s: float = DEFAULT_LATENCY_UNITS_PER_S) -> PlanResult:
    """Plan ``profile.num_steps`` steps on ``world_size`` ranks.

    budget: bound on predicted output deviation; None = the fixed plan's own error (with
    ``warmup``, default ``default_warmup(T)``), in the fixed plan's own integer units: the bound
    then holds in integer units (so the fixed plan is feasible and the optimum never loses to it),
    and the float deviation may exceed the fixed plan's by at most one unit per fixed window.
    An explicit budget holds in floats too (window units are rounded up, the budget down).
    ``min_psnr_db`` is recorded in the schedule (the caller converts it to ``budget``).
    policy "fixed": the paper's hand plan (budget must then be None).
    """
    from .cpsat import SolverOptions

    options = options if options is not None else SolverOptions()
    T = profile.num_steps
    G = world_size
    J = max_window if max_window is not None else min(G, profile.max_window)
    if J > profile.max_window:
        raise UserError(f"--max-window {J} exceeds the profile's max_window={profile.max_window}; re-profile with --max-window {J} or pass a smaller --max-window")
    W = warmup if warmup is not None else default_warmup(T)
    if warmup is not None and not 1 <= warmup < T:
        raise UserError(f"--warmup {warmup} must be in 1..{T - 1} for {T} steps; pass a smaller --warmup")
    fixed = fixed_windows(profile, world_size=G, max_window=J, warmup=W)
    warnings: list[str] = []

    if policy == "fixed":
        if budget is not None:
            raise UserError("--budget/--min-psnr apply to --policy optimal; the fixed plan's error is set by --warmup: drop the budget or use --policy optimal")
        err = fixed_error(fixed)
        scale = error_scale_for(err)
        b_units = fixed_error_units(fixed, scale=scale)
        chosen = [_Chosen(f.start, f.size, f.kind, f.predictor, f.placement, f.latency_s, f.error) for f in fixed]
        lat_units = fixed_latency_units(fixed, scale=latency_units_per_s)
        solver_info = dict(name="fixed", status="NOT_SOLVED", objective=lat_units, bound=None, wall_s=0.0)
        schedule = _assemble(profile, profile_sha256=profile_sha256, world_size=G, max_window=J, policy="fixed", chosen=chosen,
                             budget=err, budget_units=b_units, scale=scale, min_psnr_db=None, solver_info=solver_info,
                             latency_units_per_s=latency_units_per_s, options=None)
        verify_schedule(schedule, profile)
        return PlanResult(schedule=schedule, warnings=tuple(warnings), problem=None)

    if budget is None:
        budget = fixed_error(fixed)
        scale = error_scale_for(budget)
        b_units = fixed_error_units(fixed, scale=scale)
    else:
        scale = error_scale_for(budget)
        b_units = budget_units_for(budget, scale=scale)
    problem = build_problem(profile, world_size=G, max_window=J, budget=budget, budget_units=b_units,
                            error_units_per_unit=scale, latency_units_per_s=latency_units_per_s)
    warnings.extend(problem.notes)
    hint = _path_of(problem, fixed)

    if solver == "dp":
        import time

        from .oracle import solve_dp

        t0 = time.perf_counter()
        res = solve_dp(problem)
        wall = time.perf_counter() - t0
        if res is None:
            _raise_infeasible(profile, world_size=G, max_window=J, budget=budget, budget_units=b_units, scale=scale)
        path = res.path
        solver_info = dict(name="dp", status="OPTIMAL", objective=res.latency_units, bound=res.latency_units, wall_s=wall)
    else:
        from .cpsat import solve_cpsat

        res = solve_cpsat(problem, options, hint=hint if b_units >= sum(problem.edges[i].error_units for i in hint) else ())
        if res.status == "INFEASIBLE":
            _raise_infeasible(profile, world_size=G, max_window=J, budget=budget, budget_units=b_units, scale=scale)
        if res.status == "MODEL_INVALID":
            raise RuntimeError(f"planner bug: CP-SAT rejected the model: {res.message}")
        if res.status not in ("OPTIMAL", "FEASIBLE"):
            raise UserError(f"CP-SAT found no plan within --time-limit {options.time_limit_s:g} s (status {res.status}); raise --time-limit or use --solver dp")
        if res.status == "FEASIBLE":
            warnings.append(f"CP-SAT stopped at the time limit ({options.time_limit_s:g} s) before proving optimality: "
                            f"plan latency {res.objective} units, best bound {res.bound} units; raise --time-limit, or use --solver dp (the exact DP, fast at this size)")
        path = res.path
        solver_info = dict(name="cp-sat", status=res.status, objective=res.objective, bound=res.bound, wall_s=res.wall_s)

    chosen = [_Chosen(e.start, e.size, e.kind, e.predictor, e.placement, e.latency_s, e.error)
              for e in (problem.edges[i] for i in path)]
    schedule = _assemble(profile, profile_sha256=profile_sha256, world_size=G, max_window=J, policy="optimal", chosen=chosen,
                         budget=budget, budget_units=b_units, scale=scale, min_psnr_db=min_psnr_db, solver_info=solver_info,
                         latency_units_per_s=latency_units_per_s, options=options if solver == "cp-sat" else None)
    verify_schedule(schedule, profile)
    return PlanResult(schedule=schedule, warnings=tuple(warnings), problem=problem)


def _path_of(problem: Problem, fixed: Sequence[FixedWindow]) -> tuple[int, ...]:
    """The fixed plan as a path of problem edges (a pruned window replaced by exact windows,
    which dominate it); empty if some window has no edge."""
    path = []
    for f in fixed:
        i = problem.edge_index(start=f.start, size=f.size, kind=f.kind, predictor=f.predictor)
        if i is not None:
            path.append(i)
            continue
        for s in range(f.start, f.start + f.size):
            j = problem.edge_index(start=s, size=1, kind="exact")
            if j is None:
                return ()
            path.append(j)
    return tuple(path)


def _raise_infeasible(profile: Profile, *, world_size: int, max_window: int, budget: float, budget_units: int, scale: float):
    least, least_units, least_scale = smallest_feasible_budget(profile, world_size=world_size, max_window=max_window)
    raise UserError(f"no plan meets budget {budget!r} ({budget_units} error units at {scale:g} units per deviation unit); "
                    f"the smallest feasible budget is {least!r} ({least_units} units at {least_scale:g}): pass --budget {least!r} or more")


def _assemble(profile: Profile, *, profile_sha256: str, world_size: int, max_window: int, policy: Policy,
              chosen: Sequence[_Chosen], budget: float, budget_units: int, scale: float, min_psnr_db: Optional[float],
              solver_info: dict, latency_units_per_s: float, options) -> Schedule:
    windows = [_to_window(c) for c in chosen]
    base = Schedule(model=profile.model, resolution_px=profile.resolution_px, scheduler=profile.scheduler,
                    guidance_scale=profile.guidance_scale, num_steps=profile.num_steps, world_size=world_size,
                    max_window=max_window, output_bytes=profile.output_bytes, policy=policy,
                    totals=implied_totals(windows, world_size=world_size, output_bytes=profile.output_bytes), windows=windows)
    latency_s = math.fsum(c.latency_s for c in chosen)
    error = math.fsum(c.error for c in chosen)
    predicted_units = sum(error_units(c.error, scale=scale) for c in chosen)
    sequential_s = profile.sequential_time_s()
    speedup = sequential_s / latency_s if latency_s > 0 else 1.0
    cal = profile.calibration
    quality = Quality(budget=budget, predicted=error, error_units_per_unit=scale, budget_units=budget_units,
                      predicted_units=predicted_units, min_psnr_db=min_psnr_db,
                      predicted_psnr_db=cal.psnr_db(error) if cal is not None else None)
    solver = Solver(**solver_info, latency_units_per_s=latency_units_per_s,
                    time_limit_s=options.time_limit_s if options is not None else None,
                    workers=options.resolved_workers() if options is not None else None,
                    seed=options.seed if options is not None else None)
    return base.model_copy(update=dict(
        profile=ProfileRef(name=profile.name, sha256=profile_sha256, prior_parts=profile.prior_parts()),
        quality=quality, latency=Latency(predicted_s=latency_s, sequential_s=sequential_s, speedup=speedup), solver=solver))

"""CP-SAT model of the planning problem: build / solve / decode as separate functions.

Per-image statements default to the Lagrangian branch and bound (branch.py), which proves
optimality on the shipped digits profile where this model stalls (measured there); CP-SAT is
``--solver cp-sat``, the continuation of ``--solver auto`` when the branch and bound has not proven
its plan, and the differential check of the branch and bound in the tests.

Variables (one family): ``x[i]`` (bool) = candidate window ``problem.edges[i]`` is chosen.

Constraints:
- flow: one chosen window leaves boundary 0, one enters boundary T, and at every interior boundary
  as many enter as leave (so the chosen windows form one path 0 -> T: a schedule);
- quality, per calibration sample n: sum of chosen error units of n <= n's bound; with a coverage
  below 1 each such constraint is enforced by a boolean ``within[n]`` and at least ``min_within``
  of them are true (the per-image statement the single-budget DP cannot express);
- freshness (problem.py): at each boundary b, a reuse window entering b excludes any parallel or
  reuse window leaving b; a ``linear`` window leaving b also excludes "exact window b-1 -> b after
  a reuse window entering b-1" (step b-2 would be a reuse step). Exactly one chosen window crosses
  every boundary, so these pairwise exclusions are the whole rule;
- covering (redundant, implied by the flow): every step lies in exactly one chosen window, one
  exactly-one constraint per step. It changes no solution but lets CP-SAT propagate a chosen window
  to all overlapping ones and strengthens its LP (see the measured limits below).

Objective: minimise the sum of chosen latency units.

Determinism: CP-SAT's portfolio of parallel workers races, so which of several equally good plans
comes back can vary run to run with ``workers > 1``. ``deterministic=True`` sets
``interleave_search`` (workers take turns in fixed-size batches), which with a fixed ``seed`` makes
the result a function of the input and ``workers``; one worker with a fixed seed is deterministic
too. The optimal *value* never depends on any of this. A time limit can still cut a run short at a
different point; for a reproducible result keep the default limit well above the solve time.

Before building, ``bounds.lagrangian_reduce`` drops edges that provably lie on no optimal plan
(Lagrangian and error-only bounds; exact) and supplies the best feasible path it met, which becomes
the solution hint together with the caller's hint (e.g. the fixed plan), whichever is faster.
``bounds.rounded_up_path`` (a DP with error units rounded up to ~2000 coarse levels: a heuristic,
always feasible, never claimed optimal) may supply a faster incumbent, which tightens the reduction.
The DP oracle never uses these reductions, so the differential tests also check them.

Measured limits (benchmarks/results/planner.md, sdxl prior, 2 shared cores, 2 workers): OPTIMAL in
0.02-0.7 s up to T = 200 (T = 200, G = 8 took about 6 s before the covering constraints) and on
``digits`` G = 4 (0.6 s solve; it stalled at the Lagrangian bound, 2 % below the optimum, before);
T = 1000, G = 2 in 0.2 s. At T = 1000 with G >= 8 the proof still does not finish in 10 s: the
covering constraints lift CP-SAT's bound from the Lagrangian (= LP of the flow model) bound, 0.4-0.9 %
below the optimum (the budget is spent in lumpy window-sized pieces), to within about 10 units
(1e-6 relative) of it in 2-3 s, but closing those last units takes search that does not end in
10-20 s, even with the exact optimum as hint (status FEASIBLE, with a warning; its plan is within
0.01 % of the optimum). With 2 workers on 2 cores the second thread runs LNS and the bound at
G = 64 sometimes stays at the Lagrangian one; 1 worker was better there in some runs, not all. Tried
without effect on that tail: linearization_level 2, symmetry_level 4, optimize_with_core,
optimize_with_lb_tree_search, objective shaving, add_lp_constraints_lazily off, 1/2/8 workers,
window-type count variables (latency depends only on kind and size) as objective, and covering
constraints *instead of* the flow (much worse). The DP oracle, pseudo-polynomial in the budget
units, solves the same instances exactly in under a second. On random profiles (tests/strategies.py,
one worker; measured before the covering constraints) T <= 30 with windows <= 8 solves in under 2 s,
but about 1 in 10 instances with T = 20..60 and windows up to 16 takes 2-20 s.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace as dc_replace
from typing import Optional, Sequence

from ortools.sat.python import cp_model

from .bounds import lagrangian_reduce, rounded_up_path, scaled_max_path
from .options import SolverOptions
from .problem import Problem


# the per-sample reductions before the model is built stop once they have taken this share of the
# time limit (measured: 20 of them took 23 s on a 1000-step, 20-image synthetic profile)
PREPROCESS_SHARE = 0.3


@dataclass(frozen=True)
class CpSatResult:
    status: str                           # OPTIMAL, FEASIBLE, INFEASIBLE, MODEL_INVALID, UNKNOWN
    path: tuple[int, ...]                 # edge indices of the problem, empty without a solution
    objective: Optional[int]
    bound: Optional[int]
    wall_s: float
    edges_in_model: int
    message: str = ""


@dataclass
class BuiltModel:
    model: cp_model.CpModel
    x: dict[int, cp_model.IntVar] = field(default_factory=dict)   # edge index -> "window chosen"
    within: dict[int, cp_model.IntVar] = field(default_factory=dict)   # sample -> "its bound holds" (coverage < 1 only)


def build_model(problem: Problem, *, keep: Optional[Sequence[bool]] = None, hint: Sequence[int] = (),
                lower_bound_units: Optional[int] = None) -> BuiltModel:
    """The CP-SAT model over the kept edges; ``hint`` is a path (edge indices) to start from;
    ``lower_bound_units`` a proven lower bound on the objective (added as a constraint)."""
    model = cp_model.CpModel()
    built = BuiltModel(model=model)
    active = [i for i in range(len(problem.edges)) if keep is None or keep[i]]
    for i in active:
        e = problem.edges[i]
        built.x[i] = model.new_bool_var(f"x_{e.kind}_{e.start}_{e.size}")
    T = problem.num_steps
    for b in range(T + 1):
        out_vars = [built.x[i] for i in problem.out_edges[b] if i in built.x]
        in_vars = [built.x[i] for i in problem.in_edges[b] if i in built.x]
        if b == 0:
            model.add_linear_constraint(cp_model.LinearExpr.sum(out_vars), 1, 1)
        elif b == T:
            model.add_linear_constraint(cp_model.LinearExpr.sum(in_vars), 1, 1)
        else:
            model.add_linear_constraint(cp_model.LinearExpr.sum(in_vars) - cp_model.LinearExpr.sum(out_vars), 0, 0)
    for b in range(1, T):
        reuse_in = [built.x[i] for i in problem.in_edges[b] if i in built.x and problem.edges[i].kind == "reuse"]
        needs_fresh_out = [built.x[i] for i in problem.out_edges[b] if i in built.x and problem.edges[i].kind != "exact"]
        if reuse_in and needs_fresh_out:
            model.add_linear_constraint(cp_model.LinearExpr.sum(reuse_in + needs_fresh_out), 0, 1)
        linear_out = [built.x[i] for i in problem.out_edges[b] if i in built.x and problem.edges[i].predictor == "linear"]
        if linear_out and b >= 2:
            exact_prev = [built.x[i] for i in problem.in_edges[b] if i in built.x and problem.edges[i].kind == "exact"]
            reuse_into_prev = [built.x[i] for i in problem.in_edges[b - 1] if i in built.x and problem.edges[i].kind == "reuse"]
            if exact_prev and reuse_into_prev:
                model.add_linear_constraint(cp_model.LinearExpr.sum(linear_out + exact_prev + reuse_into_prev), 0, 2)
    # redundant: every step lies in exactly one chosen window (implied by the flow). As exactly-one
    # constraints (cliques) they make CP-SAT propagate "this window is chosen" to every overlapping
    # window at once and strengthen its LP; measured: the bound at T = 1000 rises from the
    # Lagrangian bound (0.4-0.9 % below the optimum) to within about 0.001 % of it.
    covering: list[list[cp_model.IntVar]] = [[] for _ in range(T)]
    for i, v in built.x.items():
        e = problem.edges[i]
        for s in range(e.start, e.stop):
            covering[s].append(v)
    for vs in covering:
        if vs:
            model.add_exactly_one(vs)
    ids = list(built.x)
    variables = [built.x[i] for i in ids]
    # quality: one constraint per calibration sample; with a coverage below 1 each is enforced only
    # where its indicator ``within[n]`` is true, and at least ``min_within`` indicators are true
    N, K = problem.samples, problem.min_within
    for n in range(N):
        coeffs = [problem.edges[i].sample_error_units[n] for i in ids]
        terms = [(v, c) for v, c in zip(variables, coeffs) if c]
        if not terms:
            continue
        ct = model.add_linear_constraint(cp_model.LinearExpr.weighted_sum([v for v, _ in terms], [c for _, c in terms]),
                                         -cp_model.INT_MAX, problem.sample_budget_units[n])
        if K < N:
            built.within[n] = model.new_bool_var(f"within_{n}")
            ct.only_enforce_if(built.within[n])
    if K < N:
        free = N - len(built.within)                # samples no kept window can push past their bound
        model.add(cp_model.LinearExpr.sum(list(built.within.values())) >= K - free)
    objective = cp_model.LinearExpr.weighted_sum(variables, [problem.edges[i].latency_units for i in ids])
    model.minimize(objective)
    if lower_bound_units is not None and variables:
        model.add_linear_constraint(objective, lower_bound_units, cp_model.INT_MAX)
    if hint and all(i in built.x for i in hint):
        chosen = set(hint)
        for i, v in built.x.items():
            model.add_hint(v, i in chosen)
    return built


def solve_model(built: BuiltModel, options: SolverOptions) -> tuple[cp_model.CpSolver, int, float]:
    """(solver, status, wall seconds)."""
    solver = cp_model.CpSolver()
    p = solver.parameters
    p.max_time_in_seconds = float(options.time_limit_s)
    p.num_workers = options.resolved_workers()
    p.random_seed = int(options.seed)
    p.log_search_progress = bool(options.log)
    # OR-Tools 9.15's presolve (inclusion detection, ProcessAtMostOneAndLinear) can certify a wrong
    # optimum on models of exactly this shape (exactly-one cliques + linear rows): measured on the
    # digits G = 8 --min-psnr 35 instance, OPTIMAL 127,990 while a checked plan of 119,697 exists
    # (google/or-tools#5293, open). Its workaround: no inclusion work in presolve.
    p.presolve_inclusion_work_limit = 0
    if options.deterministic:
        # reproducible on any machine and under any load: the limit is CP-SAT's deterministic time
        # (work counters, ~seconds), with the wall clock only as a far backstop
        p.interleave_search = True
        p.max_deterministic_time = float(options.time_limit_s)
        p.max_time_in_seconds = max(10.0 * float(options.time_limit_s), 600.0)
    t0 = time.perf_counter()
    status = solver.solve(built.model)
    return solver, status, time.perf_counter() - t0


def decode(problem: Problem, built: BuiltModel, solver: cp_model.CpSolver) -> tuple[int, ...]:
    """The chosen windows as a path of edge indices from boundary 0 to T, in order."""
    chosen = {problem.edges[i].start: i for i, v in built.x.items() if solver.boolean_value(v)}
    path = []
    b = 0
    while b < problem.num_steps:
        if b not in chosen:
            raise RuntimeError(f"CP-SAT solution does not continue at boundary {b}")
        path.append(chosen[b])
        b = problem.edges[chosen[b]].stop
    if len(path) != len(chosen):
        raise RuntimeError(f"CP-SAT solution has {len(chosen)} windows but a path of {len(path)} (a cycle cannot exist in a DAG)")
    return tuple(path)


def _units(problem: Problem, path: Sequence[int]) -> int:
    return sum(problem.edges[i].latency_units for i in path)


def solve_cpsat(problem: Problem, options: SolverOptions = SolverOptions(), *, hint: Sequence[int] = (),
                reduce: bool = True) -> CpSatResult:
    """Build, solve and decode. ``hint`` is a feasible path (edge indices) or empty."""
    t0 = time.perf_counter()
    keep = None
    lower = None
    if reduce:
        if not problem.single_budget:
            # several samples: a scaled single-budget DP gives a plan feasible for all of them
            inc = scaled_max_path(problem)
            if inc is not None and (not hint or _units(problem, inc) < _units(problem, hint)):
                hint = inc
        red = lagrangian_reduce(problem, incumbent=hint)
        # a better incumbent tightens the reduction and the hint: the rounded-up DP (heuristic; one budget only)
        better = rounded_up_path(problem, keep=red.keep) if red.incumbent is not None and problem.single_budget else None
        if better is not None and sum(problem.edges[i].latency_units for i in better) < red.incumbent_units:
            red = lagrangian_reduce(problem, incumbent=better)
        keep = list(red.keep)
        if red.incumbent is not None:
            hint = red.incumbent
        bound = red.lower_bound
        if problem.samples > 1 and problem.min_within == problem.samples and hint:
            # every sample is required: each sample's own constraint is a relaxation, so an edge that
            # no plan beating the incumbent can use under ANY one sample's constraint is dropped
            # (exact: the optimum survives every filter; the incumbent's edges are kept)
            for n in range(problem.samples):
                if time.perf_counter() - t0 > PREPROCESS_SHARE * options.time_limit_s:
                    break                     # fewer filters: still exact, and the time limit holds
                red_n = lagrangian_reduce(problem.restricted([n]), incumbent=hint, feasible=problem.path_feasible)
                keep = [a and b for a, b in zip(keep, red_n.keep)]
                bound = max(bound, red_n.lower_bound)
            for i in hint:
                keep[i] = True
        if math.isfinite(bound):
            lower = math.ceil(bound - 1e-6 * max(1.0, abs(bound)))
    built = build_model(problem, keep=keep, hint=hint, lower_bound_units=lower)
    # the time limit covers the reductions above: CP-SAT gets what is left of it
    spent = time.perf_counter() - t0
    if not options.deterministic:
        options = dc_replace(options, time_limit_s=max(0.1, options.time_limit_s - spent))
    validation = built.model.validate()
    if validation:
        return CpSatResult(status="MODEL_INVALID", path=(), objective=None, bound=None, wall_s=time.perf_counter() - t0,
                           edges_in_model=len(built.x), message=validation)
    solver, status, _ = solve_model(built, options)
    name = solver.status_name(status)
    wall = time.perf_counter() - t0
    if status in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        return CpSatResult(status=name, path=decode(problem, built, solver), objective=round(solver.objective_value),
                           bound=round(solver.best_objective_bound), wall_s=wall, edges_in_model=len(built.x))
    if status == cp_model.UNKNOWN and hint and problem.path_feasible(hint):
        # the time limit ended before CP-SAT's first solution, but the incumbent we started from is
        # a checked feasible plan: return it as FEASIBLE with the proven lower bound, not nothing
        return CpSatResult(status="FEASIBLE", path=tuple(hint), objective=sum(problem.edges[i].latency_units for i in hint),
                           bound=lower, wall_s=wall, edges_in_model=len(built.x),
                           message="time limit before CP-SAT's first solution: the incumbent plan (Lagrangian/rounded DP or hint)")
    return CpSatResult(status=name, path=(), objective=None, bound=None, wall_s=wall, edges_in_model=len(built.x),
                       message=solver.solution_info())

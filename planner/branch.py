"""Exact solver for per-image statements: depth-first branch and bound with Lagrangian bounds.

The problem (problem.py) is a shortest path over the freshness-expanded step graph with one
knapsack row per calibration sample: "at least ``min_within`` of the N samples keep their error
within their bound". CP-SAT states it directly, but measured on the shipped digits profile
(T = 50, G = 8, 20 samples, 1937 arcs) it does not prove optimality: after 10 s it stops
FEASIBLE at 95,262 latency units with a bound of 90,379, and 20 s on the Lagrangian-reduced model
(779 edges) ends the same way. The optimum is 95,089: CP-SAT's plan was 0.2 % slow and unproven.
Its LP relaxation (90,708, the flow polytope with 20 side rows) is 4.6 % below the optimum, and
closing that by generic branching is what takes CP-SAT so long.

A path is built window by window, so a depth-first search over *prefixes* can bound every
completion at once with a cost-to-go table computed once (the pulse algorithm of Lozano and
Medaglia for resource-constrained shortest paths, with Lagrangian bounds). For multipliers
``lam >= 0`` and any path P that meets samples S:

    latency(P) >= latency(P) + sum_{n in S} lam_n (error_n(P) - B_n)
               >= [prefix's latency + lam . prefix's error] + lc_to_go(node) - lam . B

where ``lc_to_go`` is the least ``latency + lam . error`` from the prefix's end to boundary T
(one backward pass). Pruning rules at a prefix ending in state node ``m``, against the best plan so
far (UB, integer latency units, so only plans of at most UB - 1 count):

1. latency: prefix latency + least latency to go > UB - 1;
2. quality: more than N - min_within samples already past their bound (errors only grow);
3. Lagrangian (``_Bounds``): several multiplier vectors, each valid for the samples it weighs,
   and the largest bound counts. One-sample duals (each image alone): a plan meets at least
   ``min_within`` images its prefix has not broken, so the ``min_within``-th smallest of their
   bounds holds. Miss sets: every set D of N - ``min_within`` images (only the empty set when all
   are required) gets the duals of the LP without D's rows (GLOP, warm re-solves), at 0.5x, 1x and
   2x; a plan meets every image outside some D that holds the images its prefix broke, so the least
   bound over those D holds. At the root this is the LP bound; deeper, where a prefix spent budget
   unevenly, the other multipliers bound better (on digits G = 8: 191k prefixes with the scaled LP
   duals alone, 7.3k with both families);
4. surrogate (``_Surrogate``): each miss set's LP duals fold its samples into one constraint, and a
   table (one backward DP over the state graph and the error levels, built once) gives the exact
   least latency to go under that one constraint, where rule 3 only has its Lagrangian relaxation.
   It sees that windows spend the budget in lumps: on the digits profile (CFG split allowed),
   default and ``--min-psnr 30/35`` at G = 2, 4, 8 visit 2.5-85x fewer prefixes than with rules
   1-3, with the same optima (benchmarks/bench_planner.py).

Children are tried in order of their mean Lagrangian cost to go. The limit deepens: first only
plans within 0.5 % of the root bound are searched, then 1 %, 2 %, ... up to the best plan known
(a Lagrangian primal heuristic and the caller's incumbents); a pass that finds a plan has found
the optimum, a pass that finds none proves the optimum is at least its limit, and a pass that cut
nothing by the limit ends the search (no plan exists: INFEASIBLE). Everything above is exact.
Past the time limit the best plan comes back FEASIBLE with the highest proven bound.

Solve times are in benchmarks/results/planner.md (benchmarks/bench_planner.py): the digits
profiles are proven OPTIMAL in about a second. Long schedules with many near-equal plans remain
hard: synthetic 20-sample profiles at T = 200, G = 8 end FEASIBLE at the time limit (plan.py then
lets CP-SAT continue from the best plan). There the root bound stays about 1.4 % below the best
plan known even with rule 4 (2.2 % with rules 1-3): proving it needs stronger bounds.
Tried there without effect: label dominance at each state
(a prefix with no more latency and no more error on every sample than one already searched;
0 of 80k prefixes in 20 s were dominated: every image's error differs between prefixes); exact
one-sample tables (rule 4 with one image's weight each: their best root bound is 207,367, far
below the surrogate's, since the budget binds on several images at once); and a coordinate
search over the surrogate's multipliers from the LP duals (+1 unit at 2,000 levels, where the LP
duals give 240,910: the level count matters more than the weights).
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from .bounds import _Graph, _arcs_of
from .problem import Problem


@dataclass(frozen=True)
class BranchResult:
    status: str                           # OPTIMAL, FEASIBLE (time limit), INFEASIBLE, UNKNOWN (time limit, no plan)
    path: tuple[int, ...]                 # edge indices of the problem, empty without a plan
    objective: Optional[int]              # latency units
    bound: Optional[int]                  # proven lower bound (latency units)
    wall_s: float
    prefixes: int                         # search nodes visited
    message: str = ""


class _TimeUp(Exception):
    pass


class _Relaxation:
    """The LP relaxation (GLOP): the flow polytope of the state graph (integral on its own) plus one
    row per sample, built once; ``multipliers(active)`` re-solves it with only the ``active``
    samples' rows (the rest relaxed) and returns their optimal duals (>= 0; zeros elsewhere)."""

    def __init__(self, problem: Problem, g: _Graph, errors: np.ndarray):
        from ortools.linear_solver import pywraplp

        self._ok = pywraplp.Solver.OPTIMAL
        self.solver = solver = pywraplp.Solver.CreateSolver("GLOP")
        self.budget = [float(b) for b in problem.sample_budget_units]
        A, end = g.ids.size, 3 * g.T
        x = [solver.NumVar(0.0, 1.0, "") for _ in range(A)]
        flow = [solver.Constraint(-1.0 if n == 0 else 0.0, -1.0 if n == 0 else 0.0) for n in range(end)]
        self.rows = [solver.Constraint(-solver.infinity(), b) for b in self.budget]
        objective = solver.Objective()
        for k in range(A):
            flow[int(g.start[k])].SetCoefficient(x[k], -1.0)
            if g.stop[k] < end:
                flow[int(g.stop[k])].SetCoefficient(x[k], 1.0)
            objective.SetCoefficient(x[k], float(g.lat[k]))
            for n in np.nonzero(errors[k])[0]:
                self.rows[int(n)].SetCoefficient(x[k], float(errors[k, n]))
        objective.SetMinimization()

    def multipliers(self, active: Sequence[bool]) -> np.ndarray:
        for row, b, on in zip(self.rows, self.budget, active):
            row.SetUb(b if on else self.solver.infinity())
        if self.solver.Solve() != self._ok:      # pragma: no cover - the all-exact path is always feasible
            return np.zeros(len(self.rows))
        # a <= row of a minimisation has a dual <= 0; its negation is the multiplier
        lam = np.maximum(0.0, -np.array([r.dual_value() for r in self.rows]))
        return np.where(np.asarray(active, dtype=bool), lam, 0.0)


# at most this many "samples allowed to miss" sets get their own LP (coverage far below 1 has too
# many; then only the one-sample bounds are used)
MAX_MISS_SETS = 256
# each miss set's LP duals, scaled: deep prefixes have spent budget unevenly, where other
# multipliers than the root's best bound better (measured on digits G = 8: 191k prefixes with the
# scales alone, 7.5k with the one-sample bounds, 6.9k with both)
LP_SCALES = (1.0, 0.5, 2.0)


class _Bounds:
    """Lower bounds on the latency of every completion of a prefix (module docstring, rules 3 and 4).

    Columns ``l`` are multiplier vectors ``lam_l >= 0``: per arc ``weights[:, l] = latency + lam_l .
    errors``, per node ``to_go[:, l]`` the least such weight to the end, ``offset[l] = lam_l .
    budgets``; ``lc + to_go - offset`` bounds the plan's latency if the plan meets every sample
    ``lam_l`` weighs. Two families, and the larger of their bounds counts:

    - one sample n alone (its 1-D LP dual): a plan meets at least ``min_within`` samples its prefix
      has not broken, so the ``min_within``-th smallest of those samples' bounds is valid;
    - miss sets: every set D of exactly N - ``min_within`` samples (just the empty set when all are
      required) gets the LP of the other rows; a plan meets every sample outside some D that holds
      all the samples its prefix broke, so the least bound over those D is valid (per D, the largest
      over ``LP_SCALES``)."""

    def __init__(self, problem: Problem, g: _Graph, errors: np.ndarray, *, deadline: float = math.inf):
        from itertools import combinations

        N, K = problem.samples, problem.min_within
        budget = np.array(problem.sample_budget_units, dtype=np.float64)
        lp = _Relaxation(problem, g, errors)
        self.K = K

        def duals(active) -> np.ndarray:
            # past the deadline no more LPs (1-2 s each at T = 1000): zero multipliers, a valid and
            # weaker bound (the plain latency to go), so the time limit holds on long schedules
            return lp.multipliers(active) if time.perf_counter() < deadline else np.zeros(N)

        self.full = full = duals([True] * N)
        lams = [duals([m == n for m in range(N)]) for n in range(N)]
        miss = N - K
        self.sets = math.comb(N, miss) <= MAX_MISS_SETS
        if self.sets:
            support = set(np.nonzero(full)[0].tolist())
            masks, columns, cache = [], [], {}
            for D in combinations(range(N), miss):
                # relaxing rows whose duals are 0 leaves the LP optimum (and its duals) as they are
                key = D if support.intersection(D) else ()
                if key not in cache:
                    base = full if not key else duals([n not in D for n in range(N)])
                    cache[key] = [len(lams) + i for i in range(len(LP_SCALES))]
                    lams.extend(f * base for f in LP_SCALES)
                masks.append([n in D for n in range(N)])
                columns.append(cache[key])
            self.miss_sets = np.array(masks, dtype=bool).reshape(len(masks), N)    # (S, N)
            self.set_columns = np.array(columns, dtype=np.int64)                    # (S, scales)
        # surrogate tables (rule 4), one per miss set's LP duals (scaling them changes nothing); a
        # plan meets every sample outside some allowed set D, so D's surrogate constraint holds
        self.surrogates, self.set_surrogate = [], None
        if self.sets:
            bases = {cols[0]: lams[cols[0]] for cols in cache.values() if lams[cols[0]].any()}   # LP_SCALES[0] = 1
            levels = min(SURROGATE_LEVELS, SURROGATE_BYTES // (8 * g.n_nodes * max(1, len(bases))) - 1)
            if bases and levels >= 16 and time.perf_counter() < deadline:
                self.surrogates = [_Surrogate(g, errors, lam, budget, levels) for lam in bases.values()]
                pos = {c: i for i, c in enumerate(bases)}
                # miss set -> its table (-1: its duals are all zero, no table; bounds() maps it to -inf)
                self.set_surrogate = np.array([pos.get(cols[0], -1) for cols in columns], dtype=np.int64)
        lam = np.array(lams).reshape(len(lams), N)                     # (L, N)
        self.weights = g.lat[:, None] + errors @ lam.T                 # (A, L)
        self.to_go = np.stack([g.backward(self.weights[:, l]) for l in range(lam.shape[0])], axis=1)
        self.offset = lam @ budget                                      # (L,)
        self.samples = N

    def bounds(self, lc: np.ndarray, nodes: np.ndarray, broken: np.ndarray, lat: np.ndarray, err: np.ndarray) -> np.ndarray:
        """Bounds for a batch of prefixes: Lagrangian costs ``lc`` (c, L) so far, end nodes (c,),
        broken samples (c, N), latencies (c,) and errors (c, N) so far -> (c,)."""
        values = lc + self.to_go[nodes] - self.offset                  # (c, L)
        N, K = self.samples, self.K
        live = np.where(broken, np.inf, values[:, :N])                 # a broken sample bounds nothing
        bound = live.max(axis=1) if K == N else np.partition(live, K - 1, axis=1)[:, K - 1]
        if self.sets:
            per_set = values[:, self.set_columns].max(axis=2)           # (c, S)
            if self.surrogates:
                sur = [t.bounds(lat, err, nodes) for t in self.surrogates] + [np.full(lat.shape, -np.inf)]
                table = np.stack(sur, axis=1)                           # (c, tables + 1); -1: none
                per_set = np.maximum(per_set, table[:, self.set_surrogate])
            if per_set.shape[1] == 1:
                bound = np.maximum(bound, per_set[:, 0])
            else:
                allowed = ~(broken[:, None, :] & ~self.miss_sets[None, :, :]).any(axis=2)   # D holds every broken sample
                bound = np.maximum(bound, np.where(allowed, per_set, np.inf).min(axis=1))
        return bound


# memory for all surrogate tables together (float64 node x level tables); the level count per table
# follows from it (at most SURROGATE_LEVELS; measured on a 200-step synthetic profile, the bound
# grows with the levels up to about 8000 and is flat beyond)
SURROGATE_BYTES = 128 * 2 ** 20
SURROGATE_LEVELS = 8000


class _Surrogate:
    """Exact cost-to-go under one *surrogate* constraint (rule 4 of the module docstring).

    For multipliers ``lam >= 0``, a plan that meets every sample ``lam`` weighs also meets their
    weighted sum: ``s(P) = lam . error(P) <= lam . B = S``. ``table[v, l]`` is the least latency
    from state ``v`` to the end over completions whose surrogate error, each arc's rounded *down* to
    levels of ``S / L``, is at most ``l`` levels (a backward DP, exact for the rounded problem). A
    completion with surrogate error ``<= r`` uses at most ``floor(r L / S)`` levels (a sum of floors
    is at most the floor of the sum), so ``table[v, floor(r L / S)]`` bounds its latency from below:
    the bound is valid whatever the rounding, and L only decides how tight it is. It is at least the
    Lagrangian bound of the same ``lam`` (up to the rounding) and captures what that bound misses:
    windows spend the budget in lumps (measured on the 200-step synthetic profile of
    benchmarks/results/planner.md, seed 200: root bound 244,264 latency units against the LP's
    242,215; the best plan known is 247,619)."""

    def __init__(self, g: _Graph, errors: np.ndarray, lam: np.ndarray, budget: np.ndarray, levels: int):
        self.lam = lam
        self.S = float(lam @ budget)
        self.L = L = max(1, int(levels))
        self.per_level = self.S / L if self.S > 0 else 1.0
        arc_levels = np.floor(errors @ lam / self.per_level).astype(np.int64)
        f = np.full((g.n_nodes, L + 1), np.inf)
        f[g.ends, :] = 0.0
        for v in range(3 * g.T - 1, -1, -1):
            row = f[v]
            for k in g.by_start[g.out_ptr[v]:g.out_ptr[v + 1]]:
                e = int(arc_levels[k])
                if e <= L:
                    np.minimum(row[e:], g.lat[k] + f[g.stop[k], :L + 1 - e], out=row[e:])
        self.table = f

    def bounds(self, lat: np.ndarray, err: np.ndarray, nodes: np.ndarray) -> np.ndarray:
        """Latency bounds (c,) of prefixes with latencies ``lat`` (c,), errors ``err`` (c, N), ending
        at ``nodes`` (c,): inf where the prefix already broke the surrogate constraint."""
        left = self.S - err @ self.lam
        # the tiny slack rounds the level up (a looser, still valid bound) where float sums differ
        lvl = np.floor(left / self.per_level + 1e-9)
        ok = lvl >= 0
        idx = np.clip(lvl, 0, self.L).astype(np.int64)
        return np.where(ok, lat + self.table[nodes, idx], np.inf)


def _lagrangian_paths(problem: Problem, g: _Graph, errors: np.ndarray, lam: np.ndarray) -> list[tuple[int, ...]]:
    """Feasible plans near the LP optimum (a primal heuristic): the shortest path under latency +
    f lam . errors for growing f, first feasible one; measured on a 200-step synthetic profile it
    starts the search at 257,684 units where the fixed plan gives 687,000 (CP-SAT's 10 s: 247,620)."""
    for f in (1.0, 1.1, 1.25, 1.5, 2.0, 4.0, 8.0, 32.0):
        dist, pred = g.forward(g.lat + errors @ (f * lam))
        arcs = g.path(dist, pred)
        plan = tuple(int(g.ids[k]) for k in arcs) if arcs is not None else ()
        if plan and problem.path_feasible(list(plan)):
            return [plan]
    return []


def solve_branch(problem: Problem, *, time_limit_s: float = 10.0, incumbents: Sequence[Sequence[int]] = (),
                 log: bool = False) -> BranchResult:
    """The least-latency plan meeting the per-sample statement, proven (see the module docstring).
    ``incumbents``: feasible paths to start from (e.g. the fixed plan); the fastest is used."""
    t0 = time.perf_counter()
    g = _Graph(problem)
    N, K = problem.samples, problem.min_within
    A = g.ids.size
    errors = np.array([problem.edges[int(i)].sample_error_units for i in g.ids], dtype=np.float64).reshape(A, N)
    budget = np.array(problem.sample_budget_units, dtype=np.float64)
    lat_to_go = g.backward(g.lat)
    deadline = t0 + float(time_limit_s)
    bounds = _Bounds(problem, g, errors, deadline=deadline)
    root_bound = max(float(lat_to_go[0]), float(bounds.bounds(np.zeros((1, bounds.offset.size)), np.zeros(1, dtype=np.int64),
                                                                   np.zeros((1, N), dtype=bool), np.zeros(1), np.zeros((1, N)))[0]))

    # children of every state node, most promising (least mean Lagrangian cost to go) first
    order = bounds.weights.mean(axis=1) + bounds.to_go.mean(axis=1)[g.stop]
    ranked = np.argsort(order, kind="stable")
    children = [ranked[g.start[ranked] == n] for n in range(g.n_nodes)]
    ends = 3 * g.T
    missable = N - K

    best_units, best_arcs = math.inf, None
    for inc in list(incumbents) + _lagrangian_paths(problem, g, errors, bounds.full):
        arcs = _arcs_of(g, inc) if inc and problem.path_feasible(list(inc)) else None
        units = float(g.lat[arcs].sum()) if arcs is not None else math.inf
        if units < best_units:
            best_units, best_arcs = units, arcs
    # the search looks for plans of latency < ``limit`` (integers: at most limit - 1); the float
    # margin is far below one unit and far above the rounding of a few thousand float terms
    # (at most half a unit: a relative 1e-7 alone is 2 units at 2e7 units, which let a plan one or
    # two units *slower* than the best found pass the "< limit" test and replace it: found by the
    # DP differential test, T = 37, G = 5, seed 217: OPTIMAL 21,235,491 against the DP's 21,235,489)
    margin = min(0.5, 1e-7 * max(1.0, abs(root_bound)))
    state = {"limit": best_units, "found": False, "capped": False}
    visited = [0]
    path: list[int] = []

    def visit(node: int, latency: float, lc: np.ndarray, err: np.ndarray) -> None:
        """Extend the prefix ending at state ``node``: all its children are bounded at once, then
        the survivors are searched in order (re-checked, since the limit may drop meanwhile)."""
        visited[0] += 1
        if visited[0] & 255 == 0 and time.perf_counter() > deadline:
            raise _TimeUp
        if node >= ends:
            nonlocal best_units, best_arcs
            if latency >= best_units:         # only a strictly faster plan replaces the best one
                return
            best_units, best_arcs = latency, list(path)
            state["limit"], state["found"] = latency, True
            return
        ks = children[node]
        nodes = g.stop[ks]
        lat2 = latency + g.lat[ks]
        err2 = err + errors[ks]
        broken = err2 > budget
        lc2 = lc + bounds.weights[ks]
        need = np.maximum(lat2 + lat_to_go[nodes], bounds.bounds(lc2, nodes, broken, lat2, err2))
        within = broken.sum(axis=1) <= missable
        fast = need <= state["limit"] - 1.0 + margin
        if not state["capped"] and (within & ~fast).any():
            state["capped"] = True            # the limit cut something: a higher limit may find more
        for j in np.nonzero(within & fast)[0]:
            if need[j] > state["limit"] - 1.0 + margin:
                state["capped"] = True
                continue
            path.append(int(ks[j]))
            visit(int(nodes[j]), float(lat2[j]), lc2[j], err2[j])
            path.pop()

    # deepening on the latency limit: first search only for plans within 0.5 % of the root bound,
    # which prunes hard; a plan found under a limit is the optimum (everything below it was
    # searched); a search that finds none proves the optimum is at least its limit
    proven = root_bound
    step = 0.005
    old_limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(old_limit, problem.num_steps + 500))
    status = "OPTIMAL"
    try:
        while True:
            cap = math.floor(root_bound * (1.0 + step)) + 1
            final = cap >= best_units
            state["limit"], state["found"], state["capped"] = (best_units if final else cap), False, False
            visit(0, 0.0, np.zeros(bounds.offset.size), np.zeros(N))
            if log:
                print(f"branch: limit {state['limit']:.0f} found={state['found']} prefixes={visited[0]} {time.perf_counter() - t0:.2f}s", file=sys.stderr)
            if state["found"] or final or not state["capped"]:
                break                         # optimal, or nothing was cut: no plan exists
            proven = max(proven, cap)
            step *= 2.0
    except _TimeUp:
        status = "FEASIBLE"
    finally:
        sys.setrecursionlimit(old_limit)
    wall = time.perf_counter() - t0
    lower = math.ceil(proven - margin)
    if best_arcs is None:
        if status == "OPTIMAL":
            return BranchResult("INFEASIBLE", (), None, None, wall, visited[0])
        return BranchResult("UNKNOWN", (), None, lower, wall, visited[0], message="time limit before any plan was found")
    units = int(round(best_units))
    plan = tuple(int(g.ids[k]) for k in best_arcs)
    return BranchResult(status, plan, units, units if status == "OPTIMAL" else min(units, lower), wall, visited[0])

"""Lagrangian bounds and exact edge elimination for the constrained shortest path (used before CP-SAT).

Relax the budget with a multiplier lam >= 0: for every path P from 0 to T,

    latency(P) + lam * (error(P) - B)  >=  L(lam) = min_Q [latency(Q) + lam * error(Q)] - lam * B,

and for a feasible P (error(P) <= B) the left side is at most latency(P). So L(lam) is a lower
bound on the optimum, and so is the same quantity restricted to paths through a given edge e:

    LB_e(lam) = F(e.start) + latency(e) + lam * error(e) + G(e.stop) - lam * B,

F and G the least ``latency + lam * error`` from 0 and to T. With a feasible plan of latency UB
known, latencies being integers, an edge with LB_e(lam) > UB - 1 is on no plan that beats UB;
the incumbent's own edges are kept, so the optimum stays in the reduced graph: dropping the rest is
exact (the optimal value is unchanged; plans that merely tie the incumbent may go) (the classic reduction of Aneja, Aggarwal and Nair / Beasley and
Christofides for resource-constrained shortest paths). lam is the dual optimum, found by the
breakpoint (Handler-Zang) iteration: intersect the lines of the best known infeasible and
feasible paths, re-solve the relaxed shortest path there, stop when no path lies below both lines.

All shortest paths are over a DAG in boundary order (numpy per boundary). The bounds are floats;
an edge is dropped only if its bound clears UB by a relative margin of 1e-9, far above the
rounding error of sums of a few thousand float terms.
"""

from __future__ import annotations

from dataclasses import dataclass, replace as dc_replace
from typing import Callable, Optional, Sequence

import numpy as np

from .problem import Problem, fresh_after, fresh_needed

_MARGIN = 1e-9


@dataclass(frozen=True)
class LagrangeResult:
    lam: float
    lower_bound: float                   # L(lam): no plan is faster (latency units)
    incumbent: Optional[tuple[int, ...]]  # best feasible path found (edge indices)
    incumbent_units: Optional[int]
    keep: list[bool]                     # edges that may be on an optimal plan
    iterations: int


class _Graph:
    """The state-expanded graph (``Problem.state_edges``): node 3b + fresh; arcs map to edges."""

    def __init__(self, problem: Problem):
        T = problem.num_steps
        arcs = problem.state_edges()
        self.T = T
        self.n_nodes = 3 * (T + 1)
        self.ids = np.array([a[0] for a in arcs], dtype=np.int64)        # arc -> problem edge
        self.start = np.array([a[1] for a in arcs], dtype=np.int64)      # from node
        self.stop = np.array([a[2] for a in arcs], dtype=np.int64)       # to node
        e = problem.edges
        self.lat = np.array([e[i].latency_units for i in self.ids], dtype=np.float64)
        self.err = np.array([e[i].error_units for i in self.ids], dtype=np.float64)
        self.by_stop = np.argsort(self.stop, kind="stable")
        self.in_ptr = np.searchsorted(self.stop[self.by_stop], np.arange(self.n_nodes + 1))
        self.by_start = np.argsort(self.start, kind="stable")
        self.out_ptr = np.searchsorted(self.start[self.by_start], np.arange(self.n_nodes + 1))
        self.ends = np.arange(3 * T, 3 * T + 3)

    def forward(self, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Least weight from node 0 to each node, and the last arc on it."""
        dist = np.full(self.n_nodes, np.inf)
        pred = np.full(self.n_nodes, -1, dtype=np.int64)
        dist[0] = 0.0
        for n in range(1, self.n_nodes):
            idx = self.by_stop[self.in_ptr[n]:self.in_ptr[n + 1]]
            if idx.size:
                vals = dist[self.start[idx]] + w[idx]
                k = int(np.argmin(vals))
                dist[n], pred[n] = vals[k], idx[k]
        return dist, pred

    def backward(self, w: np.ndarray) -> np.ndarray:
        """Least weight from each node to any end node (boundary T)."""
        dist = np.full(self.n_nodes, np.inf)
        dist[self.ends] = 0.0
        for n in range(3 * self.T - 1, -1, -1):
            idx = self.by_start[self.out_ptr[n]:self.out_ptr[n + 1]]
            if idx.size:
                dist[n] = float(np.min(w[idx] + dist[self.stop[idx]]))
        return dist

    def path(self, dist: np.ndarray, pred: np.ndarray) -> Optional[list[int]]:
        """Arcs of the best path to boundary T, in order (None if T is unreachable)."""
        n = int(self.ends[np.argmin(dist[self.ends])])
        if not np.isfinite(dist[n]):
            return None
        out = []
        while n > 0:
            k = int(pred[n])
            out.append(k)
            n = int(self.start[k])
        out.reverse()
        return out


def _arcs_of(g: _Graph, path: Sequence[int]) -> Optional[list[int]]:
    """The arcs that follow a path of problem edges through the state graph (None if it breaks the
    freshness rule or uses an edge absent from the graph)."""
    by_edge_from: dict[tuple[int, int], int] = {(int(g.ids[k]), int(g.start[k])): k for k in range(g.ids.size)}
    node, out = 0, []
    for i in path:
        k = by_edge_from.get((int(i), node))
        if k is None:
            return None
        out.append(k)
        node = int(g.stop[k])
    return out


def lagrangian_reduce(problem: Problem, *, incumbent: Sequence[int] = (), max_iterations: int = 60,
                      feasible: Optional[Callable[[list[int]], bool]] = None) -> LagrangeResult:
    """Dual bound, best feasible path seen, and the edges that may still be on an optimal plan.

    With several calibration samples the single constraint is the sum of the per-sample ones (a
    valid relaxation when every sample is required; ``NO_AGGREGATE_BOUND`` otherwise, so only the
    incumbent's latency prunes), and incumbents must meet the per-sample statement: the reduction
    stays exact. ``feasible`` overrides that check (a relaxation of a larger problem passes the
    larger problem's ``path_feasible``: only truly feasible plans may set the pruning threshold)."""
    g = _Graph(problem)
    B = float(problem.budget_units)
    keep_none = [False] * len(problem.edges)
    if g.ids.size == 0:
        return LagrangeResult(0.0, float("inf"), None, None, keep_none, 0)

    best_path: Optional[list[int]] = None      # arcs
    best_units: Optional[float] = None
    if incumbent:
        best_path = _arcs_of(g, incumbent)
        if best_path is not None:
            best_units = float(g.lat[best_path].sum())
            if g.err[best_path].sum() > B or not (feasible or problem.path_feasible)(list(incumbent)):
                best_path, best_units = None, None

    def relaxed(lam: float):
        dist, pred = g.forward(g.lat + lam * g.err)
        p = g.path(dist, pred)
        return p, (float(g.lat[p].sum()), float(g.err[p].sum())) if p is not None else None

    def consider(p, lat_err):
        nonlocal best_path, best_units
        if p is not None and lat_err[1] <= B and (best_units is None or lat_err[0] < best_units):
            # with several samples the aggregate bound B is only a relaxation: an incumbent (which
            # sets the pruning threshold) must satisfy the per-sample statement itself
            ids = [int(g.ids[k]) for k in p]
            if (feasible(ids) if feasible is not None else (problem.single_budget or problem.path_feasible(ids))):
                best_path, best_units = p, lat_err[0]

    iterations = 1
    p_lo, le_lo = relaxed(0.0)
    if p_lo is None:                                    # no path at all
        return LagrangeResult(0.0, float("inf"), None, None, keep_none, iterations)
    consider(p_lo, le_lo)
    lam = 0.0
    if le_lo[1] > B:
        # the least-error path (lexicographic: error, then latency)
        big = (g.lat.sum() + 1.0)
        dist, pred = g.forward(g.err * big + g.lat)
        p_hi = g.path(dist, pred)
        le_hi = (float(g.lat[p_hi].sum()), float(g.err[p_hi].sum()))
        iterations += 1
        if le_hi[1] > B:                                # infeasible: nothing to bound
            return LagrangeResult(0.0, float("inf"), None, None, keep_none, iterations)
        consider(p_hi, le_hi)
        while iterations < max_iterations:
            lam = max(0.0, (le_hi[0] - le_lo[0]) / (le_lo[1] - le_hi[1]))
            p, le = relaxed(lam)
            iterations += 1
            consider(p, le)
            line = le_lo[0] + lam * le_lo[1]
            if le[0] + lam * le[1] >= line - _MARGIN * max(1.0, abs(line)):
                break                                   # no path below both lines: lam is optimal
            if le[1] <= B:
                p_hi, le_hi = p, le
            else:
                p_lo, le_lo = p, le

    w = g.lat + lam * g.err
    f, _ = g.forward(w)
    b = g.backward(w)
    lower = float(np.min(f[g.ends])) - lam * B
    through = f[g.start] + w + b[g.stop] - lam * B
    # error alone: the least-error path through the edge must fit the budget (exact integers)
    fe, _ = g.forward(g.err)
    be = g.backward(g.err)
    err_through = fe[g.start] + g.err + be[g.stop]
    keep = list(keep_none)
    # latencies are integers: a plan better than the incumbent costs at most UB - 1.
    # An edge stays if any of its state copies (arcs) passes both tests.
    target = None if best_units is None else best_units - 1.0
    for k in range(g.ids.size):
        if err_through[k] <= B and (target is None or through[k] <= target + _MARGIN * max(1.0, abs(target) + lam * B)):
            keep[int(g.ids[k])] = True
    if best_path is not None:   # the incumbent itself stays, so the model keeps a known solution
        for k in best_path:
            keep[int(g.ids[k])] = True
    inc = tuple(int(g.ids[k]) for k in best_path) if best_path is not None else None
    return LagrangeResult(lam, lower, inc, int(round(best_units)) if best_units is not None else None, keep, iterations)


def rounded_up_path(problem: Problem, *, keep: Optional[Sequence[bool]] = None, levels: int = 2000) -> Optional[tuple[int, ...]]:
    """A feasible plan (heuristic, not necessarily optimal): the least-latency path when every
    edge's error units are rounded *up* to multiples of ``delta = ceil(B / levels)`` and the budget
    down (``B // delta`` coarse units). A path within the coarse budget is within the real one
    (sum of ceil(c / delta) * delta >= sum of c), so the result is feasible; rounding up wastes at
    most ``delta - 1`` units per window, so it is near-optimal when windows are few and costs
    O(3 x edges x levels). Used only as the CP-SAT hint and the incumbent of the edge reduction
    (whose soundness does not depend on how good the incumbent is). None if no coarse path."""
    B = problem.budget_units
    T = problem.num_steps
    if B < 0:
        return None
    delta = max(1, -(-B // max(1, levels)))
    K = B // delta
    inf = np.iinfo(np.int64).max // 4
    best = np.full((T + 1, 3, K + 1), inf, dtype=np.int64)
    best[0, 0, :] = 0
    edges = problem.edges
    arcs: list[tuple[int, int, int, int, int]] = []   # (edge, start, stop, coarse error, needs)
    for i, e in enumerate(edges):
        if keep is not None and not keep[i]:
            continue
        c = -(-e.error_units // delta)
        if c <= K:
            arcs.append((i, e.start, e.stop, c, fresh_needed(kind=e.kind, predictor=e.predictor)))
    arcs.sort(key=lambda a: a[1])
    for (i, s, t, c, need) in arcs:
        e = edges[i]
        for k in range(need, 3):
            src = best[s, k, : K + 1 - c]
            if src[-1] >= inf:
                continue
            dst = best[t, fresh_after(kind=e.kind, size=e.size, fresh_before=k), c:]
            np.minimum(dst, src + e.latency_units, out=dst)
    k_end = int(np.argmin(best[T, :, K]))
    if best[T, k_end, K] >= inf:
        return None
    into: dict[int, list[tuple[int, int, int, int, int]]] = {}
    for a in arcs:
        into.setdefault(a[2], []).append(a)
    path: list[int] = []
    t, k2, left = T, k_end, K
    while t > 0:
        target = best[t, k2, left]
        step = None
        for (i, s, _, c, need) in into.get(t, ()):
            if c > left:
                continue
            e = edges[i]
            for k in range(need, 3):
                if fresh_after(kind=e.kind, size=e.size, fresh_before=k) == k2 and best[s, k, left - c] + e.latency_units == target:
                    step = (i, s, k, c)
                    break
            if step is not None:
                break
        if step is None:  # pragma: no cover - would mean the table is inconsistent
            raise RuntimeError(f"rounded-up DP backtrack failed at boundary {t}")
        path.append(step[0])
        t, k2, left = step[1], step[2], left - step[3]
    path.reverse()
    return tuple(path)


def scaled_max_path(problem: Problem, *, levels: int = 2000) -> Optional[tuple[int, ...]]:
    """A plan that meets every required sample's bound (heuristic incumbent for several samples):
    the single-budget problem whose edge error is ``max_n ceil(u_n * levels / B_n)`` with budget
    ``levels``, over the ``min_within`` samples with the largest bounds. A path within it is within
    each of those samples' bounds (sum_e u_n <= B_n / levels * sum_e max(...) <= B_n), so the
    result is feasible. None if there is no such path or a required bound is 0."""
    from .oracle import solve_dp

    order = sorted(range(problem.samples), key=lambda n: -problem.sample_budget_units[n])[:problem.min_within]
    if any(problem.sample_budget_units[n] <= 0 for n in order):
        return None
    edges = tuple(dc_replace(e, sample_error_units=(max(-(-e.sample_error_units[n] * levels // problem.sample_budget_units[n])
                                                        for n in order),)) for e in problem.edges)
    res = solve_dp(dc_replace(problem, edges=edges, sample_budget_units=(levels,), min_within=1, budget_units=levels))
    if res is None or not problem.path_feasible(res.path):
        return None
    return res.path

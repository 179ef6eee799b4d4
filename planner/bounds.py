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

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from .problem import Problem

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
    def __init__(self, problem: Problem, keep: Optional[Sequence[bool]] = None):
        T = problem.num_steps
        ids = [i for i in range(len(problem.edges)) if keep is None or keep[i]]
        self.T = T
        self.ids = np.array(ids, dtype=np.int64)
        e = problem.edges
        self.start = np.array([e[i].start for i in ids], dtype=np.int64)
        self.stop = np.array([e[i].stop for i in ids], dtype=np.int64)
        self.lat = np.array([e[i].latency_units for i in ids], dtype=np.float64)
        self.err = np.array([e[i].error_units for i in ids], dtype=np.float64)
        self.by_stop = np.argsort(self.stop, kind="stable")
        self.in_ptr = np.searchsorted(self.stop[self.by_stop], np.arange(T + 2))
        self.by_start = np.argsort(self.start, kind="stable")
        self.out_ptr = np.searchsorted(self.start[self.by_start], np.arange(T + 2))

    def forward(self, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Least weight from boundary 0 to each boundary, and the last edge (local index) on it."""
        dist = np.full(self.T + 1, np.inf)
        pred = np.full(self.T + 1, -1, dtype=np.int64)
        dist[0] = 0.0
        for t in range(1, self.T + 1):
            idx = self.by_stop[self.in_ptr[t]:self.in_ptr[t + 1]]
            if idx.size:
                vals = dist[self.start[idx]] + w[idx]
                k = int(np.argmin(vals))
                dist[t], pred[t] = vals[k], idx[k]
        return dist, pred

    def backward(self, w: np.ndarray) -> np.ndarray:
        """Least weight from each boundary to boundary T."""
        dist = np.full(self.T + 1, np.inf)
        dist[self.T] = 0.0
        for s in range(self.T - 1, -1, -1):
            idx = self.by_start[self.out_ptr[s]:self.out_ptr[s + 1]]
            if idx.size:
                dist[s] = float(np.min(w[idx] + dist[self.stop[idx]]))
        return dist

    def path(self, pred: np.ndarray) -> Optional[list[int]]:
        out = []
        t = self.T
        while t > 0:
            k = int(pred[t])
            if k < 0:
                return None
            out.append(k)
            t = int(self.start[k])
        out.reverse()
        return out


def lagrangian_reduce(problem: Problem, *, incumbent: Sequence[int] = (), max_iterations: int = 60) -> LagrangeResult:
    """Dual bound, best feasible path seen, and the edges that may still be on an optimal plan."""
    g = _Graph(problem)
    B = float(problem.budget_units)
    keep_none = [False] * len(problem.edges)
    if g.ids.size == 0:
        return LagrangeResult(0.0, float("inf"), None, None, keep_none, 0)

    best_path: Optional[list[int]] = None      # local indices
    best_units: Optional[float] = None
    if incumbent:
        local = {int(gi): k for k, gi in enumerate(g.ids)}
        if all(i in local for i in incumbent):
            best_path = [local[i] for i in incumbent]
            best_units = float(g.lat[best_path].sum())

    def relaxed(lam: float):
        dist, pred = g.forward(g.lat + lam * g.err)
        p = g.path(pred)
        return p, (float(g.lat[p].sum()), float(g.err[p].sum())) if p is not None else None

    def consider(p, lat_err):
        nonlocal best_path, best_units
        if p is not None and lat_err[1] <= B and (best_units is None or lat_err[0] < best_units):
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
        p_hi = g.path(pred)
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
    lower = float(f[g.T]) - lam * B
    through = f[g.start] + w + b[g.stop] - lam * B
    # error alone: the least-error path through the edge must fit the budget (exact integers)
    fe, _ = g.forward(g.err)
    be = g.backward(g.err)
    err_through = fe[g.start] + g.err + be[g.stop]
    keep = list(keep_none)
    # latencies are integers: a plan better than the incumbent costs at most UB - 1
    target = None if best_units is None else best_units - 1.0
    for k in range(g.ids.size):
        if err_through[k] <= B and (target is None or through[k] <= target + _MARGIN * max(1.0, abs(target) + lam * B)):
            keep[int(g.ids[k])] = True
    if best_path is not None:   # the incumbent itself stays, so the model keeps a known solution
        for k in best_path:
            keep[int(g.ids[k])] = True
    inc = tuple(int(g.ids[k]) for k in best_path) if best_path is not None else None
    return LagrangeResult(lam, lower, inc, int(round(best_units)) if best_units is not None else None, keep, iterations)

"""Exact dynamic program over the same integer data as the CP-SAT model (the tests' oracle, ``--solver dp``).

``best[t][e]`` = least latency units of a path from boundary 0 to boundary t whose error units
total at most e (so each row is nonincreasing in e). Edges only go forward, so boundaries are
processed in order; a row is filled from the rows of the edges entering it:

    best[t][e] = min over edges (s -> t, latency l, error c <= e) of best[s][e - c] + l

The optimum is ``best[T][B]``. The path is recovered backwards without pointers: at (t, e) some
entering edge satisfies ``best[s][e - c] + l == best[t][e]``; step to (s, e - c). Ties are broken
by the lowest edge index, so the result is deterministic.

Cost: O(edges x B) integer operations (numpy rows), memory (T + 1) x (B + 1) integers.
This shares nothing with ``cpsat.py`` beyond the ``Problem`` it reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from .problem import Problem


@dataclass(frozen=True)
class DPResult:
    latency_units: int
    error_units: int
    path: tuple[int, ...]          # edge indices, from boundary 0 to T


def _dtype(problem: Problem):
    top = sum(max((problem.edges[i].latency_units for i in problem.in_edges[t]), default=0) for t in range(problem.num_steps + 1))
    return np.int32 if top < 2**30 else np.int64


def solve_dp(problem: Problem) -> Optional[DPResult]:
    """Least-latency path with error units <= budget units; None if there is none."""
    B = problem.budget_units
    T = problem.num_steps
    if B < 0:
        return None
    dtype = _dtype(problem)
    inf = np.iinfo(dtype).max // 2
    best = np.full((T + 1, B + 1), inf, dtype=dtype)
    best[0, :] = 0
    edges = problem.edges
    for t in range(1, T + 1):
        row = best[t]
        for i in problem.in_edges[t]:
            e = edges[i]
            c = e.error_units
            if c > B:
                continue
            cand = best[e.start, : B + 1 - c] + e.latency_units
            np.minimum(row[c:], cand, out=row[c:])
    if best[T, B] >= inf:
        return None
    # walk back
    path: list[int] = []
    t, budget_left = T, B
    while t > 0:
        target = best[t, budget_left]
        for i in problem.in_edges[t]:
            e = edges[i]
            c = e.error_units
            if c <= budget_left and best[e.start, budget_left - c] + e.latency_units == target:
                path.append(i)
                t, budget_left = e.start, budget_left - c
                break
        else:  # pragma: no cover - would mean the table is inconsistent
            raise RuntimeError(f"DP backtrack failed at boundary {t}")
    path.reverse()
    return DPResult(latency_units=int(best[T, B]), error_units=sum(edges[i].error_units for i in path), path=tuple(path))


def min_error_path(problem: Problem) -> Optional[DPResult]:
    """Least-error path (latency ignored for choosing, lowest latency among ties), over the
    problem's edges. With exact windows always present this is 0; kept general."""
    T = problem.num_steps
    edges = problem.edges
    inf = (float("inf"), float("inf"))
    best: list[tuple[float, float]] = [inf] * (T + 1)
    choice: list[int] = [-1] * (T + 1)
    best[0] = (0, 0)
    for t in range(1, T + 1):
        for i in problem.in_edges[t]:
            e = edges[i]
            prev = best[e.start]
            cand = (prev[0] + e.error_units, prev[1] + e.latency_units)
            if cand < best[t]:
                best[t], choice[t] = cand, i
    if best[T] == inf:
        return None
    path = []
    t = T
    while t > 0:
        path.append(choice[t])
        t = edges[choice[t]].start
    path.reverse()
    return DPResult(latency_units=int(best[T][1]), error_units=int(best[T][0]), path=tuple(path))

"""Exact dynamic program over the same integer data as the CP-SAT model (the tests' oracle, ``--solver dp``).

``best[t][k][e]`` = least latency units of a path from boundary 0 to boundary t that ends with k
fresh outputs (the freshness rule of problem.py, k in 0..2) and whose error units total at most e
(so each row is nonincreasing in e). Edges only go forward, so boundaries are processed in order,
each pushing its rows along the edges leaving it:

    best[t][k'][e] = min over edges (s -> t, latency l, error c <= e), states k allowed at s with
                     k' = after(kind, k), of best[s][k][e - c] + l

The optimum is ``min_k best[T][k][B]``. The path is recovered backwards without pointers: at
(t, k', e) some entering edge and state k satisfy ``best[s][k][e - c] + l == best[t][k'][e]``.
Ties go to the lowest edge index, so the result is deterministic.

Cost: O(3 x edges x B) integer operations (numpy rows), memory 3 (T + 1) (B + 1) integers.
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


def _needs(kind: str, predictor) -> int:
    # written out here, independently of problem.fresh_needed (see problem.py's module doc)
    if kind == "exact":
        return 0
    return 2 if predictor == "linear" else 1


def _after(kind: str, fresh: int) -> int:
    if kind == "exact":
        return min(2, fresh + 1)
    return 2 if kind == "parallel" else 0


def solve_dp(problem: Problem) -> Optional[DPResult]:
    """Least-latency path with error units <= budget units (and the freshness rule of
    problem.py); None if there is none."""
    B = problem.budget_units
    T = problem.num_steps
    if B < 0:
        return None
    dtype = _dtype(problem)
    inf = np.iinfo(dtype).max // 2
    # best[b, k, e]: least latency to boundary b with k fresh outputs just before it, error <= e
    best = np.full((T + 1, 3, B + 1), inf, dtype=dtype)
    best[0, 0, :] = 0
    edges = problem.edges
    for b in range(T):
        for i in problem.out_edges[b]:
            e = edges[i]
            c = e.error_units
            if c > B:
                continue
            for k in range(_needs(e.kind, e.predictor), 3):
                src = best[b, k, : B + 1 - c]
                if src[-1] >= inf:          # rows are nonincreasing: unreachable state
                    continue
                dst = best[e.stop, _after(e.kind, k), c:]
                np.minimum(dst, src + e.latency_units, out=dst)
    k_end = int(np.argmin(best[T, :, B]))
    if best[T, k_end, B] >= inf:
        return None
    # walk back
    path: list[int] = []
    t, k2, budget_left = T, k_end, B
    while t > 0:
        target = best[t, k2, budget_left]
        for i in problem.in_edges[t]:
            e = edges[i]
            c = e.error_units
            if c > budget_left:
                continue
            found = None
            for k in range(_needs(e.kind, e.predictor), 3):
                if _after(e.kind, k) == k2 and best[e.start, k, budget_left - c] + e.latency_units == target:
                    found = k
                    break
            if found is not None:
                path.append(i)
                t, k2, budget_left = e.start, found, budget_left - c
                break
        else:  # pragma: no cover - would mean the table is inconsistent
            raise RuntimeError(f"DP backtrack failed at boundary {t}")
    path.reverse()
    return DPResult(latency_units=int(best[T, k_end, B]), error_units=sum(edges[i].error_units for i in path), path=tuple(path))

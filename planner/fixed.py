"""The paper's hand plan (``--policy fixed``), priced with the same functions as the optimal planner.

W exact warm-up steps, then parallel windows of N = min(G, J) steps each (the last one shorter),
offset j on rank j, predictor ``last``. A final remainder of a single step is emitted as an exact
window: a parallel window of size 1 would cost an exchange on top of an exact window's work and
add nothing (its only offset sees the exact input). With N = 1 (one GPU, or J = 1) the plan is all
exact windows.

Default warm-up: 10% of the steps rounded half up, at least 1, at most T:
``min(T, max(1, (T + 5) // 10))`` (5 for the paper's 50-step models, 20 for 200 steps).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from ..profiles.model import Predictor, Profile
from .problem import EdgeKind, error_units, latency_units, window_latency_s


@dataclass(frozen=True)
class FixedWindow:
    start: int
    size: int
    kind: EdgeKind
    predictor: Optional[Predictor]
    placement: tuple[int, ...]
    latency_s: float
    error: float


def default_warmup(num_steps: int) -> int:
    """10% of the steps, rounded half up, at least 1 (and never more than the steps)."""
    return min(num_steps, max(1, (num_steps + 5) // 10))


def fixed_windows(profile: Profile, *, world_size: int, max_window: int, warmup: int) -> list[FixedWindow]:
    """The hand plan's windows with their latency and predicted error."""
    T = profile.num_steps
    if not 1 <= warmup <= T:
        raise ValueError(f"warmup must be in 1..{T}, got {warmup}")
    n = min(world_size, max_window)
    out: list[FixedWindow] = []
    exact_s = window_latency_s(profile, kind="exact", size=1, world_size=world_size)
    s = 0
    while s < T:
        w = 1 if s < warmup else min(n, T - s)
        if w == 1:
            out.append(FixedWindow(start=s, size=1, kind="exact", predictor=None, placement=(), latency_s=exact_s, error=0.0))
        else:
            placement = tuple(range(w))
            err = profile.window_deviation("parallel", start=s, size=w, predictor="last")
            if err is None:
                raise ValueError(f"profile '{profile.name}' has no deviation for a window of {w} steps at step {s}")
            lat = window_latency_s(profile, kind="parallel", size=w, world_size=world_size, placement=placement)
            out.append(FixedWindow(start=s, size=w, kind="parallel", predictor="last", placement=placement, latency_s=lat, error=err))
        s += w
    return out


def fixed_error(windows: list[FixedWindow]) -> float:
    return math.fsum(w.error for w in windows)


def fixed_error_units(windows: list[FixedWindow], *, scale: float) -> int:
    """The hand plan's integer error: each window rounded up, exactly as the planner's edges are."""
    return sum(error_units(w.error, scale=scale) for w in windows)


def fixed_latency_units(windows: list[FixedWindow], *, scale: float) -> int:
    return sum(latency_units(w.latency_s, scale=scale) for w in windows)

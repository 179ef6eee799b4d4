"""The paper's hand plan (``--policy fixed``), priced with the same functions as the optimal planner.

W exact warm-up steps, then parallel windows of N = min(G, J) steps each (the last one shorter),
offset j on rank j, predictor ``last``. Its BatchStep variant (``--policy fixed-batch``): windows of
N = min(2G, J) steps, offsets 2r and 2r + 1 on rank r in one batched call. A final remainder of a single step is emitted as an exact
window: a parallel window of size 1 would cost an exchange on top of an exact window's work and
add nothing (its only offset sees the exact input). With N = 1 (one GPU, or J = 1) the plan is all
exact windows.

Default warm-up: 10% of the steps rounded half up, at least 1, at most T:
``min(T, max(1, (T + 5) // 10))`` (5 for the paper's 50-step models, 20 for 200 steps).
"""

from __future__ import annotations

import math
from ..profiles.model import Profile
from .problem import PlannedWindow, block_placement, error_units, latency_units, window_latency_s



def default_warmup(num_steps: int) -> int:
    """10% of the steps, rounded half up, at least 1 (and never more than the steps)."""
    return min(num_steps, max(1, (num_steps + 5) // 10))


def fixed_windows(profile: Profile, *, world_size: int, max_window: int, warmup: int, batch: bool = False) -> list[PlannedWindow]:
    """The hand plan's windows with their latency and predicted error. ``batch`` (``--policy
    fixed-batch``, BatchStep): windows of min(2G, J) steps, two consecutive offsets per rank in one call."""
    T = profile.num_steps
    if not 1 <= warmup <= T:
        raise ValueError(f"warmup must be in 1..{T}, got {warmup}")
    n = min(2 * world_size if batch else world_size, max_window)
    out: list[PlannedWindow] = []
    exact_s = window_latency_s(profile, kind="exact", size=1, world_size=world_size)
    zero = (0.0,) * profile.quality_samples
    s = 0
    while s < T:
        w = 1 if s < warmup else min(n, T - s)
        if w == 1:
            out.append(PlannedWindow(start=s, size=1, kind="exact", predictor=None, placement=(), latency_s=exact_s, errors=zero))
        else:
            batched = batch and w > world_size
            placement = block_placement(size=w, world_size=world_size) if batched else tuple(range(w))
            err = profile.window_errors("parallel", start=s, size=w, predictor="last")
            if err is None:
                raise ValueError(f"profile '{profile.name}' has no deviation for a window of {w} steps at step {s}")
            lat = window_latency_s(profile, kind="parallel", size=w, world_size=world_size, placement=placement, batch=batched)
            out.append(PlannedWindow(start=s, size=w, kind="parallel", predictor="last", placement=placement, latency_s=lat,
                                     errors=err, batch=batched))
        s += w
    return out


def fixed_sample_errors(windows: list[PlannedWindow]) -> tuple[float, ...]:
    """The hand plan's predicted error per calibration sample."""
    return tuple(math.fsum(col) for col in zip(*(w.errors for w in windows)))


def fixed_error(windows: list[PlannedWindow]) -> float:
    """Mean over samples."""
    per = fixed_sample_errors(windows)
    return math.fsum(per) / len(per)


def fixed_sample_error_units(windows: list[PlannedWindow], *, scale: float) -> tuple[int, ...]:
    """The hand plan's integer error per sample: each window rounded up, exactly as the planner's edges are."""
    return tuple(sum(col) for col in zip(*((error_units(x, scale=scale) for x in w.errors) for w in windows)))


def fixed_latency_units(windows: list[PlannedWindow], *, scale: float) -> int:
    return sum(latency_units(w.latency_s, scale=scale) for w in windows)

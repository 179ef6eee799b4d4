"""Random valid profiles for tests: ``make_profile(num_steps=, max_window=, seed=)`` and the
hypothesis strategy ``random_profiles(...)``; and random valid schedules: ``valid_schedules(...)``.

The numbers look like a real profile (deviation growing with the offset, ``linear`` better than
``last`` for short windows and worse for long ones, propagation gains decaying over the run,
forward time of k offsets on one rank about k forwards (the executor computes them one after another), alpha-beta exchange costs), with
magnitudes spread over many decades so that integer scaling is exercised. Everything is a pure
function of the arguments (numpy Generator seeded with ``seed``).
"""

from __future__ import annotations

import math
from typing import Literal, Optional

import numpy as np
from hypothesis import strategies as st

from parastep.schedules.check import implied_totals
from parastep.schedules.model import ExactWindow, ParallelWindow, ReuseWindow, Schedule
from parastep.profiles.model import (
    Calibration, CalibrationSample, Comm, CommEntry, Compute, DeviationStats, Measured, OutputErrors, Prior, Profile,
    Propagation, Provenances, Similarity,
)

PREDICTOR_FIRST_STEP = {"last": 1, "linear": 2}


def _tables(rng: np.random.Generator, *, num_steps: int, max_window: int, base: np.ndarray, reuse: bool) -> dict:
    out = {}
    # exponents: linear extrapolation wins for short windows, loses for long ones
    shape = {"last": (rng.uniform(0.8, 1.3), 1.0), "linear": (rng.uniform(1.6, 2.4), rng.uniform(0.15, 0.6))}
    for pred, (power, factor) in shape.items():
        mean_rows, max_rows = [], []
        for s in range(num_steps):
            n = 0 if s < PREDICTOR_FIRST_STEP[pred] else min(max_window, num_steps - s)
            j = np.arange(n, dtype=float)
            x = j + 1.0 if reuse else j          # offset 0 of a parallel window is exact
            noise = rng.lognormal(0.0, 0.25, size=n)
            mean = base[s] * factor * x ** power * noise
            if not reuse and n:
                mean[0] = 0.0
            spread = rng.uniform(1.0, 2.5, size=n)
            mean_rows.append([float(v) for v in mean])
            max_rows.append([float(v) for v in mean * spread])
        out[pred] = DeviationStats(mean=mean_rows, max=max_rows)
    return out


def make_profile(*, num_steps: int, max_window: int, seed: int, model: str = "random", max_ranks: int = 64,
                 forward_s: Optional[list[float]] = None, step_s: Optional[float] = None,
                 step_overhead_s: Optional[float] = None, comm: Optional[Comm] = None,
                 deviation_scale: Optional[float] = None, calibration: bool = False,
                 provenance: Literal["prior", "measured"] = "prior", output_bytes: Optional[int] = None,
                 samples: Optional[int] = None, half_forward_ratio: Optional[float] = None,
                 batched_forward_s: Optional[list[float]] = None) -> Profile:
    """A random valid profile. Any cost part given explicitly replaces the random one. ``samples``:
    per-sample output errors (``Profile.output_errors``) for that many calibration samples: the
    mean-table window error times a per-sample, per-window lognormal factor (samples disagree on
    which windows are dear, as real images do). ``half_forward_ratio``: CFG-split costs (a half
    forward of that share of one forward, and a pair swap priced like the 2-rank exchange). ``batched_forward_s``:
    a batch curve (BatchStep)."""
    rng = np.random.default_rng(seed)
    T, J = num_steps, max_window
    scale = deviation_scale if deviation_scale is not None else 10.0 ** rng.uniform(-5, 1)
    base = scale * np.exp(-rng.uniform(0, 3) * np.arange(T) / max(T, 1)) * rng.lognormal(0, 0.3, size=T)
    gain = np.exp(rng.uniform(-2, 1) * np.arange(T) / max(T, 1)) * rng.uniform(0.3, 3.0)
    f1 = float(10.0 ** rng.uniform(-3, 0))
    if forward_s is None:
        beta = rng.uniform(0.9, 1.0)      # k consecutive forwards: close to k x one forward
        forward_s = [f1 * (1.0 + beta * k) for k in range(J)]
    if step_s is None:
        step_s = float(f1 * rng.uniform(0.0, 0.1))
    if step_overhead_s is None:
        step_overhead_s = float(f1 * rng.uniform(0.0, 0.05))
    out_bytes = output_bytes if output_bytes is not None else int(rng.integers(1_000, 20_000_000))
    if comm is None:
        alpha = float(10.0 ** rng.uniform(-6, -3))
        bw = float(10.0 ** rng.uniform(8, 11))
        comm = Comm(entries=[CommEntry(ranks=g, latency_s=alpha * (1 + np.log2(g)), bandwidth_bytes_per_s=bw / (1 + 0.1 * np.log2(g)))
                             for g in range(2, max_ranks + 1)])
    if provenance == "prior":
        prov = Prior(rule=f"random test profile (tests/strategies.py make_profile seed={seed})", reference="tests")
    else:
        prov = Measured(device="test fixture", date="2026-01-01", notes=f"tests/strategies.py seed={seed}")
    cal = None
    if calibration:
        cal = Calibration(intercept_db=float(rng.uniform(10, 30)), slope_db_per_decade=float(rng.uniform(5, 20)), fitted_on=40, how="synthetic")
    profile = Profile(
        name=f"{model}-T{T}-J{J}-seed{seed}", model=model, resolution_px=(64, 64), scheduler="DDIMScheduler",
        guidance_scale=5.0, num_steps=T, max_window=J, output_bytes=out_bytes,
        provenance=Provenances(deviation=prov, propagation=prov, similarity=prov, compute=prov, comm=prov,
                               calibration=prov if calibration else None),
        deviation=_tables(rng, num_steps=T, max_window=J, base=base, reuse=False),
        reuse_deviation=_tables(rng, num_steps=T, max_window=J, base=base * float(10.0 ** rng.uniform(0, 1.5)), reuse=True),
        propagation=Propagation(gain=[float(g) for g in gain]),
        similarity=Similarity(cosine=[float(v) for v in rng.uniform(0.9, 1.0, size=T - 1)],
                              rel_l1=[float(v) for v in rng.uniform(0.0, 0.2, size=T - 1)]),
        compute=Compute(forward_s=[float(v) for v in forward_s], step_s=step_s, step_overhead_s=step_overhead_s,
                        half_forward_s=None if half_forward_ratio is None else float(half_forward_ratio * forward_s[0]),
                        batched_forward_s=None if batched_forward_s is None else [float(v) for v in batched_forward_s]),
        comm=comm if half_forward_ratio is None or comm.pair is not None else comm.model_copy(
            update={"pair": CommEntry(ranks=2, latency_s=comm.entries[0].latency_s, bandwidth_bytes_per_s=comm.entries[0].bandwidth_bytes_per_s)}),
        calibration=cal,
    )
    if samples is None:
        return profile
    hard = rng.lognormal(0.0, 0.5, size=samples)           # some images are harder than others
    tables: dict = {}
    for kind in ("parallel", "reuse"):
        tables[kind] = {}
        for pred in ("last", "linear"):
            rows = []
            for s in range(T):
                row = []
                for w in range(1, len(profile.deviation[pred].mean[s]) + 1):
                    base_err = profile.window_deviation(kind, start=s, size=w, predictor=pred)
                    row.append([float(base_err * h * f) for h, f in zip(hard, rng.lognormal(0.0, 0.4, size=samples))])
                rows.append(row)
            tables[kind][pred] = rows
    oe = OutputErrors(samples=[CalibrationSample(prompt=str(n % 10), seed=n // 10) for n in range(samples)],
                      parallel=tables["parallel"], reuse=tables["reuse"], rank=4, captured_energy=1.0)
    return Profile.model_validate({**profile.model_dump(), "output_errors": oe.model_dump()})


def with_calibration(profile: Profile, *, world_size: int = 2, at_db: float = 30.0, slope: float = 20.0,
                     rank: Optional[int] = None) -> Profile:
    """``profile`` with a calibration that puts the fixed plan's ``rank``-th smallest predicted image
    error (default: the median image) at ``at_db``."""
    from parastep.planner.plan import plan_schedule
    from parastep.profiler.calibrate import predicted_per_sample

    fixed = plan_schedule(profile, profile_sha256="0" * 64, world_size=world_size, policy="fixed").schedule
    errors = sorted(predicted_per_sample(fixed, profile))
    e = errors[len(errors) // 2 if rank is None else rank]
    cal = Calibration(intercept_db=at_db + slope * math.log10(e), slope_db_per_decade=slope, fitted_on=10, how="test")
    return profile.model_copy(update={"calibration": cal})


def every_window(profile: Profile):
    """(kind, predictor, start, size) of every entry of a profile's per-sample tables."""
    for kind in ("parallel", "reuse"):
        for pred, rows in getattr(profile.output_errors, kind).items():
            for s, row in enumerate(rows):
                for w in range(1, len(row) + 1):
                    yield kind, pred, s, w


def zero_comm(*, max_ranks: int = 64) -> Comm:
    """Exchange costs of (numerically) zero: no latency, the largest float as bandwidth."""
    return Comm(preset="zero", entries=[CommEntry(ranks=2, latency_s=0.0, bandwidth_bytes_per_s=float(np.finfo(float).max))])


@st.composite
def random_profiles(draw, *, min_steps: int = 1, max_steps: int = 60, min_window: int = 1, max_window: int = 16,
                    calibration: Optional[bool] = None):
    """Hypothesis strategy: a random valid Profile (num_steps in [min_steps, max_steps],
    max_window in [min_window, max_window])."""
    T = draw(st.integers(min_steps, max_steps))
    J = draw(st.integers(min_window, max_window))
    seed = draw(st.integers(0, 2**31 - 1))
    cal = draw(st.booleans()) if calibration is None else calibration
    profile = make_profile(num_steps=T, max_window=J, seed=seed, calibration=cal)
    slope = draw(st.one_of(st.none(), st.floats(0.2, 1.2)))   # a batch curve half the time, sometimes dearer than k calls
    if slope is None:
        return profile
    f1 = profile.compute.forward_s[0]
    curve = [f1 * (1.0 + slope * k) for k in range(draw(st.integers(1, max(1, J))))]
    return profile.model_copy(update={"compute": profile.compute.model_copy(update={"batched_forward_s": curve})})


@st.composite
def valid_schedules(draw, *, max_steps: int = 40, max_world: int = 64, max_window: int = 10) -> Schedule:
    """A random valid schedule: exact first window, then any mix of exact / parallel / reuse windows
    (predictor linear only from step 2), random placements, totals as the windows imply."""
    T = draw(st.integers(1, max_steps))
    G = draw(st.integers(1, max_world))
    J = draw(st.integers(1, max_window))
    windows: list = [ExactWindow(start=0)]
    s = 1
    while s < T:
        kind = draw(st.sampled_from(["exact", "parallel", "reuse"]))
        if kind == "parallel" and (T - s < 2 or J < 2):
            kind = "exact"                      # a parallel window has w >= 2 (docs/design.md §1)
        if kind == "exact":
            windows.append(ExactWindow(start=s))
            s += 1
            continue
        size = draw(st.integers(2 if kind == "parallel" else 1, min(J, T - s)))
        pred = draw(st.sampled_from(["last", "linear"] if s >= 2 else ["last"]))
        if kind == "parallel":
            placement = draw(st.lists(st.integers(0, G - 1), min_size=size, max_size=size))
            windows.append(ParallelWindow(start=s, placement=placement, predictor=pred, batch=draw(st.booleans())))
        else:
            windows.append(ReuseWindow(start=s, size=size, predictor=pred))
        s += size
    output_bytes = draw(st.integers(1, 1 << 20))
    return Schedule(
        model=draw(st.sampled_from(["sdxl", "digits", "toy"])), scheduler="EulerDiscreteScheduler",
        num_steps=T, world_size=G, max_window=J, output_bytes=output_bytes,
        totals=implied_totals(windows, world_size=G, output_bytes=output_bytes), windows=windows,
    )


@st.composite
def split_schedules(draw, *, min_steps: int = 2, max_steps: int = 10, world_sizes: tuple[int, ...] = (2, 4),
                    max_window: int = 4, output_bytes: int = 4) -> Schedule:
    """A random valid schedule with CFG splits (world size drawn from ``world_sizes``, each >= 2):
    exact windows with 0..G//2 disjoint ``split`` pairs, parallel windows whose offsets are a rank or a
    ``[rank_uncond, rank_cond]`` pair of two distinct ranks, reuse windows; totals as the windows imply."""
    T = draw(st.integers(min_steps, max_steps))
    G = draw(st.sampled_from(world_sizes))
    J = max_window
    rank = st.integers(0, G - 1)
    pair = st.lists(rank, min_size=2, max_size=2, unique=True)
    windows: list = []
    s = 0
    while s < T:
        kind = "exact" if s == 0 else draw(st.sampled_from(["exact", "parallel", "reuse"]))
        if kind == "parallel" and (T - s < 2 or J < 2):
            kind = "exact"
        if kind == "exact":
            order = draw(st.permutations(range(G)))
            n = draw(st.integers(0, G // 2))
            windows.append(ExactWindow(start=s, split=[list(order[2 * k:2 * k + 2]) for k in range(n)] or None))
            s += 1
            continue
        size = draw(st.integers(2 if kind == "parallel" else 1, min(J, T - s)))
        pred = draw(st.sampled_from(["last", "linear"] if s >= 2 else ["last"]))
        if kind == "parallel":
            placement = draw(st.lists(st.one_of(rank, pair), min_size=size, max_size=size))
            batch = all(isinstance(e, int) for e in placement) and draw(st.booleans())   # no batch with a split entry
            windows.append(ParallelWindow(start=s, placement=placement, predictor=pred, batch=batch))
        else:
            windows.append(ReuseWindow(start=s, size=size, predictor=pred))
        s += size
    return Schedule(
        model="tiny", scheduler="DDIMScheduler", num_steps=T, world_size=G, max_window=J, output_bytes=output_bytes,
        totals=implied_totals(windows, world_size=G, output_bytes=output_bytes), windows=windows,
    )

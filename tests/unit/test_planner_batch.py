"""BatchStep in the planner: pricing, placement, defaults, the fixed-batch hand plan, one-GPU plans."""

from __future__ import annotations

import itertools
import math

import pytest

from parastep.planner.fixed import default_warmup, fixed_windows
from parastep.planner.plan import plan_schedule, recompute
from parastep.planner.problem import (block_placement, best_placement, build_problem, default_max_window,
                                      round_robin_placement, window_latency_s)
from parastep.schedules.check import violations
from parastep.schedules.model import ParallelWindow
from parastep.schedules.simulate import simulate
from strategies import make_profile, zero_comm

SHA = "0" * 64


def _profile(*, slope: float | None, T: int = 30, J: int = 8, step_s: float = 1e-4, seed: int = 3):
    fwd = [1e-2 * (k + 1) for k in range(J)]
    curve = None if slope is None else [1e-2 * (1 + slope * k) for k in range(J)]
    return make_profile(num_steps=T, max_window=J, seed=seed, forward_s=fwd, step_s=step_s, step_overhead_s=0.0,
                        comm=zero_comm(), batched_forward_s=curve)


@pytest.mark.parametrize("w,g", [(w, g) for w in range(2, 7) for g in (1, 2, 3)])
def test_block_placement_is_the_fastest_batched_placement(w, g):
    """Exhaustive over every placement of w offsets on g ranks: none batched is faster than the block one."""
    prof = _profile(slope=0.35, step_s=2e-3)
    blocks = window_latency_s(prof, kind="parallel", size=w, world_size=g, placement=block_placement(size=w, world_size=g),
                              batch=True)
    best = min(window_latency_s(prof, kind="parallel", size=w, world_size=g, placement=p, batch=True)
               for p in itertools.product(range(g), repeat=w))
    assert blocks == pytest.approx(best, rel=1e-12)
    if w > g:   # and the planner keeps it where it beats round robin one call each
        placement, lat, batched = best_placement(prof, size=w, world_size=g, allow_split=False)
        rr = window_latency_s(prof, kind="parallel", size=w, world_size=g, placement=round_robin_placement(size=w, world_size=g))
        assert batched == (blocks < rr) and lat == pytest.approx(min(blocks, rr))
        assert (placement == block_placement(size=w, world_size=g)) == batched


def test_a_curve_dearer_than_single_calls_never_batches():
    prof = _profile(slope=1.2)
    for w in range(2, 9):
        assert best_placement(prof, size=w, world_size=1, allow_split=False)[2] is False


def test_one_gpu_plans_batched_windows_only_with_a_curve():
    with_curve, without = _profile(slope=0.3), _profile(slope=None)
    assert default_max_window(with_curve, world_size=1) == 8 and default_max_window(without, world_size=1) == 1
    assert default_max_window(with_curve, world_size=2) == 2     # longer windows at G >= 2: --max-window (see its docstring)
    on = build_problem(with_curve, world_size=1, max_window=8, budget=1e9)
    off = build_problem(without, world_size=1, max_window=8, budget=1e9)
    par = [e for e in on.edges if e.kind == "parallel"]
    assert par and all(e.batch and set(e.placement) == {0} for e in par)
    assert not [e for e in off.edges if e.kind == "parallel"]   # one GPU, one call each: never pays (rule 3)
    # a plan that must use them: reuse priced out of reach, every parallel window of the table allowed
    tables = with_curve.reuse_deviation
    dear = {p: t.model_copy(update={"mean": [[1e6] * len(r) for r in t.mean], "max": [[1e6] * len(r) for r in t.max]})
            for p, t in tables.items()}
    prof = with_curve.model_copy(update={"reuse_deviation": dear})
    s = plan_schedule(prof, profile_sha256=SHA, world_size=1, budget=1e3).schedule
    batched = [w for w in s.windows if isinstance(w, ParallelWindow)]
    assert batched and all(w.batch and set(w.placement) == {0} for w in batched) and violations(s) == []
    assert s.latency.speedup > 1.0
    assert math.isclose(simulate(s, prof).latency_s, s.latency.predicted_s, rel_tol=1e-9)
    assert math.isclose(recompute(s, prof)[0], s.latency.predicted_s, rel_tol=1e-9)


def test_batching_never_makes_a_plan_slower():
    """The same statement with and without BatchStep: batching only adds faster choices."""
    prof = _profile(slope=0.4, T=40, seed=11)
    for g in (1, 2, 4):
        for budget in (0.0, 1e-3, 1e9):
            on = plan_schedule(prof, profile_sha256=SHA, world_size=g, budget=budget, max_window=8).schedule
            off = plan_schedule(prof, profile_sha256=SHA, world_size=g, budget=budget, max_window=8, allow_batch=False).schedule
            assert on.latency.predicted_s <= off.latency.predicted_s * (1 + 1e-9)


def test_fixed_batch_is_the_hand_plan_with_two_offsets_per_gpu_in_one_call():
    prof = _profile(slope=0.3, T=30)
    G = 3
    s = plan_schedule(prof, profile_sha256=SHA, world_size=G, policy="fixed-batch").schedule
    assert s.policy == "fixed-batch" and violations(s) == []
    W = default_warmup(30)
    assert [w.kind for w in s.windows[:W]] == ["exact"] * W
    par = [w for w in s.windows if isinstance(w, ParallelWindow)]
    assert par[0].placement == [0, 0, 1, 1, 2, 2] and par[0].batch
    assert fixed_windows(prof, world_size=G, max_window=6, warmup=W, batch=True)[W].batch
    assert math.isclose(simulate(s, prof).latency_s, s.latency.predicted_s, rel_tol=1e-9)

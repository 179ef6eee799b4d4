"""CFG split in the planner: the placement family, its latency against the independent op
graph of ``simulate``, lossless planning at budget 0, and the switches that turn it off.

CP-SAT == DP with split edges is covered by tests/test_planner.py's random instances (a third of
them can split)."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given, settings, strategies as st

from parastep.planner.plan import plan_schedule
from parastep.planner.problem import best_exact, best_placement, round_robin_placement, split_placement, window_latency_s
from parastep.schedules.check import implied_totals, violations
from parastep.schedules.model import ExactWindow, ParallelWindow, Schedule
from parastep.schedules.simulate import simulate

from strategies import make_profile, zero_comm

SHA = "0" * 64


def _profile(seed: int, *, ratio: float = 0.55, T: int = 16, J: int = 6, comm=None):
    return make_profile(num_steps=T, max_window=J, seed=seed, half_forward_ratio=ratio, max_ranks=8, comm=comm)


def _one_window_schedule(profile, placement, G: int) -> Schedule:
    """Exact step 0, then one parallel window with ``placement`` (sizes only; quality is not asked)."""
    w = len(placement)
    wins = [ExactWindow(start=0), ParallelWindow(start=1, placement=[e if isinstance(e, int) else list(e) for e in placement])]
    return Schedule(model="t", scheduler="DDIMScheduler", num_steps=1 + w, world_size=G, max_window=w,
                    output_bytes=profile.output_bytes,
                    totals=implied_totals(wins, world_size=G, output_bytes=profile.output_bytes), windows=wins)


def _family(size: int, G: int):
    yield round_robin_placement(size=size, world_size=G)
    for pairs in range(1, G // 2 + 1):
        singles = G - 2 * pairs
        for x in range(0 if singles else size, size + 1):
            yield split_placement(size=size, world_size=G, pairs=pairs, split_offsets=x)


@pytest.mark.parametrize("seed", range(6))
def test_best_placement_is_the_fastest_of_its_family_priced_by_the_op_graph(seed):
    """Differential: the planner's closed-form pick against every family member timed by simulate's DAG."""
    prof = _profile(seed, ratio=[0.5, 0.6, 0.75, 0.9, 1.0, 0.52][seed])
    exact_s = simulate(_one_window_schedule(prof, (0, 1), 2), prof)   # warm the path; value unused
    assert exact_s.latency_s > 0
    for G in range(2, 7):
        for size in range(2, 6):
            chosen, lat, _ = best_placement(prof, size=size, world_size=G, allow_split=True)
            base = prof.forward_time_s(1) + prof.step_time_s()        # the exact step 0
            sim = simulate(_one_window_schedule(prof, chosen, G), prof).latency_s - base
            assert math.isclose(sim, lat, rel_tol=1e-9), (G, size, chosen)
            others = [simulate(_one_window_schedule(prof, p, G), prof).latency_s - base for p in _family(size, G)]
            assert lat <= min(others) * (1 + 1e-12), (G, size, chosen, min(others))


def test_round_robin_is_optimal_among_all_unsplit_placements():
    """Brute force over every assignment of offsets to ranks (the docstring's pigeonhole argument)."""
    prof = _profile(1)
    for G in range(2, 5):
        for size in range(2, 5):
            rr = window_latency_s(prof, kind="parallel", size=size, world_size=G, placement=round_robin_placement(size=size, world_size=G))
            best = min(simulate(_one_window_schedule(prof, p, G), prof).latency_s for p in itertools.product(range(G), repeat=size))
            base = prof.forward_time_s(1) + prof.step_time_s()
            assert math.isclose(best - base, rr, rel_tol=1e-9)


@pytest.mark.parametrize("G", [2, 4, 8])
def test_budget_zero_plans_only_split_exact_steps_when_a_half_is_cheaper(G):
    prof = _profile(3, ratio=0.55, comm=zero_comm())
    s = plan_schedule(prof, profile_sha256=SHA, world_size=G, budget=0.0).schedule
    assert all(isinstance(w, ExactWindow) for w in s.windows)
    assert all(w.split == [[2 * k, 2 * k + 1] for k in range(G // 2)] for w in s.windows)
    assert violations(s) == []
    half = prof.half_forward_time_s(1) + prof.pair_exchange_time_s()
    assert math.isclose(s.latency.speedup, (prof.forward_time_s(1) + prof.step_time_s()) / (half + prof.step_time_s()), rel_tol=1e-9)
    assert math.isclose(simulate(s, prof).latency_s, s.latency.predicted_s, rel_tol=1e-9)


def test_no_split_when_off_odd_without_costs_or_not_cheaper():
    prof = _profile(3, ratio=0.55, comm=zero_comm())
    for kwargs in ({"world_size": 2, "allow_split": False}, {"world_size": 3}):
        s = plan_schedule(prof, profile_sha256=SHA, budget=0.0, **kwargs).schedule
        assert all(w.split is None for w in s.windows), kwargs
        assert s.latency.speedup == pytest.approx(1.0)
    plain = make_profile(num_steps=16, max_window=6, seed=3, max_ranks=8)          # no half-forward time
    assert not plain.can_split
    assert all(w.split is None for w in plan_schedule(plain, profile_sha256=SHA, world_size=2, budget=0.0).schedule.windows)
    dear = _profile(3, ratio=1.0, comm=zero_comm())                                                 # a half costs a whole forward
    assert best_exact(dear, world_size=2, allow_split=True)[0] == ()


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10 ** 6), G=st.integers(1, 8), ratio=st.sampled_from([0.5, 0.6, 0.73, 0.9]),
       budget=st.sampled_from([0.0, None, 1e-3, 1e9]))
def test_split_plans_are_valid_and_simulate_agrees(seed, G, ratio, budget):
    """Every plan: valid, priced the same by the planner and by the op graph, never slower than without splits."""
    prof = _profile(seed, ratio=ratio, T=12, J=4)
    s = plan_schedule(prof, profile_sha256=SHA, world_size=G, budget=budget).schedule
    assert violations(s) == []
    assert math.isclose(simulate(s, prof).latency_s, s.latency.predicted_s, rel_tol=1e-9)
    off = plan_schedule(prof, profile_sha256=SHA, world_size=G, budget=budget, allow_split=False).schedule
    assert s.solver.objective <= off.solver.objective
    assert s.quality.predicted_units <= s.quality.budget_units or s.quality.per_sample is not None


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10 ** 6), G=st.integers(2, 8), ratio=st.sampled_from([None, 0.55, 0.75]),
       budget=st.sampled_from([0.0, None, 1e-3, 1e9]))
def test_fewer_gpus_pruning_loses_nothing(seed, G, ratio, budget):
    """Differential: the fastest plan over the non-dominated world sizes equals the fastest over every
    world size 1..G (same quality statement, default bounds from the hand plan on G ranks)."""
    from parastep.planner.plan import world_size_candidates

    prof = make_profile(num_steps=12, max_window=4, seed=seed, half_forward_ratio=ratio, max_ranks=8)
    J = min(G, prof.max_window)

    def best(sizes):
        return min(plan_schedule(prof, profile_sha256=SHA, world_size=g, max_window=J, budget=budget,
                                 fixed_world_size=G).schedule.solver.objective for g in sizes)

    cands = world_size_candidates(prof, world_size=G, max_window=J)
    assert cands and cands == sorted(set(cands), reverse=True) and all(1 <= g <= G for g in cands)
    assert best(cands) == best(range(1, G + 1))


def test_fewer_gpus_picks_a_smaller_world_when_exchanges_among_more_ranks_cost_more():
    from parastep.planner.request import PlanRequest, make_plan
    from parastep.planner.options import SolverOptions
    from parastep.profiles.model import Comm, CommEntry

    # exchange latency grows steeply with the ranks; a forward costs 10 ms
    comm = Comm(entries=[CommEntry(ranks=g, latency_s=0.004 * (g - 1), bandwidth_bytes_per_s=1e12) for g in range(2, 8)],
                pair=CommEntry(ranks=2, latency_s=1e-5, bandwidth_bytes_per_s=1e12))
    prof = make_profile(num_steps=20, max_window=6, seed=5, forward_s=[0.01 * k for k in range(1, 7)], step_s=0.0005,
                        step_overhead_s=0.0, comm=comm, half_forward_ratio=0.6)
    # budget 0: only exact steps; on 7 ranks one cannot pair every rank for a CFG split, on an even world one can
    req = PlanRequest(profile=prof, sha256=SHA, world_size=7, max_window=6, budget=0.0, coverage=None, min_psnr_db=None,
                      policy="optimal", warmup=None, solver="auto", options=SolverOptions(workers=1, time_limit_s=10),
                      try_fewer_gpus=True)
    res = make_plan(req)
    full = make_plan(PlanRequest(**{**req.__dict__, "try_fewer_gpus": False}))
    assert res.schedule.world_size == 2           # every even world is as fast; a tie keeps the smaller one
    assert res.schedule.latency.predicted_s < full.schedule.latency.predicted_s
    assert any("of the 7 GPUs" in w for w in res.warnings)
    assert violations(res.schedule) == []


def test_a_learned_variance_raw_half_is_priced_swapped_and_counted_at_its_own_size():
    """A model that also predicts a learned variance (DiT, PixArt) returns raw halves of twice the
    guided output's bytes: the planner prices the swap at ``raw_half_bytes``, the schedule records
    it, its totals count it, simulate agrees, and a schedule that drops it is invalid."""
    from parastep.profiles.model import CommEntry

    base = _profile(3, ratio=0.55, comm=zero_comm())
    out = base.output_bytes
    pair = CommEntry(ranks=2, latency_s=1e-6, bandwidth_bytes_per_s=out / (0.05 * base.forward_time_s(1)))  # one output: 5 % of a forward
    plain = base.model_copy(update={"comm": base.comm.model_copy(update={"pair": pair})})
    learned = plain.model_copy(update={"raw_half_bytes": 2 * out})
    assert plain.swap_bytes == out and learned.swap_bytes == 2 * out
    assert learned.pair_exchange_time_s() - plain.pair_exchange_time_s() == pytest.approx(out / pair.bandwidth_bytes_per_s)
    per_step = {}
    for name, prof in (("plain", plain), ("learned", learned)):
        s = plan_schedule(prof, profile_sha256=SHA, world_size=2, budget=0.0).schedule
        assert all(w.split == [[0, 1]] for w in s.windows), name           # a split still pays at 2 x 5 %
        assert s.raw_half_bytes == prof.raw_half_bytes
        assert s.totals.bytes_exchanged == 2 * prof.swap_bytes * s.num_steps
        assert violations(s) == []
        assert math.isclose(simulate(s, prof).latency_s, s.latency.predicted_s, rel_tol=1e-9)
        per_step[name] = s.latency.predicted_s / s.num_steps
    assert per_step["learned"] - per_step["plain"] == pytest.approx(out / pair.bandwidth_bytes_per_s, rel=1e-9)
    s = plan_schedule(learned, profile_sha256=SHA, world_size=2, budget=0.0).schedule
    dropped = s.model_copy(update={"raw_half_bytes": None})
    assert [v.code for v in violations(dropped)] == ["totals-bytes"]

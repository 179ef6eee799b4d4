"""simulate: the op-graph latency against the paper's arithmetic, hand-computed cases and the
closed-form cost model of docs/cost-model.md (written here independently, not the planner's)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from parastep.errors import UserError
from parastep.profiles.interconnects import comm_for
from parastep.profiles.io import write_profile
from parastep.profiles.model import Comm, CommEntry, Compute, Profile, Provenances
from parastep.profiles.priors import deviation_tables, propagation, provenance, similarity
from parastep.schedules.check import implied_totals
from parastep.schedules.io import dump_schedule, schedule_from_dict
from parastep.schedules.model import ExactWindow, ParallelWindow, ProfileRef, ReuseWindow, Schedule
from parastep.schedules.simulate import plot_timeline, simulate

from clitools import run_cli
from strategies import valid_schedules

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "schedules" / "examples").glob("*.yaml"))
ZERO_COMM = Comm(entries=[CommEntry(ranks=g, latency_s=0.0, bandwidth_bytes_per_s=math.inf) for g in range(2, 65)])


def make_profile(*, num_steps: int, forward_s: list[float], step_s: float, comm: Comm, model: str = "toy",
                 output_bytes: int = 1000, step_overhead_s: float = 0.0, batched_forward_s=None) -> Profile:
    dev, reuse = deviation_tables(num_steps=num_steps, max_window=4)
    prior = provenance()
    return Profile(
        name=f"{model}-test", model=model, scheduler="EulerDiscreteScheduler", num_steps=num_steps, max_window=4,
        output_bytes=output_bytes,
        provenance=Provenances(deviation=prior, propagation=prior, similarity=prior, compute=prior, comm=prior),
        deviation=dev, reuse_deviation=reuse, propagation=propagation(num_steps=num_steps),
        similarity=similarity(num_steps=num_steps),
        compute=Compute(forward_s=forward_s, step_s=step_s, step_overhead_s=step_overhead_s,
                        batched_forward_s=batched_forward_s), comm=comm,
    )


def make_schedule(windows, *, num_steps: int, world_size: int, model: str = "toy", output_bytes: int = 1000,
                  max_window: int | None = None) -> Schedule:
    sizes = [b - a for a, b in zip([w.start for w in windows], [w.start for w in windows[1:]] + [num_steps])]
    return Schedule(model=model, scheduler="EulerDiscreteScheduler", num_steps=num_steps, world_size=world_size,
                    max_window=max_window or max(sizes), output_bytes=output_bytes,
                    totals=implied_totals(windows, world_size=world_size, output_bytes=output_bytes), windows=windows)


def fixed_plan(*, num_steps: int, warmup: int, gpus: int, **kw) -> Schedule:
    """The paper's hand plan, built here (not by the planner): W exact steps, then windows of N, offset j on rank j."""
    windows: list = [ExactWindow(start=i) for i in range(min(warmup, num_steps))]
    s = len(windows)
    while s < num_steps:
        n = min(gpus, num_steps - s)
        # a 1-step remainder is an exact window (a parallel window has w >= 2), as planner/fixed.py does
        windows.append(ParallelWindow(start=s, placement=list(range(n)), predictor="last") if n >= 2 else ExactWindow(start=s))
        s += n
    return make_schedule(windows, num_steps=num_steps, world_size=gpus, max_window=gpus, **kw)


# ---- the paper's arithmetic -------------------------------------------------------------------

@pytest.mark.parametrize("T,W,N,speedup", [(200, 5, 8, 200 / 30), (50, 5, 8, 50 / 11), (50, 1, 2, 50 / 26), (10, 10, 4, 1.0)])
def test_paper_arithmetic_examples(T, W, N, speedup):
    profile = make_profile(num_steps=T, forward_s=[1.0], step_s=0.0, comm=ZERO_COMM)
    result = simulate(fixed_plan(num_steps=T, warmup=W, gpus=N), profile)
    assert result.speedup == pytest.approx(speedup, rel=1e-12)
    assert result.latency_s == pytest.approx(W + math.ceil((T - W) / N), rel=1e-12)


def test_paper_headline_200_steps_5_warmup_8_gpus():
    profile = make_profile(num_steps=200, forward_s=[0.5], step_s=0.0, comm=ZERO_COMM)
    result = simulate(fixed_plan(num_steps=200, warmup=5, gpus=8), profile)
    assert round(result.speedup, 2) == 6.67


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(1, 300), st.data())
def test_paper_arithmetic_property(T, data):
    W = data.draw(st.integers(1, T))
    N = data.draw(st.integers(1, 16))
    f = data.draw(st.floats(0.01, 10.0))
    profile = make_profile(num_steps=T, forward_s=[f], step_s=0.0, comm=ZERO_COMM)
    result = simulate(fixed_plan(num_steps=T, warmup=W, gpus=N), profile)
    assert result.speedup == pytest.approx(T / (W + math.ceil((T - W) / N)), rel=1e-9)


# ---- hand-computed cases ------------------------------------------------------------------

def hand_profile(num_steps: int) -> Profile:
    # fwd(1)=1.0, fwd(2)=1.5, fwd(3)=1.8; step 0.1; exchange among 2 ranks: 0.05 + n * 1000 B / 1e5 B/s = 0.05 + 0.01 n
    comm = Comm(entries=[CommEntry(ranks=2, latency_s=0.05, bandwidth_bytes_per_s=1e5)])
    return make_profile(num_steps=num_steps, forward_s=[1.0, 1.5, 1.8], step_s=0.1, comm=comm)


def test_hand_computed_mixed_schedule():
    windows = [ExactWindow(start=0), ParallelWindow(start=1, placement=[0, 0, 1]), ReuseWindow(start=4, size=2), ExactWindow(start=6)]
    schedule = make_schedule(windows, num_steps=7, world_size=2)
    result = simulate(schedule, hand_profile(7))
    exact = 1.0 + 0.1
    parallel = 2 * 0.1 + 1.5 + (0.05 + 3 * 0.01) + 3 * 0.1     # scratch, max fwd (rank 0 has 2), exchange, replay
    reuse = 2 * 0.1
    assert result.latency_s == pytest.approx(exact + parallel + reuse + exact, abs=1e-12)
    assert result.sequential_s == pytest.approx(7 * 1.1)
    # rank 1 computes one offset (1.0 s) and waits 0.5 s at the exchange
    assert result.idle_s[0] == pytest.approx(0.0, abs=1e-12)
    assert result.idle_s[1] == pytest.approx(0.5, abs=1e-12)
    assert result.comm_s == pytest.approx((0.08, 0.08))
    assert result.forwards == (4, 3)
    assert result.window_start_s == pytest.approx((0.0, 1.1, 1.1 + parallel, 1.1 + parallel + reuse))
    # the critical path runs through rank 0's forwards and the shared exchange
    kinds = [(op.rank, op.kind) for op in result.critical_path]
    assert (0, "forward") in kinds and (-1, "exchange") in kinds and (1, "forward") not in [(o.rank, o.kind) for o in result.critical_path if o.window == 1]


def test_single_rank_parallel_window_computes_all_offsets():
    windows = [ExactWindow(start=0), ParallelWindow(start=1, placement=[0, 0, 0])]
    result = simulate(make_schedule(windows, num_steps=4, world_size=1), hand_profile(4))
    # one rank: no exchange cost, fwd(3) = 1.8
    assert result.latency_s == pytest.approx(1.1 + 2 * 0.1 + 1.8 + 0.0 + 3 * 0.1)
    assert result.comm_s == (0.0,)


def test_rank_without_offsets_still_walks_the_window():
    comm = Comm(entries=[CommEntry(ranks=3, latency_s=0.2, bandwidth_bytes_per_s=1e6)])
    profile = make_profile(num_steps=3, forward_s=[1.0], step_s=0.1, comm=comm)
    windows = [ExactWindow(start=0), ParallelWindow(start=1, placement=[2, 0])]
    result = simulate(make_schedule(windows, num_steps=3, world_size=3), profile)
    assert result.latency_s == pytest.approx(1.1 + 0.1 + 1.0 + (0.2 + 2 * 1000 / 1e6) + 2 * 0.1)
    assert result.forwards == (2, 1, 2)
    assert not any(op.kind == "forward" and op.rank == 1 and op.window == 1 for op in result.ops)


# ---- differential: op graph vs the closed form of docs/cost-model.md ----------------------

def cost_model_latency(schedule: Schedule, profile: Profile) -> float:
    """docs/cost-model.md, window by window (independent of simulate's graph)."""
    G, step = schedule.world_size, profile.step_time_s()
    total = 0.0
    for w, (a, b) in zip(schedule.windows, schedule.window_bounds()):
        size = b - a
        if w.kind == "exact":
            total += profile.forward_time_s(1) + step
        elif w.kind == "reuse":
            total += size * step
        else:
            n = [w.placement.count(r) for r in range(G)]
            if w.batch:   # one call per rank at the batch curve, after the chain first..last offset run ahead
                spans = [(size - 1 - w.placement[::-1].index(r)) - w.placement.index(r) if k else 0 for r, k in enumerate(n)]
                compute = max((profile.batched_forward_time_s(k) if k > 1 else profile.forward_time_s(k)) + span * step
                              for k, span in zip(n, spans))
            else:
                compute = max(profile.forward_time_s(k) for k in n)
            total += (size - 1) * step + compute + profile.exchange_time_s(G, size) + size * step
    return total


@st.composite
def schedules_and_profiles(draw):
    schedule = draw(valid_schedules(max_steps=30, max_world=6, max_window=8))
    T, G = schedule.num_steps, schedule.world_size
    fwd = sorted(draw(st.lists(st.floats(1e-3, 2.0), min_size=1, max_size=4)))
    comm = comm_for(draw(st.sampled_from(["nvlink", "pcie4", "pcie3", "ethernet-10g", "ethernet-1g"])), world_size=max(G, 2))
    curve = draw(st.one_of(st.none(), st.lists(st.floats(1e-3, 2.0), min_size=1, max_size=4).map(sorted)))
    profile = make_profile(num_steps=T, forward_s=fwd, step_s=draw(st.floats(0.0, 0.5)), comm=comm,
                           step_overhead_s=draw(st.floats(0.0, 0.1)), batched_forward_s=curve)
    return schedule, profile


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(schedules_and_profiles())
def test_graph_latency_equals_cost_model(pair):
    schedule, profile = pair
    result = simulate(schedule, profile)
    assert result.latency_s == pytest.approx(cost_model_latency(schedule, profile), rel=1e-9, abs=1e-12)
    assert math.fsum(op.duration_s for op in result.critical_path) == pytest.approx(result.latency_s, rel=1e-9, abs=1e-12)
    G = schedule.world_size
    for r in range(G):
        mine = sorted((op for op in result.ops if op.rank == r), key=lambda o: (o.start_s, o.end_s))
        for a, b in zip(mine, mine[1:]):        # a rank does one thing at a time
            assert b.start_s >= a.end_s - 1e-12
        assert result.busy_s[r] + result.comm_s[r] + result.idle_s[r] == pytest.approx(result.latency_s, rel=1e-9, abs=1e-12)
        # every rank applies every real step exactly once
        assert sorted(op.step for op in mine if op.kind == "step") == list(range(schedule.num_steps))
    assert list(result.forwards) == list(schedule.totals.forwards_per_rank)


# ---- examples, plot, command line -----------------------------------------------------------

def test_examples_simulate_with_shipped_profile():
    for path in EXAMPLES:
        code, out, err = run_cli(["simulate", str(path)])
        assert code == 0, err
        fields = dict(line.split(None, 1) for line in out.splitlines() if line[:1].isalpha() and " " in line)
        assert float(fields["latency_s"]) > 0
        assert float(fields["speedup"].rstrip("x")) >= 0.99
        assert "prior parts" in out


def test_exact_only_example_speedup_is_one():
    code, out, _ = run_cli(["simulate", str(next(p for p in EXAMPLES if p.name == "exact-only.yaml"))])
    assert code == 0 and "speedup       1x" in out


def test_plot_is_a_png(tmp_path):
    windows = [ExactWindow(start=0), ParallelWindow(start=1, placement=[0, 1, 1]), ReuseWindow(start=4, size=1, predictor="linear")]
    schedule = make_schedule(windows, num_steps=5, world_size=2)
    result = simulate(schedule, hand_profile(5))
    out = tmp_path / "timeline.png"
    plot_timeline(result, schedule, out)
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    assert [p.name for p in tmp_path.iterdir()] == ["timeline.png"]   # no temp file left behind


def test_cli_plot(tmp_path):
    out = tmp_path / "t.png"
    code, stdout, err = run_cli(["simulate", str(EXAMPLES[-1]), "--plot", str(out), "--interconnect", "ethernet-1g"])
    assert code == 0, err
    assert out.read_bytes()[:4] == b"\x89PNG"


def _write(tmp_path, schedule: Schedule, name="s.yaml") -> Path:
    p = tmp_path / name
    p.write_text(dump_schedule(schedule))
    return p


def test_refuses_profile_for_another_model(tmp_path):
    sched = _write(tmp_path, fixed_plan(num_steps=10, warmup=2, gpus=2, model="toy"))
    prof = tmp_path / "p.yaml"
    write_profile(make_profile(num_steps=10, forward_s=[1.0], step_s=0.0, comm=ZERO_COMM, model="other"), prof)
    code, out, err = run_cli(["simulate", str(sched), "--profile", str(prof)])
    assert code == 2 and out == "" and err.count("\n") == 1 and "'other'" in err and "'toy'" in err


def test_refuses_profile_with_other_output_bytes(tmp_path):
    sched = _write(tmp_path, fixed_plan(num_steps=10, warmup=2, gpus=2, output_bytes=999))
    prof = tmp_path / "p.yaml"
    write_profile(make_profile(num_steps=10, forward_s=[1.0], step_s=0.0, comm=ZERO_COMM), prof)
    code, _, err = run_cli(["simulate", str(sched), "--profile", str(prof)])
    assert code == 2 and "output_bytes" in err and err.count("\n") == 1


def test_refuses_measured_profile_with_other_step_count(tmp_path):
    from parastep.profiles.model import Measured

    sched = _write(tmp_path, fixed_plan(num_steps=12, warmup=2, gpus=2))
    measured = Measured(device="cpu", date="2026-01-01")
    base = make_profile(num_steps=10, forward_s=[1.0], step_s=0.0, comm=ZERO_COMM)
    prof = tmp_path / "p.yaml"
    write_profile(base.model_copy(update={"provenance": base.provenance.model_copy(update={"deviation": measured})}), prof)
    code, _, err = run_cli(["simulate", str(sched), "--profile", str(prof)])
    assert code == 2 and "12" in err and "parastep profile" in err


def test_prior_profile_with_other_step_count_is_used_with_a_note(tmp_path):
    sched = _write(tmp_path, fixed_plan(num_steps=12, warmup=2, gpus=2))
    prof = tmp_path / "p.yaml"
    write_profile(make_profile(num_steps=10, forward_s=[1.0], step_s=0.0, comm=ZERO_COMM), prof)
    code, out, err = run_cli(["simulate", str(sched), "--profile", str(prof)])
    assert code == 0 and "note" in err and "latency_s     7" in out   # 2 exact + 5 windows of 2


def test_warns_when_profile_hash_differs(tmp_path):
    base = fixed_plan(num_steps=10, warmup=2, gpus=2)
    sched = _write(tmp_path, base.model_copy(update={"profile": ProfileRef(name="x", sha256="0" * 64)}))
    prof = tmp_path / "p.yaml"
    write_profile(make_profile(num_steps=10, forward_s=[1.0], step_s=0.0, comm=ZERO_COMM), prof)
    code, _, err = run_cli(["simulate", str(sched), "--profile", str(prof)])
    assert code == 0 and "warning" in err and "sha256" in err


def test_refuses_invalid_schedule_and_unknown_interconnect(tmp_path):
    good = fixed_plan(num_steps=10, warmup=2, gpus=2)
    bad = schedule_from_dict({**good.model_dump(mode="json"), "max_window": 1})
    sched = _write(tmp_path, bad)
    prof = tmp_path / "p.yaml"
    write_profile(make_profile(num_steps=10, forward_s=[1.0], step_s=0.0, comm=ZERO_COMM), prof)
    code, _, err = run_cli(["simulate", str(sched), "--profile", str(prof)])
    assert code == 2 and "window-too-large" in err and err.count("\n") == 1
    code, _, err = run_cli(["simulate", str(_write(tmp_path, good, "g.yaml")), "--profile", str(prof), "--interconnect", "carrier-pigeon"])
    assert code == 2 and "nvlink" in err and err.count("\n") == 1


def test_profile_without_entry_for_world_size_is_a_user_error():
    comm = Comm(entries=[CommEntry(ranks=2, latency_s=0.0, bandwidth_bytes_per_s=1e9)])   # measured for 2 ranks only
    profile = make_profile(num_steps=10, forward_s=[1.0], step_s=0.0, comm=comm)
    with pytest.raises(UserError, match="--interconnect"):
        simulate(fixed_plan(num_steps=10, warmup=2, gpus=4), profile)


def test_missing_schedule_and_unknown_model(tmp_path):
    code, _, err = run_cli(["simulate", str(tmp_path / "none.yaml")])
    assert code == 2 and "does not exist" in err
    sched = _write(tmp_path, fixed_plan(num_steps=10, warmup=2, gpus=2, model="no-such-model"))
    code, _, err = run_cli(["simulate", str(sched)])
    assert code == 2 and "no shipped profile" in err and err.count("\n") == 1


# ---- differential: the planner's predicted latency vs the op graph --------------------------

@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(1, 64), st.integers(1, 60), st.sampled_from(["optimal", "fixed"]), st.integers(0, 2**31 - 1))
def test_simulate_equals_planner_prediction(world_size, num_steps, policy, seed):
    """Every schedule the planner emits (DP oracle, to stay fast) simulates to its own predicted latency."""
    from strategies import make_profile as random_profile

    from parastep.planner.plan import plan_schedule

    profile = random_profile(num_steps=num_steps, max_window=min(16, max(1, world_size)), seed=seed)
    schedule = plan_schedule(profile, profile_sha256="0" * 64, world_size=world_size, policy=policy, solver="dp").schedule
    result = simulate(schedule, profile)
    assert result.latency_s == pytest.approx(schedule.latency.predicted_s, rel=1e-9, abs=1e-12)
    assert result.speedup == pytest.approx(schedule.latency.speedup, rel=1e-9)


@pytest.mark.parametrize("gpus,steps", [(2, 50), (8, 50), (8, 20), (64, 200)])
def test_simulate_equals_planner_on_shipped_sdxl(gpus, steps):
    from parastep.planner.plan import plan_schedule
    from parastep.profiles.io import resolve_profile
    from parastep.profiles.priors import derive_for_steps

    profile, sha = resolve_profile("sdxl")
    profile = derive_for_steps(profile, num_steps=steps, max_window=max(profile.max_window, gpus))
    for policy in ("fixed", "optimal"):
        schedule = plan_schedule(profile, profile_sha256=sha, world_size=gpus, policy=policy, solver="dp").schedule
        assert simulate(schedule, profile).latency_s == pytest.approx(schedule.latency.predicted_s, rel=1e-9)

"""Measured quality of the plans the optimizer picks, on the bundled digits model and its shipped
profile, scored per image against the sequential output of the same seed on held-out seeds.

Every schedule runs in ONE process (the executor's hooks with LocalExchange): which rank computes
an offset does not change its value, so quality does not depend on hardware. Neither the profile
nor its calibration saw these seeds. The checks are two-sided: a target must hold for most images
(coverage) *and* not be beaten by so much that the speed it could buy is wasted (overshoot).
"""

from __future__ import annotations

import statistics

import pytest
import torch

from parastep.executor.evaluate import psnr_db_per_sample, quantile, run_schedule_local, samples_of
from parastep.profiles.io import resolve_profile

# 100 images: the 10th percentile of 20 images (the second worst) moves by 10-15 dB between
# disjoint blocks of 20 images for one plan (benchmarks/results/heldout.md), more than the 3 dB window
# the tightness check allows; of 100 images it is the tenth worst
HELD_OUT_SEEDS = tuple(range(6000, 6010))
PROMPTS = tuple(str(d) for d in range(10))
COVERAGE_FLOOR = 0.85          # --coverage 0.9 planned; at least 85 % of held-out images must reach the target
OVERSHOOT_DB = 3.0             # the 10th-percentile image at most 3 dB above the target (where a faster plan exists)
TIE_DB = 0.25                  # default vs fixed plan: "at least" up to this measurement noise


@pytest.fixture(scope="module")
def setup():
    from parastep.executor.registry import load_pipeline

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    profile, sha = resolve_profile("digits")
    pipe = load_pipeline("digits")
    pipe.set_progress_bar_config(disable=True)
    prompts, seeds = samples_of(PROMPTS, HELD_OUT_SEEDS)
    kw = {"guidance_scale": profile.guidance_scale}
    ref = run_schedule_local(pipe, None, num_steps=profile.num_steps, prompts=prompts, seeds=seeds, call_kwargs=kw)
    yield profile, sha, pipe, prompts, seeds, kw, ref
    torch.set_num_threads(old)


def _plan(profile, sha, **kw):
    from parastep.planner.options import SolverOptions
    from parastep.planner.plan import plan_schedule

    # deterministic: the plan must not depend on how loaded the machine is when CP-SAT's limit hits
    options = SolverOptions(workers=1, seed=0, deterministic=True, time_limit_s=10.0)
    return plan_schedule(profile, profile_sha256=sha, options=options, **kw).schedule


def _measure(setup, schedule) -> list[float]:
    profile, _, pipe, prompts, seeds, kw, ref = setup
    out = run_schedule_local(pipe, schedule, num_steps=profile.num_steps, prompts=prompts, seeds=seeds, call_kwargs=kw)
    return psnr_db_per_sample(out, ref)


def test_the_held_out_seeds_are_held_out(setup):
    profile = setup[0]
    assert not set(HELD_OUT_SEEDS) & {s.seed for s in profile.output_errors.samples}


@pytest.mark.parametrize("G", [2, 4, 8])
def test_default_plan_measures_at_least_the_fixed_plan_and_is_faster(setup, G):
    """No budget -> every calibration image no worse than under the fixed plan;
    on held-out images the mean and the 10th percentile are at least the fixed plan's. (At G = 8 this
    holds with CFG split, the default since the digits profile prices it; without it the default plan
    measured 36.82 vs the fixed plan's 37.19 dB mean on seeds 7001-7002.) Measured on these 100 images
    (benchmarks/results/heldout.md), default vs fixed mean / p10: G = 2 49.0 / 34.9 vs 44.0 / 27.1 dB,
    G = 4 41.5 / 25.1 vs 40.2 / 23.6, G = 8 38.5 / 25.2 vs 37.6 / 22.7."""
    profile, sha = setup[0], setup[1]
    fixed = _plan(profile, sha, world_size=G, policy="fixed")
    default = _plan(profile, sha, world_size=G)
    assert default.solver.name == "branch-and-bound" and default.solver.status == "OPTIMAL"
    assert default.quality.per_sample.within == default.quality.per_sample.samples
    f, d = _measure(setup, fixed), _measure(setup, default)
    assert default.latency.speedup > fixed.latency.speedup, (default.latency.speedup, fixed.latency.speedup)
    # a mean or 10th percentile moves with the images drawn: on the 20 images of seeds 7001-7002, G = 4
    # came out 0.02 dB below the fixed plan's mean (above on 5000-5001 and on these), so the test
    # allows TIE_DB
    assert statistics.fmean(d) >= statistics.fmean(f) - TIE_DB, (statistics.fmean(d), statistics.fmean(f))
    assert quantile(d, 0.1) >= quantile(f, 0.1) - TIE_DB, (quantile(d, 0.1), quantile(f, 0.1))


# measured on the shipped profile (benchmarks/results/heldout.md, these 100 images): covered, but the
# p10 image more than 3 dB above the target. The fresh-image threshold (of the plan's own-residual
# mixture at G = 2) asks for more than the held-out images needed here: the next faster plan covered 93 %
_NOT_TIGHT = {(2, 35.0): "+3.1 dB"}


def _point(G: int, x: float):
    if (G, x) not in _NOT_TIGHT:
        return (G, x)
    return pytest.param(G, x, marks=pytest.mark.xfail(strict=True, reason=(
        f"measured (benchmarks/results/heldout.md): covered, p10 {_NOT_TIGHT[G, x]} above {x:g} dB at G = {G}: not tight; "
        "the fresh-image share threshold is conservative at 20 calibration images")))


@pytest.mark.parametrize("G,target_db", [_point(G, x) for G in (2, 4, 8) for x in (30.0, 35.0, 40.0)])
def test_min_psnr_holds_and_is_tight_on_held_out_images(setup, G, target_db):
    """``--min-psnr DB --coverage 0.9`` on the shipped profile (one plain ``parastep profile``):
    at least 85 % of held-out images at or above DB (coverage), and the 10th-percentile image at
    most 3 dB above DB (tight) wherever a faster plan exists, i.e. unless the plan is already as
    fast as the plan with no quality bound at all."""
    profile, sha = setup[0], setup[1]
    s = _plan(profile, sha, world_size=G, budget=profile.calibration.at(G).deviation_for_psnr(target_db), coverage=0.9,
              min_psnr_db=target_db)
    fastest = _plan(profile, sha, world_size=G, budget=1e30, coverage=0.9)
    got = _measure(setup, s)
    share = sum(p >= target_db for p in got) / len(got)
    p10 = quantile(got, 0.1)
    assert share >= COVERAGE_FLOOR, f"{share:.0%} of held-out images reached {target_db} dB (p10 {p10:.2f} dB)"
    if s.latency.speedup < fastest.latency.speedup * (1 - 1e-9):
        assert p10 <= target_db + OVERSHOOT_DB, f"p10 {p10:.2f} dB is more than {OVERSHOOT_DB} dB above the {target_db} dB target"


def test_cli_min_psnr_plan_records_the_statement(capsys):
    import yaml

    from parastep.cli import main
    from parastep.schedules.io import schedule_from_dict

    assert main(["plan", "--model", "digits", "--gpus", "4", "--min-psnr", "30"]) == 0
    s = schedule_from_dict(yaml.safe_load(capsys.readouterr().out))
    ps = s.quality.per_sample
    assert s.quality.min_psnr_db == 30.0 and s.quality.coverage == 0.9
    assert ps.samples == 20 and ps.required == 19 and ps.within >= 19       # 0.9 of 20 + the margin for unseen images

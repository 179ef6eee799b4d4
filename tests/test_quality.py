"""Quality of planned schedules on the bundled digits model with its shipped profile.

Every schedule runs in ONE process (the executor's hooks with LocalExchange): which rank computes
an offset does not change its value, so quality does not depend on hardware. Seeds here are
held out: neither the profile nor its calibration saw them.
"""

from __future__ import annotations

import statistics

import pytest
import torch

from parastep.profiler.calibrate import psnr_db_per_sample, run_schedule
from parastep.profiles.io import resolve_profile
from parastep.profiler.measure import samples_of

HELD_OUT_SEEDS = (7001, 7002)
PROMPTS = tuple(str(d) for d in range(10))
BUDGET_FACTORS = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)      # x the fixed plan's own predicted error
MONOTONE_TOLERANCE_DB = 1.0


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
    ref = run_schedule(pipe, None, num_steps=profile.num_steps, prompts=prompts, seeds=seeds, call_kwargs=kw)
    yield profile, sha, pipe, prompts, seeds, kw, ref
    torch.set_num_threads(old)


def _plan(profile, sha, *, G: int, budget: float):
    from parastep.planner.cpsat import SolverOptions
    from parastep.planner.plan import plan_schedule

    return plan_schedule(profile, profile_sha256=sha, world_size=G, budget=budget, solver="dp",
                         options=SolverOptions(workers=1)).schedule


def _measure(setup, schedule) -> list[float]:
    profile, _, pipe, prompts, seeds, kw, ref = setup
    out = run_schedule(pipe, schedule, num_steps=profile.num_steps, prompts=prompts, seeds=seeds, call_kwargs=kw)
    return psnr_db_per_sample(out, ref)


def test_psnr_is_monotone_in_the_budget(setup):
    """21 planned schedules (7 budgets x G in {2, 4, 8}): more budget never buys measurably more PSNR."""
    profile, sha = setup[0], setup[1]
    from parastep.planner.plan import plan_schedule

    for G in (2, 4, 8):
        base = plan_schedule(profile, profile_sha256=sha, world_size=G, policy="fixed").schedule.quality.predicted
        psnrs, speedups = [], []
        for f in BUDGET_FACTORS:
            s = _plan(profile, sha, G=G, budget=base * f)
            psnrs.append(statistics.fmean(_measure(setup, s)))
            speedups.append(s.latency.speedup)
        for k in range(len(psnrs) - 1):
            assert psnrs[k + 1] <= psnrs[k] + MONOTONE_TOLERANCE_DB, (G, psnrs)
            assert speedups[k + 1] >= speedups[k] - 1e-9, (G, speedups)
        assert psnrs[0] > psnrs[-1] + 3.0, (G, psnrs)


def test_min_psnr_plans_meet_their_target_on_held_out_seeds(setup):
    """``--min-psnr`` (calibration -> budget): >= 90% of held-out images reach the target."""
    profile, sha = setup[0], setup[1]
    cal = profile.calibration
    assert cal is not None and abs(cal.spearman) >= 0.9
    met, total = 0, 0
    for G in (2, 4, 8):
        for target in (25.0, 30.0, 35.0, 40.0):
            s = _plan(profile, sha, G=G, budget=cal.deviation_for_psnr(target))
            got = _measure(setup, s)
            met += sum(p >= target for p in got)
            total += len(got)
    assert met / total >= 0.9, f"{met}/{total} images met their --min-psnr target"


def test_cli_min_psnr_plan(capsys):
    import yaml

    from parastep.cli import main
    from parastep.schedules.io import schedule_from_dict

    assert main(["plan", "--model", "digits", "--gpus", "4", "--min-psnr", "30"]) == 0
    s = schedule_from_dict(yaml.safe_load(capsys.readouterr().out))
    assert s.quality.min_psnr_db == 30.0 and s.quality.predicted_psnr_db >= 30.0 - 1e-6

"""Plan-level corrections of the per-image quality model (``profiler/correct.py``).

Two kinds of check:
- against a hidden truth: the "measurement" is a second, secret set of per-window errors (the
  model's entries times hidden factors, some above 1), added up per image; the loop must end with
  every plan it picks meeting its prediction on every image, never lower an entry, and leave a
  model that agrees with the truth untouched;
- against the real executor: on a tiny digits pipeline, the plans made from the corrected tables
  are run end to end, and no image measures below its prediction.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from parastep.profiler.audit import window_keys
from parastep.profiler.correct import correct_on_plans, scaled, statements_for

from strategies import every_window, make_profile, with_calibration


def _entries(profile):
    oe = profile.output_errors
    return np.array([v for kind in ("parallel", "reuse") for rows in getattr(oe, kind).values()
                     for row in rows for entry in row for v in entry])


def _hidden_truth(profile, seed: int):
    """measure(schedule): per-image PSNR (calibration line) of the sum of secret per-window errors."""
    rng = np.random.default_rng(seed)
    cal, N = profile.calibration, profile.quality_samples
    secret: dict = {}

    def truth(key):
        if key not in secret:
            kind, pred, s, w = key
            model = profile.window_errors(kind, start=s, size=w, predictor=pred)
            secret[key] = [m * f for m, f in zip(model, rng.lognormal(0.0, 0.7, size=N))]
        return secret[key]

    def measure(schedule):
        sums = [0.0] * N
        for key in window_keys(schedule):
            sums = [a + b for a, b in zip(sums, truth(key))]
        return [100.0 if e <= 0 else min(100.0, cal.psnr_db(e)) for e in sums]

    measure.truth = truth
    return measure


def _predicted_db(schedule, profile):
    from parastep.profiler.calibrate import predicted_per_sample

    return [profile.calibration.psnr_db(e) if e > 0 else math.inf for e in predicted_per_sample(schedule, profile)]


@pytest.mark.parametrize("seed", [3, 17, 29])
def test_corrections_end_with_every_plan_meeting_its_prediction_against_a_hidden_truth(seed):
    from parastep.planner.options import SolverOptions
    from parastep.planner.plan import plan_schedule

    base = with_calibration(make_profile(num_steps=12, max_window=4, seed=seed, samples=6))
    measure = _hidden_truth(base, seed)
    dbs = (25.0, 30.0, 35.0)
    fixed, rep = correct_on_plans(base, "0" * 64, measure=measure, world_sizes=(2, 4), min_psnr_dbs=dbs, rounds=40,
                                  time_limit_s=10.0)
    assert rep.converged, rep
    assert rep.violations_per_round[-1] == 0 and rep.rounds == len(rep.violations_per_round)
    # some image was below its prediction at first (the truth has factors above 1) and got corrected
    assert rep.violations_per_round[0] > 0 and rep.corrected_entries > 0
    before, after = _entries(base), _entries(fixed)
    assert np.all(after >= before) and np.any(after > before)          # entries are only ever raised
    # independently of the loop's own bookkeeping: re-plan every statement and compare
    options = SolverOptions(workers=1, seed=0, deterministic=True, time_limit_s=10.0)
    for st in statements_for(fixed, world_sizes=(2, 4), min_psnr_dbs=dbs):
        s = plan_schedule(fixed, profile_sha256="0" * 64, options=options, **st).schedule
        pred, got = _predicted_db(s, fixed), measure(s)
        assert all(p <= g + 1e-9 for p, g in zip(pred, got)), (st, pred, got)


def test_plans_without_cfg_split_are_corrected_too_where_the_profile_prices_splits():
    """A profile that prices CFG splits is planned both ways each round (``plan --cfg-split off``
    picks other windows); after the loop, the plans without splits meet their predictions as well."""
    from parastep.planner.options import SolverOptions
    from parastep.planner.plan import plan_schedule

    base = with_calibration(make_profile(num_steps=12, max_window=4, seed=11, samples=6, half_forward_ratio=0.52))
    assert base.can_split
    dbs = (25.0, 30.0)
    statements = statements_for(base, world_sizes=(2, 4), min_psnr_dbs=dbs)
    off = [st for st in statements if st.get("allow_split") is False]
    assert len(off) == len(statements) // 2 == 2 * (2 + len(dbs))
    measure = _hidden_truth(base, 11)
    fixed, rep = correct_on_plans(base, "0" * 64, measure=measure, world_sizes=(2, 4), min_psnr_dbs=dbs, rounds=40)
    assert rep.converged and rep.violations_per_round[0] > 0, rep
    options = SolverOptions(workers=1, seed=0, deterministic=True, time_limit_s=10.0)
    for st in off:
        s = plan_schedule(fixed, profile_sha256="0" * 64, options=options, **st).schedule
        assert all(p <= g + 1e-9 for p, g in zip(_predicted_db(s, fixed), measure(s))), st
    no_split = with_calibration(make_profile(num_steps=12, max_window=4, seed=11, samples=6))
    assert not no_split.can_split
    assert all("allow_split" not in st for st in statements_for(no_split, world_sizes=(2, 4), min_psnr_dbs=dbs))


def test_a_model_that_agrees_with_the_measurements_is_left_alone():
    base = with_calibration(make_profile(num_steps=10, max_window=4, seed=5, samples=4))

    def exact(schedule):          # the model's own prediction, a hair kinder: nothing to correct
        return [p + 1e-6 for p in _predicted_db(schedule, base)]

    out, rep = correct_on_plans(base, "0" * 64, measure=exact, world_sizes=(2,), min_psnr_dbs=(30.0,), rounds=3)
    assert rep.converged and rep.rounds == 1 and rep.violations_per_round == [0] and rep.corrected_entries == 0
    assert out.output_errors == base.output_errors


def test_scaled_multiplies_only_the_listed_entries():
    base = make_profile(num_steps=8, max_window=3, seed=2, samples=3)
    key = ("reuse", "last", 4, 2)
    out = scaled(base, {key: [1.0, 2.0, 3.5]})
    a = base.window_errors("reuse", start=4, size=2, predictor="last")
    assert out.window_errors("reuse", start=4, size=2, predictor="last") == pytest.approx([a[0], 2 * a[1], 3.5 * a[2]])
    diff = _entries(out) != _entries(base)
    assert diff.sum() == sum(1 for v in a[1:] if v > 0)


@pytest.mark.parametrize("seed", [3, 23])
def test_windows_run_alone_explain_an_additive_truth_exactly(seed):
    """With ``measure_alone`` (each window of a plan that missed, run alone) and a truth that adds up
    over windows, every raised entry is raised to exactly its hidden value: the plan-level spread
    (for compounding) is never needed, and no entry is raised past the truth."""
    base = with_calibration(make_profile(num_steps=12, max_window=4, seed=seed, samples=6))
    measure = _hidden_truth(base, seed)
    out, rep = correct_on_plans(base, "0" * 64, measure=measure, measure_alone=measure.truth, world_sizes=(2, 4),
                                min_psnr_dbs=(25.0, 30.0, 35.0), rounds=40)
    assert rep.converged and rep.windows_run_alone > 0 and rep.corrected_entries > 0, rep
    raised = 0
    for kind, pred, s, w in every_window(base):
        a = base.window_errors(kind, start=s, size=w, predictor=pred)
        b = out.window_errors(kind, start=s, size=w, predictor=pred)
        if a == b:
            continue
        t = measure.truth((kind, pred, s, w))
        for x, y, z in zip(a, b, t):
            assert y == pytest.approx(max(x, z), rel=1e-12), (kind, pred, s, w)
            raised += y > x
    assert raised == rep.corrected_entries


def test_a_second_correction_run_adds_to_the_record_of_the_first():
    from parastep.profiles.model import Corrections

    first = Corrections(rounds=8, plans_measured=168, windows_run_alone=362, entries_raised=3618,
                        below_prediction_per_round=[44, 13], converged=False, world_sizes=[2, 4, 8], min_psnr_dbs=[30.0])
    assert first.cfg_split == ["auto"]          # records from before the field: split plans only
    later = Corrections(rounds=2, plans_measured=78, windows_run_alone=83, entries_raised=500,
                        below_prediction_per_round=[37, 0], converged=True, world_sizes=[2, 4], min_psnr_dbs=[30.0, 35.0],
                        cfg_split=["auto", "off"])
    both = first.followed_by(later)
    assert (both.rounds, both.plans_measured, both.windows_run_alone, both.entries_raised) == (10, 246, 445, 4118)
    assert both.below_prediction_per_round == [44, 13, 37, 0] and both.converged
    assert both.world_sizes == [2, 4, 8] and both.min_psnr_dbs == [30.0, 35.0] and both.cfg_split == ["auto", "off"]

"""The calibration's statistics (profiler/calibrate.py, profiles/model.py): the split-conformal
lower bound holds at its stated level on residuals of known distribution, is not much more
conservative than the finite-sample correction requires, and a plan's predicted per-image PSNR
distribution is the mixture it claims to be."""

from __future__ import annotations

import math
import random
import statistics
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from parastep.profiler.calibrate import CALIBRATION_LEVEL, TooFewPoints, VerificationRun, fit_calibration
from parastep.profiles.model import PSNR_CAP_DB, Calibration, conformal_lower_offset


@pytest.mark.parametrize("m,level", [(19, 0.9), (49, 0.9), (30, 0.8), (99, 0.95)])
@pytest.mark.parametrize("draw", ["normal", "laplace", "skewed"])
def test_conformal_offset_covers_at_its_level_on_known_distributions(m, level, draw):
    """Over 3000 repetitions, the share of new residuals at or above the offset computed from m
    calibration residuals averages at least ``level`` (minus Monte Carlo error) and at most
    ``1 - k / (m + 1)`` plus it, the exact expected coverage of the k-th order statistic."""
    rng = random.Random(7)

    def r() -> float:
        if draw == "normal":
            return rng.gauss(0.0, 3.0)
        if draw == "laplace":
            return rng.expovariate(1.0) * (1 if rng.random() < 0.5 else -1)
        return -rng.lognormvariate(0.0, 1.0)          # a long lower tail: the case that matters

    trials, fresh = 3000, 20
    covered = []
    for _ in range(trials):
        q = conformal_lower_offset([r() for _ in range(m)], level)
        covered.append(sum(r() >= q for _ in range(fresh)) / fresh)
    mean = statistics.fmean(covered)
    k = math.floor((m + 1) * (1 - level) + 1e-12)
    exact = 1 - k / (m + 1)
    se = statistics.pstdev(covered) / math.sqrt(trials)
    assert mean >= level - 4 * se
    assert abs(mean - exact) <= 4 * se


def test_too_few_residuals_for_a_level_state_no_bound():
    assert conformal_lower_offset([0.0] * 8, 0.9) is None            # (8 + 1) x 0.1 < 1
    assert conformal_lower_offset([3.0, 1.0, 2.0] + [5.0] * 6, 0.9) == 1.0   # m = 9: the smallest
    with pytest.raises(ValueError):
        conformal_lower_offset([0.0], 1.0)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(-50, 50), min_size=1, max_size=60), st.floats(0.5, 0.99))
def test_conformal_offset_is_the_largest_value_with_few_enough_below(values, level):
    """A second reading of the definition, with ties: the offset is the largest residual v with at
    most k - 1 residuals strictly below it, k = floor((m + 1)(1 - level)) (none when k < 1); a
    higher level never gives a higher offset."""
    q = conformal_lower_offset(values, level)
    k = math.floor((len(values) + 1) * (1 - level) + 1e-12)
    ok = [v for v in values if sum(1 for r in values if r < v) <= k - 1]
    assert q == (max(ok) if k >= 1 else None)
    higher = conformal_lower_offset(values, min(0.995, level + 0.01))
    assert higher is None or (q is not None and higher <= q)


def _runs(rng: random.Random, *, plans: int, images: int, a: float, slope: float, sd: float,
          world_size: int = 2) -> list[VerificationRun]:
    out = []
    for _ in range(plans):
        e = [10 ** rng.uniform(-3, -1) for _ in range(images)]
        out.append(VerificationRun(world_size=world_size, policy="optimal", budget=0.1, predicted=e, speedup=2.0, windows=10,
                                   psnr_db=[a - slope * math.log10(x) + rng.gauss(0.0, sd) for x in e]))
    return out


def test_fit_calibration_recovers_the_line_and_its_bound_covers_new_pairs():
    """Synthetic runs on a known line with Gaussian noise: the central line is close to the true one,
    the offset is near the noise's 10th-percentile, and on fresh (plan, image) pairs the bound holds
    for at least 90 % of them (2000 pairs, minus 3 standard errors)."""
    rng = random.Random(3)
    cal, info = fit_calibration(_runs(rng, plans=40, images=20, a=10.0, slope=20.0, sd=2.0))
    assert cal.slope_db_per_decade == pytest.approx(20.0, rel=0.05)
    assert cal.central_intercept_db == pytest.approx(10.0, abs=0.6)
    assert cal.level == CALIBRATION_LEVEL and len(cal.residuals_db) == 400 and cal.residuals_db == sorted(cal.residuals_db)
    assert cal.intercept_db - cal.central_intercept_db == pytest.approx(-1.2816 * 2.0, abs=0.5)
    fresh = _runs(rng, plans=100, images=20, a=10.0, slope=20.0, sd=2.0)
    pairs = [(e, p) for r in fresh for e, p in zip(r.predicted, r.psnr_db)]
    share = sum(p >= cal.psnr_db(e) for e, p in pairs) / len(pairs)
    assert share >= 0.9 - 3 * math.sqrt(0.09 / len(pairs))
    assert info["held_out_images"] == 400 and 0.88 <= info["held_out_images_at_or_above_bound"] <= 0.93


def test_fit_calibration_says_too_few_when_every_plan_is_lossless():
    rng = random.Random(0)
    runs = _runs(rng, plans=8, images=20, a=10.0, slope=20.0, sd=1.0)
    lossless = [VerificationRun(**{**r.__dict__, "predicted": [0.0] * 20, "psnr_db": [100.0] * 20}) for r in runs]
    with pytest.raises(TooFewPoints):
        fit_calibration(lossless)
    with pytest.raises(TooFewPoints):
        fit_calibration(runs[:5])


def test_predicted_distribution_is_the_mixture_of_centres_and_residuals():
    cal = Calibration(intercept_db=8.0, slope_db_per_decade=20.0, fitted_on=10, central_intercept_db=10.0, level=0.9,
                      residuals_db=sorted([-3.0, -1.0, 0.0, 1.0] * 5))
    dev = [1e-2, 1e-1, 0.0]                              # centres 50, 30 dB and a lossless image
    pred = cal.predicted_psnr(dev)
    mix = sorted([min(PSNR_CAP_DB, c + r) for c in (50.0, 30.0) for r in cal.residuals_db] + [PSNR_CAP_DB] * 20)
    assert pred["median_db"] == pytest.approx(statistics.median(mix))
    assert pred["p10_db"] == pytest.approx(statistics.quantiles(mix, n=10, method="inclusive")[0])
    assert pred["worst_lower_db"] == pytest.approx(30.0 + conformal_lower_offset(cal.residuals_db, 0.9)) == 27.0
    assert pred["residuals"] == 20 and pred["level"] == 0.9
    assert cal.predicted_psnr([0.0, 0.0]) is None                        # lossless: the sequential output
    old = Calibration(intercept_db=8.0, slope_db_per_decade=20.0, fitted_on=10)     # no residuals: no distribution
    assert old.predicted_psnr(dev) is None and old.central_psnr_db(1e-2) == old.psnr_db(1e-2)


def test_predicted_share_counts_the_mixture_at_or_above_the_target():
    """The share ``relaxed_plan`` plans to: the fraction of (image, residual) pairs of the mixture at
    or above the target, counted by hand here; a lossless image counts as at its cap, a lossless plan
    as all images within; a measured plan's own residuals replace the calibration's."""
    cal = Calibration(intercept_db=8.0, slope_db_per_decade=20.0, fitted_on=10, central_intercept_db=10.0, level=0.9,
                      residuals_db=sorted([-3.0, -1.0, 0.0, 1.0] * 5))
    dev = [1e-2, 1e-1, 0.0]                              # centres 50, 30 dB and a lossless image
    # 30 dB: every pair of the 50 dB image (20) and of the lossless one (20), and of the 30 dB one
    # those with a residual >= 0 (10): 50 of 60
    assert cal.predicted_share(dev, 30.0) == pytest.approx(50 / 60)
    assert cal.predicted_share(dev, 29.0) == pytest.approx(55 / 60)      # residual -1 counts now (>=)
    assert cal.predicted_share(dev, 47.5) == pytest.approx(35 / 60)
    assert cal.predicted_share([0.0, 0.0], 90.0) == 1.0
    measured = [52.0] * 10 + [22.0] * 10                  # own residuals +2 (10 of them) and -8 (10)
    own = cal.predicted_share([1e-2] * 10 + [1e-1] * 10, 30.0, measured=measured)
    assert own == pytest.approx((200 + 0 + 0) / 400 + 10 * 10 / 400)       # 50 dB images: all 200; 30 dB: +2 only
    old = Calibration(intercept_db=8.0, slope_db_per_decade=20.0, fitted_on=10)
    assert old.predicted_share(dev, 30.0) is None


def test_required_share_is_the_conformal_quantile_of_the_scores():
    """``Calibration.required_share``: the ceil((m + 1) Q)-th smallest of the m fresh-image scores;
    None where m scores cannot support Q, or without scores."""
    scores = [k / 20 for k in range(1, 20)]                  # m = 19
    cal = Calibration(intercept_db=8.0, slope_db_per_decade=20.0, fitted_on=10, share_scores=scores)
    assert cal.required_share(0.9) == scores[17]             # ceil(20 x 0.9) = 18
    assert cal.required_share(0.5) == scores[9]              # ceil(10) = 10
    assert cal.required_share(0.96) is None                  # ceil(19.2) = 20 > 19
    assert Calibration(intercept_db=8.0, slope_db_per_decade=20.0, fitted_on=10).required_share(0.9) is None


def test_a_plan_the_calibration_ran_is_held_to_the_own_residual_scores():
    """``Calibration.share_statement``: a measured plan's share comes from its own residuals and is
    held to the own-residual scores' threshold; any other plan's from the world size's residuals and
    scores; without scores there is no statement. The printed quantiles follow the same choice."""
    cal = Calibration(intercept_db=8.0, slope_db_per_decade=20.0, fitted_on=10, central_intercept_db=10.0, level=0.9,
                      residuals_db=sorted([-3.0, -1.0, 0.0, 1.0] * 5),
                      share_scores=[k / 100 for k in range(1, 100)], own_share_scores=[0.5] * 50 + [0.97] * 49)
    dev = [1e-1] * 10 + [1e-2] * 10                           # centres 30 and 50 dB
    measured = [22.0] * 10 + [52.0] * 10                      # own residuals -8 and +2
    share, need = cal.share_statement(dev, 30.0, 0.9)
    assert share == pytest.approx(cal.predicted_share(dev, 30.0)) and need == pytest.approx(0.90)
    own, own_need = cal.share_statement(dev, 30.0, 0.9, measured=measured)
    assert own == pytest.approx(cal.predicted_share(dev, 30.0, measured=measured)) == pytest.approx(0.75)
    assert own_need == 0.97
    bare = cal.model_copy(update={"share_scores": [], "own_share_scores": []})
    assert bare.share_statement(dev, 30.0, 0.9) == (None, None)
    p = cal.predicted_psnr(dev, measured=measured)
    assert p["calibrated_on"] == 99 and p["residuals_of"] == "this plan"
    assert cal.predicted_psnr(dev)["residuals_of"] == "picks"


def _fresh_picks(rng, *, cal, shift_db: float, plans: int = 60, fresh: int = 10) -> list[VerificationRun]:
    """Picks whose calibration images have errors 10^U(-3, -1), and fresh images drawn like them,
    measuring the central line + a residual drawn from ``cal``'s, ``shift_db`` lower."""
    out = []
    for i in range(plans):
        e = [10 ** rng.uniform(-3, -1) for _ in range(20)]
        y = [cal.central_psnr_db(10 ** rng.uniform(-3, -1)) + rng.choice(cal.residuals_db) - shift_db for _ in range(fresh)]
        out.append(VerificationRun(world_size=2, policy="optimal", budget=0.1, predicted=e, speedup=2.0, windows=10,
                                   psnr_db=[cal.central_psnr_db(x) for x in e], pick=True, key=f"f{i}", fresh_psnr_db=tuple(y)))
    return out


@pytest.mark.parametrize("shift_db", [0.0, 3.0])
def test_share_scores_state_the_coverage_of_new_images(shift_db):
    """``share_scores`` on synthetic picks whose fresh images measure as the model says (shift 0)
    or 3 dB worse: calibrated, the threshold for 0.9 is near 0.9 (uniform scores); overstated, it is
    higher. Either way, new plans whose predicted share at a target reaches the threshold put at
    least 0.9 of new images (drawn as the fresh ones) at the target, up to sampling noise."""
    from parastep.profiler.calibrate import share_scores

    rng = random.Random(7)
    cal = Calibration(intercept_db=8.0, slope_db_per_decade=20.0, fitted_on=10, central_intercept_db=10.0, level=0.9,
                      residuals_db=sorted(rng.gauss(0.0, 2.0) for _ in range(200)))
    scored = cal.model_copy(update={"share_scores": share_scores(cal, _fresh_picks(rng, cal=cal, shift_db=shift_db))})
    need = scored.required_share(0.9)
    assert len(scored.share_scores) == 600
    if shift_db == 0.0:
        assert 0.85 <= need <= 0.95, need
    else:
        assert need > 0.96, need

    def coverage(threshold: float) -> float:
        """Share of new images at the highest target each new plan's predicted share allows."""
        hits = 0
        for _ in range(1000):                                 # new plans, one new image each
            e = [10 ** rng.uniform(-3, -1) for _ in range(20)]
            mix = sorted(cal.mixture_db(e, None)[0])
            x = mix[len(mix) - math.ceil(threshold * len(mix))]
            assert cal.predicted_share(e, x) >= threshold
            hits += cal.central_psnr_db(10 ** rng.uniform(-3, -1)) + rng.choice(cal.residuals_db) - shift_db >= x
        return hits / 1000

    assert coverage(need) >= 0.88
    if shift_db:                                              # the plug-in share alone would have overstated it
        assert coverage(0.9) < 0.85


def _picks(rng: random.Random, *, world_size: int, plans: int, images: int, a: float, slope: float, sd: float,
           tag: str) -> list[VerificationRun]:
    out = []
    for i in range(plans):
        e = [10 ** rng.uniform(-3, -1) for _ in range(images)]
        out.append(VerificationRun(world_size=world_size, policy="optimal", budget=0.1, predicted=e, speedup=2.0, windows=10,
                                   psnr_db=[a - slope * math.log10(x) + rng.gauss(0.0, sd) for x in e], pick=True,
                                   key=f"{tag}-{world_size}-{i}"))
    return out


def test_picks_calibrate_each_world_size_on_its_own_plans():
    """Bootstrap plans on one line; the optimizer's picks at G = 2 measure 5 dB above it and at G = 8
    4 dB below with twice the noise. The per-world-size parts (Mondrian split conformal) find each
    offset, their bounds cover fresh picks of their own G at the level, a world size with no picks
    uses the pooled part, and every measured plan is kept by its identity."""
    rng = random.Random(11)
    boot = (_runs(rng, plans=10, images=20, a=10.0, slope=20.0, sd=1.0)
            + _runs(rng, plans=10, images=20, a=10.0, slope=20.0, sd=1.0, world_size=8))
    picks = (_picks(rng, world_size=2, plans=16, images=20, a=15.0, slope=20.0, sd=1.0, tag="p")
             + _picks(rng, world_size=8, plans=16, images=20, a=6.0, slope=20.0, sd=2.0, tag="p"))
    cal, info = fit_calibration(boot + picks)
    assert cal.calibrated_world_sizes() == [2, 8] and not info["world_sizes_skipped"]
    c2, c8 = cal.at(2), cal.at(8)
    assert c2.intercept_db - (15.0 - 1.2816) == pytest.approx(0.0, abs=1.2)
    assert c8.intercept_db - (6.0 - 1.2816 * 2) == pytest.approx(0.0, abs=1.5)
    assert c2.intercept_db > cal.intercept_db > c8.intercept_db - 3.0
    assert cal.at(4) is cal and cal.at(None) is cal
    for G, a, sd, part in ((2, 15.0, 1.0, c2), (8, 6.0, 2.0, c8)):
        fresh = _picks(rng, world_size=G, plans=50, images=20, a=a, slope=20.0, sd=sd, tag="fresh")
        pairs = [(e, p) for r in fresh for e, p in zip(r.predicted, r.psnr_db)]
        share = sum(p >= part.psnr_db(e) for e, p in pairs) / len(pairs)
        m = len(part.residuals_db)              # the bound's own sampling error, and the fresh pairs'
        assert share >= 0.9 - 3 * math.sqrt(0.09 / m + 0.09 / len(pairs)), (G, share, m)
    assert set(cal.measured_plans) == {r.key for r in picks}
    assert cal.measured_plans["p-8-3"] == picks[16 + 3].psnr_db


def test_the_line_stays_put_and_every_earlier_residual_stays_when_more_picks_are_measured():
    """The central line is the bootstrap plans' alone: refitting with more picks leaves it (pooled
    and per world size) exactly where it was, and every earlier pick's residual is still among the
    residuals, so the sweeps only ever add evidence to the bound."""
    rng = random.Random(5)
    boot = (_runs(rng, plans=5, images=10, a=10.0, slope=20.0, sd=1.0)
            + _runs(rng, plans=5, images=10, a=10.0, slope=20.0, sd=1.0, world_size=4))
    first = _picks(rng, world_size=4, plans=12, images=10, a=10.0, slope=20.0, sd=1.0, tag="a")
    more = _picks(rng, world_size=4, plans=12, images=10, a=10.0, slope=20.0, sd=1.0, tag="b")
    cal_a, info_a = fit_calibration(boot + first)
    cal_b, info_b = fit_calibration(boot + first + more)
    for a, b in ((cal_a, cal_b), (cal_a.at(4), cal_b.at(4))):
        assert (a.central_intercept_db, a.slope_db_per_decade) == (b.central_intercept_db, b.slope_db_per_decade)
        assert not Counter(a.residuals_db) - Counter(b.residuals_db)
    assert info_a["held_out_picks"] == 12 and info_b["held_out_picks"] == 24 and info_a["fit_runs"] == info_b["fit_runs"] == 10


def test_a_plan_the_calibration_ran_is_predicted_from_its_own_residuals():
    """A measured plan's distribution is the mixture of every image's central prediction and the
    plan's own residuals (measured minus central); the bound stays the model's; with fewer lossy
    measured images than a bound at the level needs, the calibration's residuals are used."""
    cal = Calibration(intercept_db=8.0, slope_db_per_decade=20.0, fitted_on=10, central_intercept_db=10.0, level=0.9,
                      residuals_db=sorted([-3.0, -1.0, 0.0, 1.0] * 5))
    dev = [1e-1] * 10 + [1e-2] * 10                           # centres 30 and 50 dB
    measured = [21.0 + k for k in range(10)] + [42.0 + k for k in range(10)]
    own = sorted([m - 30.0 for m in measured[:10]] + [m - 50.0 for m in measured[10:]])
    mix = [c + r for c in (30.0,) * 10 + (50.0,) * 10 for r in own]
    pred = cal.predicted_psnr(dev, measured=measured)
    model = cal.predicted_psnr(dev)
    assert pred["residuals_of"] == "this plan" and model["residuals_of"] == "picks" and pred["residuals"] == 20
    assert pred["median_db"] == pytest.approx(statistics.median(mix))
    assert pred["p10_db"] == pytest.approx(statistics.quantiles(mix, n=10, method="inclusive")[0])
    assert pred["p10_db"] < model["p10_db"] - 1.0                 # this plan measured worse than the picks' residuals say
    assert pred["measured_on"] == 20 and model["measured_on"] == 0 and "measured_median_db" not in model
    assert pred["measured_median_db"] == pytest.approx(statistics.median(measured))
    assert pred["measured_p10_db"] == pytest.approx(statistics.quantiles(measured, n=10, method="inclusive")[0])
    assert pred["worst_lower_db"] == model["worst_lower_db"] == pytest.approx(27.0)
    few = cal.predicted_psnr([1e-1] * 8 + [0.0] * 12, measured=[28.0] * 8 + [PSNR_CAP_DB] * 12)   # 8 < 9 lossy images
    assert few["residuals_of"] == "picks" and few["measured_on"] == 20


@settings(max_examples=300, deadline=None)
@given(st.lists(st.floats(-30, 30), min_size=9, max_size=80), st.lists(st.floats(0, 40), max_size=80),
       st.floats(0.5, 0.98))
def test_more_images_that_met_the_bound_never_loosen_it(residuals, above, level):
    """The precise statement: with the central line fixed, adding residuals of images that met the
    bound (each at or above the current offset q) gives an offset q' >= q, so the per-image lower
    bound central + q never drops (never loosens) with more calibration data of that kind; images
    that missed it may lower it, which is the point of measuring them."""
    q = conformal_lower_offset(residuals, level)
    if q is None:
        return
    more = residuals + [q + a for a in above]
    q2 = conformal_lower_offset(more, level)
    assert q2 is not None and q2 >= q


def test_a_measured_miss_is_a_plan_predicted_from_its_own_residuals_below_its_target():
    """``planner.plan.measured_miss``: for a plan planned for a --min-psnr target at coverage 0.9
    or more, whose 10th percentile measured on the calibration images is below it, or whose
    prediction from its own residuals is."""
    from types import SimpleNamespace as NS

    from parastep.planner.plan import measured_miss

    def sched(p10, of="this plan", target=30.0, coverage=0.9, measured_p10=None):
        return NS(quality=NS(min_psnr_db=target, coverage=coverage,
                             predicted_psnr=NS(p10_db=p10, residuals_of=of, measured_p10_db=measured_p10,
                                               measured_on=0 if measured_p10 is None else 20)))

    line = measured_miss(sched(24.9))
    assert "24.9 dB, below the 30 dB target" in line and "\n" not in line
    assert measured_miss(sched(30.0)) == ""                        # at the target: met
    assert measured_miss(sched(24.9, of="picks")) == ""            # the model's own prediction: the bound was planned to it
    assert measured_miss(sched(24.9, target=None)) == ""           # no target to miss
    assert measured_miss(sched(24.9, coverage=0.5)) == ""          # a p10 says nothing about a 50 % promise
    assert "measured 29.0 dB" in measured_miss(sched(31.0, measured_p10=29.0))   # its own images measured low
    assert measured_miss(sched(31.0, measured_p10=30.0)) == ""
    # a model (fresh-image calibrated) prediction over a plan the calibration ran: its measurement decides
    assert "measured 29.0 dB" in measured_miss(sched(31.0, of="picks", measured_p10=29.0))


def test_every_measured_plan_keeps_its_windows_by_its_identity():
    """A run that carries its windows (``verify`` records them) is kept in ``measured_windows`` under
    the same identity as its PSNR, with its world size, so the planner can rebuild it; synthetic
    runs without windows are kept by their PSNR only."""
    rng = random.Random(3)
    boot = _runs(rng, plans=10, images=20, a=10.0, slope=20.0, sd=1.0)
    picks = _picks(rng, world_size=2, plans=12, images=20, a=12.0, slope=20.0, sd=1.0, tag="p")
    plan = ({"kind": "exact", "start": 0}, {"kind": "reuse", "start": 1, "size": 2, "predictor": "last"})
    picks[4] = VerificationRun(**{**picks[4].__dict__, "plan_windows": plan})
    cal, _ = fit_calibration(boot + picks)
    assert set(cal.measured_windows) == {"p-2-4"} and set(cal.measured_plans) == {r.key for r in picks}
    kept = cal.measured_windows["p-2-4"]
    assert kept.world_size == 2 and kept.windows == list(plan)


def test_a_recalibration_plans_at_every_world_size_the_profile_was_calibrated_at():
    """``calibration_world_sizes``: 2, 4 and 8 up to --gpus and --gpus itself for a new profile;
    a profile calibrated at G = 2, 4, 8 recalibrated with --gpus 3 (or the default 2) keeps them
    and adds 3, so the command ``plan`` names to calibrate a world size drops none."""
    from parastep.profiler.calibrate import calibration_world_sizes
    from parastep.profiles.io import resolve_profile

    digits, _ = resolve_profile("digits")
    assert digits.calibration.calibrated_world_sizes() == [2, 4, 8]
    bare = digits.model_copy(update={"calibration": None})
    assert calibration_world_sizes(bare, 1) == (1,)
    assert calibration_world_sizes(bare, 2) == (2,)
    assert calibration_world_sizes(bare, 6) == (2, 4, 6)
    assert calibration_world_sizes(digits, 2) == (2, 4, 8)
    assert calibration_world_sizes(digits, 3) == (2, 3, 4, 8)
    assert calibration_world_sizes(digits, 16) == (2, 4, 8, 16)

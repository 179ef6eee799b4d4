"""``plan --verify``'s rounds (``profiler.verify.aim``) against a fake world whose measured
PSNR per plan is known: a plan that misses is re-planned stricter, a ``--min-psnr`` plan met with
room to spare is traded for a faster one only if that one meets the target on the same images, and
every exit returns the measurement of the plan it returns."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from parastep.profiler import verify
from parastep.profiler.verify import MAX_ROUNDS, SLACK_DB, Target, aim


class World:
    """Plans are named by the target they were made for (``plan_db``); a lower target is a faster
    plan (latency = plan_db s). ``truth(plan_db)`` is what its 10 images measure (dB each)."""

    def __init__(self, truth):
        self.truth = truth
        self.measured: list[float] = []
        self.planned: list[float] = []

    def plan(self, plan_db: float):
        self.planned.append(plan_db)
        return SimpleNamespace(schedule=SimpleNamespace(latency=SimpleNamespace(predicted_s=plan_db), plan_db=plan_db))

    def measure(self, schedule) -> list[float]:
        self.measured.append(schedule.plan_db)
        return self.truth(schedule.plan_db)

    def replan(self, plan_db=None, factor=None):
        return self.plan(plan_db)


def spread(center: float) -> list[float]:
    return [center + d for d in (-1.0, 0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0)]


def test_a_cautious_model_is_traded_for_a_faster_plan_that_still_meets_the_target():
    w = World(lambda t: spread(t + 8.0))           # the model is 8 dB too cautious everywhere
    target = Target.min_psnr(30.0, 0.9)
    result, psnr, rounds = aim(w.plan(30.0), measure=w.measure, replan=w.replan, target=target)
    assert result.schedule.plan_db < 30.0 and target.met(psnr)
    assert psnr == w.truth(result.schedule.plan_db)
    assert target.margin_db(psnr) <= SLACK_DB and rounds == 2 == len(w.measured)


def test_a_faster_plan_that_misses_is_not_taken():
    # met with 8 dB to spare at 30, but every plan for a lower target collapses
    w = World(lambda t: spread(38.0) if t >= 30.0 else spread(20.0))
    target = Target.min_psnr(30.0, 0.9)
    result, psnr, rounds = aim(w.plan(30.0), measure=w.measure, replan=w.replan, target=target)
    assert result.schedule.plan_db == 30.0 and psnr == spread(38.0) and target.met(psnr)
    assert rounds == 2 and w.measured == [30.0, w.planned[1]] and w.planned[1] < 30.0


def test_no_faster_plan_means_nothing_more_is_measured():
    w = World(lambda t: spread(40.0))
    target = Target.min_psnr(30.0, 0.9)
    plan = w.plan(30.0)
    result, psnr, rounds = aim(plan, measure=w.measure, replan=lambda plan_db=None, factor=None: plan, target=target)
    assert result is plan and rounds == 1 and w.measured == [30.0]


def test_an_optimistic_model_is_re_planned_stricter_until_it_meets_the_target():
    w = World(lambda t: spread(t - 3.0))           # 3 dB too kind
    target = Target.min_psnr(30.0, 0.9)
    result, psnr, rounds = aim(w.plan(30.0), measure=w.measure, replan=w.replan, target=target)
    assert target.met(psnr) and result.schedule.plan_db > 30.0 and rounds == 2
    assert psnr == w.truth(result.schedule.plan_db)


def test_rounds_are_capped_and_a_plan_that_never_meets_is_returned_as_measured():
    w = World(lambda t: spread(10.0))
    target = Target.min_psnr(30.0, 0.9)
    result, psnr, rounds = aim(w.plan(30.0), measure=w.measure, replan=w.replan, target=target)
    assert rounds == MAX_ROUNDS == len(w.measured) and not target.met(psnr)
    assert psnr == w.truth(result.schedule.plan_db)


def test_the_default_plan_tightens_its_bounds_and_is_never_relaxed():
    factors = []

    def replan(plan_db=None, factor=None):
        assert plan_db is None
        factors.append(factor)
        return SimpleNamespace(schedule=SimpleNamespace(latency=SimpleNamespace(predicted_s=2.0), n=len(factors)))

    first = SimpleNamespace(schedule=SimpleNamespace(latency=SimpleNamespace(predicted_s=1.0), n=0))
    target = Target("fixed plan's mean", lambda p: p[0] >= 1)
    result, psnr, rounds = aim(first, measure=lambda s: [s.n], replan=replan, target=target)
    assert factors == [pytest.approx(verify.TIGHTEN)] and result.schedule.n == 1 and rounds == 2


def test_without_a_target_the_plan_is_measured_once():
    w = World(lambda t: spread(t))
    plan = w.plan(30.0)
    result, psnr, rounds = aim(plan, measure=w.measure, replan=w.replan, target=None)
    assert result is plan and rounds == 1 and w.measured == [30.0]

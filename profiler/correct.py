"""Plan-level corrections: make the per-image quality model exact on the plans the optimizer picks.

The per-sample tables (``Profile.output_errors``) price each window alone and add the windows of a
plan up. Measured on the shipped digits profile (2026-11-30), that sum is *conservative* for most
images (a G = 8 ``--min-psnr 30`` plan measured 0.4-0.6x its predicted output RMS on 14 of 20
calibration images) and *optimistic* for exactly the images the optimizer drives to the bound:
image 0 at 3.2x (one early ``linear`` window, priced 25x too low alone) and image 17 at 2.3x
(windows that are each priced well alone, but compound: the plan measured 2.4x the sum of its
windows run one at a time). An exact planner spends the model's optimism, so a quality statement
missed on a quarter of the images.

The correction is a cutting-plane loop over the model itself (no statement-specific rule):

1. plan a spread of statements (default plan, fixed plan, ``--min-psnr DB --coverage 0.9`` for
   several DB) at several world sizes with the current tables;
2. run each plan in ONE process on the profile's own calibration samples and compare each image's
   measured PSNR with the calibrated prediction ``calibration.psnr_db(E_n)``;
3. where an image measured below its prediction, multiply that image's entries of every non-exact
   window of the plan by ``r = 10 ** ((predicted - measured) / slope)`` (the factor that makes the
   plan's prediction for that image equal its measurement; the largest factor wins where plans
   share a window), so the model is never kinder than a measurement it has seen;
4. repeat until every plan of a round meets its prediction on every image (or the rounds run out).

Corrections only ever raise an entry: the model stays conservative where it was. The excess is
spread over the plan's windows in proportion to their predicted share (the measurement does not
say which window, or which pair of windows, caused it). Cost: one run of the calibration samples
per distinct plan and round (``T`` forwards of the calibration batch each); no per-window runs.

What it changes is checked where it matters, on seeds neither the profile nor the corrections saw
(``tests/test_quality.py``) and at statements the loop did not plan (README, Results).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Sequence

from ..profiles.model import Profile
from .audit import WindowKey, table_copies, window_keys


def scaled(profile: Profile, factors: Mapping[WindowKey, Sequence[float]]) -> Profile:
    """``profile`` with each listed window's per-sample entries multiplied by its factors."""
    oe = profile.output_errors
    tables = table_copies(oe)
    for (kind, predictor, start, size), f in factors.items():
        entry = tables[kind][predictor][start][size - 1]
        tables[kind][predictor][start][size - 1] = [float(v) * float(x) for v, x in zip(entry, f)]
    return profile.model_copy(update={"output_errors": oe.model_copy(update=tables)})


@dataclass
class CorrectionReport:
    rounds: int = 0
    plans: int = 0                                  # plan runs measured, all rounds
    corrected_entries: int = 0                      # (window, image) entries raised, all rounds
    violations_per_round: list[int] = field(default_factory=list)    # (plan, image) below prediction
    worst_shortfall_db_per_round: list[float] = field(default_factory=list)
    seconds: float = 0.0
    converged: bool = False


DEFAULT_MIN_PSNR_DBS: tuple[float, ...] = (25.0, 30.0, 35.0, 40.0, 45.0)


def statements_for(profile: Profile, *, world_sizes: Sequence[int], min_psnr_dbs: Sequence[float]) -> list[dict]:
    """The plan requests each round measures: per world size the fixed plan, the default plan and
    ``--min-psnr DB --coverage 0.9`` for each DB."""
    out: list[dict] = []
    for G in world_sizes:
        J = min(G, profile.max_window)
        out.append({"world_size": G, "max_window": J, "policy": "fixed"})
        out.append({"world_size": G, "max_window": J})
        for db in min_psnr_dbs:
            out.append({"world_size": G, "max_window": J, "budget": profile.calibration.deviation_for_psnr(db),
                        "coverage": 0.9, "min_psnr_db": db})
    return out


def correct_on_plans(profile: Profile, profile_sha256: str, *, measure: Callable[[Any], list[float]],
                     world_sizes: Sequence[int] = (2, 4, 8), min_psnr_dbs: Sequence[float] = DEFAULT_MIN_PSNR_DBS,
                     rounds: int = 8, tolerance_db: float = 0.0, time_limit_s: float = 10.0,
                     intercept_db: Optional[float] = None,
                     say: Optional[Callable[[str], None]] = None) -> tuple[Profile, CorrectionReport]:
    """The cutting-plane loop of the module docstring. ``measure(schedule)`` returns the measured
    PSNR (dB) of each calibration sample of ``profile``, in its order. An image counts as below
    its prediction when it measured more than ``tolerance_db`` under it. ``intercept_db`` replaces
    the calibration's intercept first (the central fit: the corrections, not a residual shift, then
    keep predictions at or below what was measured)."""
    from ..planner.options import SolverOptions
    from ..planner.plan import plan_schedule, recompute

    if profile.output_errors is None or profile.calibration is None:
        raise ValueError("plan-level corrections need a profile with per-sample tables and a calibration")
    say = say or (lambda msg: None)
    if intercept_db is not None:
        profile = profile.model_copy(update={"calibration": profile.calibration.model_copy(update={"intercept_db": intercept_db})})
    cal = profile.calibration
    N = profile.quality_samples
    options = SolverOptions(workers=1, seed=0, deterministic=True, time_limit_s=time_limit_s)
    current = profile
    report = CorrectionReport()
    t0 = time.perf_counter()
    for r in range(rounds):
        plans, seen = [], set()
        for st in statements_for(current, world_sizes=world_sizes, min_psnr_dbs=min_psnr_dbs):
            s = plan_schedule(current, profile_sha256=profile_sha256, options=options, **st).schedule
            key = (s.world_size, json.dumps([w.model_dump(mode="json") for w in s.windows], sort_keys=True))
            if key not in seen:
                seen.add(key)
                plans.append(s)
        factors: dict[WindowKey, list[float]] = {}
        violations, worst = 0, 0.0
        for k, s in enumerate(plans):
            _, _, errs = recompute(s, current)
            predicted = [math.fsum(col) for col in zip(*errs)]
            measured = measure(s)
            keys = window_keys(s)
            for n in range(N):
                if predicted[n] <= 0:
                    continue
                short = cal.psnr_db(predicted[n]) - measured[n]
                if short <= tolerance_db:
                    continue
                violations += 1
                worst = max(worst, short)
                f = 10.0 ** (short / cal.slope_db_per_decade)
                for key in keys:
                    row = factors.setdefault(key, [1.0] * N)
                    row[n] = max(row[n], f)
            say(f"correct round {r + 1}: {k + 1}/{len(plans)} plans measured, {violations} images below prediction, "
                f"{time.perf_counter() - t0:.0f} s")
        report.rounds = r + 1
        report.plans += len(plans)
        report.violations_per_round.append(violations)
        report.worst_shortfall_db_per_round.append(worst)
        if not factors:
            report.converged = True
            break
        report.corrected_entries += sum(1 for f in factors.values() for x in f if x > 1.0)
        current = scaled(current, factors)
    report.seconds = time.perf_counter() - t0
    return current, report

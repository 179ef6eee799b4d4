"""Plan-level corrections: make the per-image quality model exact on the plans the optimizer picks.

The per-sample tables (``Profile.output_errors``) price each window alone and add the windows of a
plan up. On the bundled digits profile that sum is *conservative* for most images (a G = 8
``--min-psnr 30`` plan measures 0.41-0.69x its predicted output RMS on 13 of 20 calibration
images) and *optimistic* for exactly the images the optimizer drives to the bound: one early
``linear`` window priced 25x too low alone, or windows each priced within 2.2x alone that compound
(the plan measures 2.4x the sum of its windows run one at a time). An exact planner spends the
model's optimism, so without corrections such a plan misses its target on some of the images it
was planned on.

The correction is a cutting-plane loop over the model itself (no statement-specific rule):

1. plan a spread of statements (fixed plan, default plan, ``--min-psnr DB --coverage 0.9`` for
   several DB) at several world sizes with the current tables;
2. run each plan in ONE process on the profile's own calibration samples and compare each image's
   measured PSNR with the calibrated prediction ``calibration.psnr_db(E_n)``;
3. for each plan where an image measured below its prediction: run each of its windows alone once
   (``audit.measure_window``; cached across rounds) and raise every entry below its measurement to
   it, which finds a single window the linearisation mispriced;
4. what the windows alone do not explain (they compound along the plan) is spread over the plan's
   windows for that image: each entry times ``r = 10 ** (shortfall / slope)``, which makes the
   plan's prediction equal its measurement (the largest factor wins where plans share a window);
5. repeat until every plan of a round meets its prediction on every image, or the rounds run out.

Entries are only ever raised, so a plan once corrected never misses again, and with finitely
many plans the loop ends. Step 3 comes before step 4 because spreading every shortfall over the
plan alone makes innocent windows pay for the mispriced one (on digits the G = 4 ``--min-psnr 30``
plan is then 19 % slower, with its p10 image 8.6 dB above target); entries are never *lowered*
where images measure better, since that makes later rounds miss on more images, not fewer.
Cost: one run of the calibration batch per distinct plan and round (``T`` forwards), plus
``T - start`` forwards per window run alone.

Where the profile prices CFG splits, each round plans every statement both with and without
them (``statements_for``). The runs that produced the shipped digits tables are described in
benchmarks/results/quality_model.md. What the corrections change is checked where it matters, on
seeds neither the profile nor the corrections saw (``tests/test_quality.py``), and at statements
the loop did not plan (README, Results).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Sequence

from ..errors import UserError
from ..profiles.model import Profile
from .audit import WindowKey, table_copies, window_keys
from .calibrate import plan_key, verification_world_sizes
from .instrument import calibration_samples


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
    seconds: float = 0.0
    converged: bool = False
    windows_run_alone: int = 0


DEFAULT_MIN_PSNR_DBS: tuple[float, ...] = (25.0, 30.0, 35.0, 40.0, 45.0)


def cfg_split_settings(profile: Profile) -> list[str]:
    """The ``plan --cfg-split`` settings each round plans: both where the profile prices splits."""
    return ["auto", "off"] if profile.can_split else ["auto"]


def statements_for(profile: Profile, *, world_sizes: Sequence[int], min_psnr_dbs: Sequence[float]) -> list[dict]:
    """The plan requests each round measures: per world size the fixed plan, the default plan and
    ``--min-psnr DB --coverage 0.9`` for each DB; where the profile prices CFG splits, each of these
    also without splits (``plan --cfg-split off``), since those plans use other windows: on digits,
    tables corrected on split plans only leave the G = 8 ``--min-psnr 35`` plan without splits with
    2 of its 20 calibration images 3.5-4.3 dB below their prediction."""
    out: list[dict] = []
    for setting in cfg_split_settings(profile):
        extra = {} if setting == "auto" else {"allow_split": False}
        for G in world_sizes:
            J = min(G, profile.max_window)
            out.append({"world_size": G, "max_window": J, "policy": "fixed", **extra})
            out.append({"world_size": G, "max_window": J, **extra})
            for db in min_psnr_dbs:
                out.append({"world_size": G, "max_window": J, "budget": profile.calibration.at(G).deviation_for_psnr(db),
                            "coverage": 0.9, "min_psnr_db": db, **extra})
    return out


def _shortfalls(schedule, profile: Profile, measured: Sequence[float], tolerance_db: float) -> list[float]:
    """Per image: dB by which the measurement fell below the calibrated prediction (0 where it did
    not, where the prediction is exact, or where the image is identical to the sequential one)."""
    from ..executor.evaluate import PSNR_CAP_DB
    from ..planner.plan import predicted_per_sample

    cal = profile.calibration.at(schedule.world_size)
    out = []
    for e, m in zip(predicted_per_sample(schedule, profile), measured):
        v = cal.psnr_db(e) - m if e > 0 and m < PSNR_CAP_DB else 0.0
        out.append(v if v > tolerance_db else 0.0)
    return out


def correct_on_plans(profile: Profile, profile_sha256: str, *, measure: Callable[[Any], list[float]],
                     world_sizes: Sequence[int] = (2, 4, 8), min_psnr_dbs: Sequence[float] = DEFAULT_MIN_PSNR_DBS,
                     rounds: int = 8, tolerance_db: float = 0.0, time_limit_s: float = 10.0,
                     measure_alone: Optional[Callable[[WindowKey], list[float]]] = None,
                     say: Optional[Callable[[str], None]] = None) -> tuple[Profile, CorrectionReport]:
    """The cutting-plane loop of the module docstring. ``measure(schedule)`` returns the measured
    PSNR (dB) of each calibration sample of ``profile``, in its order. An image counts as below
    its prediction when it measured more than ``tolerance_db`` under it. ``measure_alone(key)``,
    if given, returns the output RMS per sample (latent units, as the tables) of one window run alone
    (``audit.measure_window``): the windows of plans that missed are run once each, and entries
    below their measurement are raised to it before the rest of a shortfall is spread."""
    from ..planner.options import SolverOptions
    from ..planner.plan import plan_schedule

    if profile.output_errors is None or profile.calibration is None:
        raise ValueError("plan-level corrections need a profile with per-sample tables and a calibration")
    say = say or (lambda msg: None)
    cal = profile.calibration
    N = profile.quality_samples
    options = SolverOptions(workers=1, seed=0, deterministic=True, time_limit_s=time_limit_s)
    current = profile
    alone: dict[WindowKey, list[float]] = {}
    report = CorrectionReport()
    t0 = time.perf_counter()
    for r in range(rounds):
        plans, seen = [], set()
        for st in statements_for(current, world_sizes=world_sizes, min_psnr_dbs=min_psnr_dbs):
            s = plan_schedule(current, profile_sha256=profile_sha256, options=options, **st).schedule
            key = plan_key(s)
            if key not in seen:
                seen.add(key)
                plans.append(s)
        violated = []                                   # (plan, measured PSNR per image)
        violations = 0
        for k, s in enumerate(plans):
            measured = measure(s)
            short = _shortfalls(s, current, measured, tolerance_db)
            if any(v > 0 for v in short):
                violated.append((s, measured))
                violations += sum(1 for v in short if v > 0)
            say(f"correct round {r + 1}: {k + 1}/{len(plans)} plans measured, {violations} images below prediction, "
                f"{time.perf_counter() - t0:.0f} s")
        report.rounds = r + 1
        report.plans += len(plans)
        report.violations_per_round.append(violations)
        if violations == 0:
            report.converged = True
            break
        if measure_alone is not None:
            # attribution: each window of a plan that missed, run alone; an entry below that is raised to it
            todo = [key for s, _ in violated for key in window_keys(s) if key not in alone]
            todo = list(dict.fromkeys(todo))
            for i, key in enumerate(todo):
                alone[key] = measure_alone(key)
                if i % 10 == 9 or i == len(todo) - 1:
                    say(f"correct round {r + 1}: {i + 1}/{len(todo)} windows run alone, {time.perf_counter() - t0:.0f} s")
            raise_to = {}
            for key in todo:
                model = current.window_errors(key[0], start=key[2], size=key[3], predictor=key[1])
                f = [a / m if m > 0 and a > m else 1.0 for a, m in zip(alone[key], model)]
                if any(x > 1.0 for x in f):
                    raise_to[key] = f
            report.windows_run_alone += len(todo)
            report.corrected_entries += sum(1 for f in raise_to.values() for x in f if x > 1.0)
            current = scaled(current, raise_to)
        # what the windows alone do not explain (windows compound along a plan): spread over the plan
        factors: dict[WindowKey, list[float]] = {}
        for s, measured in violated:
            for n, v in enumerate(_shortfalls(s, current, measured, tolerance_db)):
                if v <= 0:
                    continue
                f = 10.0 ** (v / cal.slope_db_per_decade)
                for key in window_keys(s):
                    row = factors.setdefault(key, [1.0] * N)
                    row[n] = max(row[n], f)
        report.corrected_entries += sum(1 for f in factors.values() for x in f if x > 1.0)
        current = scaled(current, factors)
    report.seconds = time.perf_counter() - t0
    return current, report


def correct_profile(pipe, profile, *, settings, rounds: int, say) -> Profile:
    """``profile`` with its quality tables corrected on the plans the optimizer picks
    (``correct_on_plans``), run on the profile's own calibration samples: the windows of a plan
    that missed are run alone and raised to what they measured, what they leave unexplained
    (compounding) is spread over the plan's windows. The calibration line stays as fitted."""
    from ..executor.evaluate import psnr_db_per_sample, run_schedule_local
    from ..executor.launch import cpu_threads
    from ..profiles.io import dump_profile
    from ..profiles.model import Corrections, profile_sha256
    from .audit import measure_window
    from .trajectory import record_reference

    if profile.output_errors is None or profile.calibration is None:
        raise UserError(f"profile '{profile.name}' has no calibrated per-sample quality model to correct; "
                        "add --verify N (a calibration) or re-profile it")
    if profile.strength is not None:
        raise UserError(f"--correct runs the pipeline without an input image: profile '{profile.name}' is image-to-image; "
                        "profile it without --correct")
    prompts, seeds = calibration_samples(pipe, profile)
    T = profile.num_steps
    sizes = verification_world_sizes(settings.gpus)
    sha = profile_sha256(dump_profile(profile))
    with cpu_threads(pipe, settings.threads):
        ref = run_schedule_local(pipe, None, num_steps=T, prompts=prompts, seeds=seeds, call_kwargs=settings.call_kwargs)
        traj = record_reference(pipe, prompts=prompts, seeds=seeds, num_steps=T, call_kwargs=settings.call_kwargs)

        def measure(schedule) -> list[float]:
            out = run_schedule_local(pipe, schedule, num_steps=T, prompts=prompts, seeds=seeds, call_kwargs=settings.call_kwargs)
            return psnr_db_per_sample(out, ref)

        def measure_alone(key) -> list[float]:
            return measure_window(pipe, traj, key, prompts=prompts, seeds=seeds, num_steps=T, call_kwargs=settings.call_kwargs)

        corrected, rep = correct_on_plans(profile, sha, measure=measure, measure_alone=measure_alone, world_sizes=sizes,
                                          rounds=rounds, say=say)
    say(f"corrections: {rep.rounds} round(s), {rep.plans} plan runs, {rep.windows_run_alone} windows run alone, "
        f"{rep.corrected_entries} entries raised, "
        f"images below prediction per round {rep.violations_per_round}, {'converged' if rep.converged else 'NOT converged'}, "
        f"{rep.seconds:.0f} s")
    # a profile corrected before (``--recalibrate P --correct R`` continues from P's tables, which is
    # valid: entries only go up) keeps the whole history: counts add up, rounds append
    prev = profile.output_errors.corrections
    record = Corrections(rounds=rep.rounds, plans_measured=rep.plans, windows_run_alone=rep.windows_run_alone,
                         entries_raised=rep.corrected_entries,
                         below_prediction_per_round=rep.violations_per_round, converged=rep.converged,
                         world_sizes=list(sizes), min_psnr_dbs=list(DEFAULT_MIN_PSNR_DBS),
                         cfg_split=cfg_split_settings(profile))
    if prev is not None:
        record = prev.followed_by(record)
    oe = corrected.output_errors.model_copy(update={"corrections": record})
    return corrected.model_copy(update={"output_errors": oe})

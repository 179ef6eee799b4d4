"""PSNR calibration of a profile (DESIGN §2, issue 4 item 4): predicted deviation -> dB.

Verification runs: ``sample_schedules`` draws plans across world sizes and budgets (the optimal
planner at log-uniform budgets around the paper's fixed plan's own error, and the fixed plan at
random warm-ups); ``run_schedule`` runs one of them in ONE process (the executor's hooks with
``LocalExchange``: a schedule's output does not depend on where its offsets run) and
``psnr_db_per_sample`` compares the decoded output with the sequential output of the same seed.

``fit_calibration`` fits ``psnr = intercept - slope * log10(E)`` by least squares on a random half
of the runs (E = the planner's predicted error of the schedule, mean PSNR over the samples),
then lowers the intercept by the ``quantile`` of the fit residuals of individual samples, so a
``--min-psnr`` target is met by about ``1 - quantile`` of the images; the held-out half gives the
Spearman correlation and the median absolute error recorded in the profile.
"""

from __future__ import annotations

import math
import random
import statistics
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional, Sequence

from ..profiles.model import Calibration, Profile


@dataclass(frozen=True)
class VerificationRun:
    world_size: int
    policy: str
    budget: float
    predicted: float                      # planner's predicted output deviation
    speedup: float                        # planner's predicted speedup
    psnr_db: list[float]                  # per sample
    windows: int

    @property
    def mean_psnr_db(self) -> float:
        return statistics.fmean(self.psnr_db)


def sample_schedules(profile: Profile, profile_sha256: str, *, count: int, world_sizes: Sequence[int] = (2, 4, 8),
                     seed: int = 0, fixed_share: float = 0.25, span_decades: tuple[float, float] = (-2.0, 1.5),
                     max_window: Optional[int] = None) -> list[Any]:
    """``count`` distinct schedules: optimal plans at log-uniform budgets (``span_decades`` around
    the fixed plan's error, never below the smallest feasible budget) and fixed plans at random
    warm-ups, cycling through ``world_sizes``."""
    from ..planner.cpsat import SolverOptions
    from ..planner.plan import plan_schedule, smallest_feasible_budget

    rng = random.Random(seed)
    T = profile.num_steps
    out: list[Any] = []
    seen: set = set()
    attempts = 0
    while len(out) < count and attempts < 20 * count:
        G = world_sizes[attempts % len(world_sizes)]
        attempts += 1
        J = min(G, profile.max_window) if max_window is None else min(max_window, profile.max_window)
        if rng.random() < fixed_share:
            W = rng.randint(1, min(15, T - 1))
            res = plan_schedule(profile, profile_sha256=profile_sha256, world_size=G, max_window=J, policy="fixed", warmup=W)
        else:
            base = plan_schedule(profile, profile_sha256=profile_sha256, world_size=G, max_window=J, policy="fixed").schedule.quality.predicted
            floor, _, _ = smallest_feasible_budget(profile, world_size=G, max_window=J)
            budget = max(base * 10 ** rng.uniform(*span_decades), floor * 1.01, 1e-12)
            res = plan_schedule(profile, profile_sha256=profile_sha256, world_size=G, max_window=J, budget=budget,
                                solver="dp", options=SolverOptions(workers=1))
        s = res.schedule
        key = (G, tuple((w.kind, w.start, tuple(getattr(w, "placement", ())), getattr(w, "predictor", None),
                         getattr(w, "size", None)) for w in s.windows))
        if key in seen or s.quality.predicted <= 0:
            continue
        seen.add(key)
        out.append(s)
    return out


def run_schedule(pipe, schedule, *, num_steps: int, prompts: Sequence[Any], seeds: Sequence[int],
                 call_kwargs: Mapping[str, Any]):
    """The decoded output (torch, (B, ...) in [0, 1]) of ``schedule`` run in this one process;
    ``schedule=None`` runs the plain sequential pipeline."""
    import torch

    from ..executor.hooks import ParaStepConfig, apply_parastep, remove_parastep
    from .measure import _call

    kw = {**call_kwargs, "output_type": "np"}
    if schedule is not None:
        if schedule.num_steps != num_steps:
            raise ValueError(f"schedule has {schedule.num_steps} steps, not {num_steps}")
        apply_parastep(pipe, ParaStepConfig(windows=schedule.windows, num_steps=num_steps))
    try:
        with torch.no_grad():
            images = _call(pipe, prompts=prompts, seeds=seeds, num_steps=num_steps, call_kwargs=kw).images
    finally:
        if schedule is not None:
            remove_parastep(pipe)
    return torch.as_tensor(images)


def psnr_db_per_sample(images, reference, *, cap_db: float = 100.0) -> list[float]:
    """PSNR (data range 1) of each image vs the reference of the same index, capped at ``cap_db``."""
    a = images.reshape(images.shape[0], -1).double()
    b = reference.reshape(reference.shape[0], -1).double()
    mse = (a - b).pow(2).mean(dim=1)
    return [cap_db if m <= 10 ** (-cap_db / 10) else min(cap_db, -10.0 * math.log10(m)) for m in mse.tolist()]


def verify(pipe, schedules: Sequence[Any], *, prompts: Sequence[Any], seeds: Sequence[int],
           call_kwargs: Mapping[str, Any], progress: Optional[Callable[[str], None]] = None) -> list[VerificationRun]:
    """Run every schedule once (one batch of all samples) and measure PSNR vs sequential."""
    if not schedules:
        return []
    T = schedules[0].num_steps
    ref = run_schedule(pipe, None, num_steps=T, prompts=prompts, seeds=seeds, call_kwargs=call_kwargs)
    runs = []
    for k, s in enumerate(schedules):
        out = run_schedule(pipe, s, num_steps=T, prompts=prompts, seeds=seeds, call_kwargs=call_kwargs)
        runs.append(VerificationRun(world_size=s.world_size, policy=s.policy, budget=s.quality.budget,
                                    predicted=s.quality.predicted, speedup=s.latency.speedup,
                                    psnr_db=psnr_db_per_sample(out, ref), windows=len(s.windows)))
        if progress is not None and (k % 10 == 9 or k == len(schedules) - 1):
            progress(f"verify: {k + 1}/{len(schedules)} schedules")
    return runs


def _ranks(values: Sequence[float]) -> list[float]:
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2.0
        i = j + 1
    return ranks


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman rank correlation (average ranks for ties)."""
    ra, rb = _ranks(a), _ranks(b)
    ma, mb = statistics.fmean(ra), statistics.fmean(rb)
    num = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    den = math.sqrt(sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb))
    return num / den if den > 0 else 0.0


def fit_line(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """Least squares ``y = a + b x``: (a, b)."""
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    var = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var if var > 0 else 0.0
    return my - b * mx, b


def _quantile(values: Sequence[float], q: float) -> float:
    v = sorted(values)
    if not v:
        return 0.0
    pos = q * (len(v) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


def fit_calibration(runs: Sequence[VerificationRun], *, quantile: float = 0.1, seed: int = 0) -> tuple[Calibration, dict]:
    """Fit on a random half, evaluate on the other half (see module docstring)."""
    idx = list(range(len(runs)))
    random.Random(seed).shuffle(idx)
    half = len(idx) // 2
    fit_i, held_i = idx[:half], idx[half:]
    if len(fit_i) < 3 or len(held_i) < 3:
        raise ValueError(f"calibration needs at least 6 verification runs, got {len(runs)}")
    xs = [math.log10(runs[i].predicted) for i in fit_i]
    ys = [runs[i].mean_psnr_db for i in fit_i]
    a, b = fit_line(xs, ys)
    if b >= 0:
        raise ValueError("measured PSNR does not fall with the predicted error on the verification runs; "
                         "the profile's deviation tables do not predict quality")
    residuals = [p - (a + b * math.log10(runs[i].predicted)) for i in fit_i for p in runs[i].psnr_db]
    shift = _quantile(residuals, quantile)
    intercept = a + min(0.0, shift)
    slope = -b

    def pred(i: int, icpt: float) -> float:
        return icpt - slope * math.log10(runs[i].predicted)

    held_pred = [runs[i].predicted for i in held_i]
    held_psnr = [runs[i].mean_psnr_db for i in held_i]
    rho = spearman(held_pred, held_psnr)
    mae_central = statistics.median(abs(pred(i, a) - runs[i].mean_psnr_db) for i in held_i)
    mae = statistics.median(abs(pred(i, intercept) - runs[i].mean_psnr_db) for i in held_i)
    met = [p >= pred(i, intercept) for i in held_i for p in runs[i].psnr_db]
    info = {"fit_runs": len(fit_i), "held_out_runs": len(held_i), "spearman_held_out": rho,
            "median_abs_error_db_central": mae_central, "median_abs_error_db": mae,
            "held_out_samples_meeting_prediction": sum(met) / len(met), "central_intercept_db": a,
            "quantile_shift_db": min(0.0, shift)}
    cal = Calibration(
        intercept_db=intercept, slope_db_per_decade=slope, fitted_on=len(fit_i), spearman=rho, median_abs_error_db=mae,
        how=(f"least squares of mean PSNR (output vs sequential, same seed) on log10(predicted deviation) over "
             f"{len(fit_i)} of {len(runs)} verification schedules (random half); intercept lowered by the "
             f"{quantile:.0%} quantile of per-sample residuals ({min(0.0, shift):.2f} dB) so targets hold for about "
             f"{1 - quantile:.0%} of images; held-out {len(held_i)}: Spearman {rho:.3f}, median |error| {mae:.2f} dB "
             f"({mae_central:.2f} dB for the central fit), {sum(met) / len(met):.0%} of held-out images at or above "
             f"the prediction"),
    )
    return cal, info

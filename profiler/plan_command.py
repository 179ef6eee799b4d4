"""``parastep plan``: profile -> optimal (or fixed) schedule; stdout is only the YAML, written after
success (docs/design.md §3, §8).

The arguments become a checked request (``planner.request``); ``--verify N`` measures the plan
and re-makes it until it meets its target (``profiler.verify``), which needs the executor, so the
command lives in the profiler layer (docs/design.md §6).
"""

from __future__ import annotations

import sys

from ..errors import UserError
from ..planner.request import make_plan, request_from_args
from ..profiles.model import Profile
from ..schedules.io import dump_schedule


def run(args) -> int:
    n = getattr(args, "verify", 0) or 0
    if n < 0:
        raise UserError(f"--verify {n} must be >= 0 images; pass e.g. --verify 10")
    req = request_from_args(args)
    if n == 0:
        emit(make_plan(req), req.profile)
        return 0
    from .verify import verified

    result = verified(req, n=n, model_path=getattr(args, "model_path", None))
    emit(result, req.profile)
    return 0


def _per_image(s) -> str:
    q = s.quality
    text = ""
    if q.per_sample is not None:
        text = f", {q.per_sample.within}/{q.per_sample.samples} calibration images within their bound ({q.per_sample.required} required)"
    if q.predicted_psnr is not None:
        p = q.predicted_psnr
        text += f", predicted per-image PSNR median {p.median_db:.1f} dB, 10th percentile {p.p10_db:.1f} dB"
        if p.calibrated_on:
            text += f" for new images (read at {p.calibrated_on} scores of the calibration's picks on fresh images)"
        if p.measured_on:
            text += (f" (this plan measured {p.measured_median_db:.1f} / {p.measured_p10_db:.1f} dB on the profile's "
                     f"{p.measured_on} calibration images when it was calibrated"
                     f"{', and the prediction uses its own residuals' if p.residuals_of == 'this plan' else ''})")
        if q.predicted_psnr_db is not None and p.level is not None:
            text += f" (the worst image required: >= {q.predicted_psnr_db:.1f} dB with probability {p.level:g})"
    elif q.predicted_psnr_db is not None:
        text += f", predicted PSNR {q.predicted_psnr_db:.1f} dB for the worst image required within its bound"
    elif q.predicted == 0:
        text += ", lossless (zero predicted deviation)"
    return text


def emit(result, profile: Profile) -> None:
    """Warnings and the summary line on stderr, then the YAML on stdout (only after success).

    The prior warning is one line, and only where a prior prices this plan: any prior part but comm,
    the exchange entry for the plan's world size where it came from a preset, the CFG pair swap
    where the plan splits halves and that came from a preset (``Profile.prior_parts_for``)."""
    s = result.schedule
    prior = profile.prior_parts_for(s.world_size, uses_split=s.uses_split)
    if prior:
        print(f"parastep plan: warning: priced by priors, not measurements: {', '.join(prior)}; "
              "profile on the target hardware for a measured plan", file=sys.stderr)
    for w in result.warnings:
        print(f"parastep: warning: {w}", file=sys.stderr)
    text = dump_schedule(s)
    # a plan the solver did not prove optimal is not called optimal (the warning above says why)
    kind = "best found (not proven optimal)" if s.policy == "optimal" and s.solver.status != "OPTIMAL" else s.policy
    print(f"parastep plan: {kind} plan, {len(s.windows)} windows on {s.world_size} GPU(s), predicted {s.latency.predicted_s:.4g} s "
          f"vs sequential {s.latency.sequential_s:.4g} s: speedup {s.latency.speedup:.3f}x, deviation {s.quality.predicted:.4g} "
          f"(budget {s.quality.budget:.4g}{_per_image(s)}); solver {s.solver.name} {s.solver.status} in {s.solver.wall_s:.3f} s", file=sys.stderr)
    sys.stdout.write(text)
    sys.stdout.flush()

"""Planning wall time. Part 1, one budget (priors): CP-SAT vs the DP oracle, median of 5, T in
{50, 200, 1000} x G in {2, 8, 64}. Part 2, per-image statements (the DP cannot state them):
``--solver auto`` (the Lagrangian branch and bound) against ``--solver cp-sat`` on the shipped
digits profile (20 calibration samples) at G in {2, 4, 8}, default and ``--min-psnr 35``, and on
synthetic 20-sample profiles at T = 200, G = 8.

    nice python benchmarks/bench_planner.py [--repeats 5] [--time-limit 10] [--workers 2]

Profile: the shipped sdxl prior re-derived for T steps (``profiles.priors.derive_for_steps``), or
``tests/strategies.make_profile`` when that is not available. Budget: the default (the fixed plan's
own error). Max window: the CLI default, min(G, profile max window). Wall time is the whole
``plan_schedule`` call (problem build, solve, decode, both checks). A CP-SAT run that stops at the
time limit is reported with its status, objective and bound and is not repeated.
Writes the markdown table to stdout and to ``benchmarks/results/planner.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

from parastep.planner.options import SolverOptions
from parastep.planner.plan import plan_schedule

HERE = Path(__file__).resolve().parent


def _profile(T: int):
    try:
        from parastep.profiles.io import resolve_profile
        from parastep.profiles.priors import derive_for_steps

        prof, sha = resolve_profile("sdxl")
        return derive_for_steps(prof, num_steps=T, max_window=prof.max_window), sha, "sdxl prior (derive_for_steps)"
    except Exception:  # noqa: BLE001 - fall back to the synthetic profile
        sys.path.insert(0, str(HERE.parent / "tests"))
        from strategies import make_profile

        return make_profile(num_steps=T, max_window=16, seed=T), "0" * 64, "tests/strategies.make_profile"


def _time(profile, sha, *, G, solver, options, repeats):
    walls, last = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        last = plan_schedule(profile, profile_sha256=sha, world_size=G, solver=solver, options=options).schedule
        walls.append(time.perf_counter() - t0)
        if last.solver.status != "OPTIMAL":
            break
    return statistics.median(walls), len(walls), last


def per_sample_rows(options) -> list[str]:
    from parastep.profiles.io import resolve_profile

    sys.path.insert(0, str(HERE.parent / "tests"))
    from strategies import make_profile

    digits, dsha = resolve_profile("digits")
    cases = [(digits, dsha, "digits (shipped)", G, stmt) for G in (2, 4, 8) for stmt in ("default", "min-psnr 35")]
    for seed in (200, 201, 202):
        synth = make_profile(num_steps=200, max_window=8, seed=seed, samples=20)
        cases += [(synth, "0" * 64, f"synthetic (make_profile samples=20 seed={seed})", 8, "default")]
    out = []
    for prof, sha, name, G, stmt in cases:
        kw = {}
        if stmt.startswith("min-psnr"):
            if prof.calibration is None:
                continue
            kw = {"budget": prof.calibration.at(G).deviation_for_psnr(35.0), "coverage": 0.9, "min_psnr_db": 35.0}
        cells = []
        for solver in ("auto", "cp-sat"):
            t0 = time.perf_counter()
            s = plan_schedule(prof, profile_sha256=sha, world_size=G, solver=solver, options=options, **kw).schedule
            wall = time.perf_counter() - t0
            gap = (s.solver.objective - s.solver.bound) / max(1, s.solver.objective) * 100 if s.solver.bound is not None else float("nan")
            cells.append(f"{s.solver.name} | {wall:.2f} | {s.solver.status} | {s.solver.objective} | {s.solver.bound} | {gap:.2f}")
        row = f"| {name} | {prof.num_steps} | {G} | {stmt} | " + " | ".join(cells) + f" | {s.latency.speedup:.3f} |"
        print(row, file=sys.stderr, flush=True)
        out.append(row)
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--time-limit", type=float, default=10.0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--steps", type=int, nargs="*", default=[50, 200, 1000])
    ap.add_argument("--gpus", type=int, nargs="*", default=[2, 8, 64])
    ap.add_argument("--per-sample", action=argparse.BooleanOptionalAction, default=True)
    args = ap.parse_args()
    options = SolverOptions(time_limit_s=args.time_limit, workers=args.workers, seed=0)
    rows = []
    source = ""
    for T in args.steps:
        profile, sha, source = _profile(T)
        for G in args.gpus:
            cs_wall, cs_n, cs = _time(profile, sha, G=G, solver="cp-sat", options=options, repeats=args.repeats)
            dp_wall, dp_n, dp = _time(profile, sha, G=G, solver="dp", options=options, repeats=args.repeats)
            gap = (cs.solver.objective - cs.solver.bound) / max(1, cs.solver.objective) * 100
            row = (f"| {T} | {G} | {cs.max_window} | {cs_wall:.3f} (n={cs_n}) | {cs.solver.status} | {cs.solver.objective} | "
                   f"{cs.solver.bound} | {gap:.3f} | {dp_wall:.3f} (n={dp_n}) | {dp.solver.objective} | "
                   f"{'yes' if cs.solver.objective == dp.solver.objective else 'no'} | {dp.latency.speedup:.3f} |")
            print(row, file=sys.stderr, flush=True)
            rows.append(row)
    sample_rows = per_sample_rows(options) if args.per_sample else []
    head = [
        "# Planner benchmark",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores (shared), Python {platform.python_version()}; "
        f"CP-SAT workers={args.workers}, time limit {args.time_limit:g} s; profile: {source}; budget: the fixed plan's error; "
        f"wall = whole plan_schedule call, median of up to {args.repeats} (a CP-SAT run that is not OPTIMAL is not repeated).",
        "Objective and bound in latency units (microseconds). gap = (objective - bound) / objective.",
        "",
        "| T | G | J | CP-SAT wall s | status | objective | bound | gap % | DP wall s | DP objective | same optimum | speedup |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    tail = ["", "## Per-image statements (20 calibration samples): --solver auto (the branch and bound, then CP-SAT "
            "from its plan if it has not proven it after half the limit) vs --solver cp-sat", "",
            "| profile | T | G | statement | auto: solver | wall s | status | objective | bound | gap % | "
            "cp-sat: solver | wall s | status | objective | bound | gap % | speedup (cp-sat plan) |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"] + sample_rows if sample_rows else []
    text = "\n".join(head + rows + tail) + "\n"
    sys.stdout.write(text)
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "planner.md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""How cautious the per-image quality model is on the plans the optimizer picks, per world size (digits).

Plans the statements the correction loop plans (``correct.statements_for``: the fixed plan, the default plan, ``--min-psnr DB
--coverage 0.9`` for DB = 25 .. 45) at G = 2, 4, 8, with and without CFG split, runs each distinct
plan ONCE on the profile's own calibration images (one process, ``run_schedule_local``) and
compares each image's measured PSNR with its calibrated prediction: the *slack*
``measured - predicted`` in dB (>= 0: the model was cautious for that image; < 0: optimistic).

The tables are summed over a plan's windows (a plan's error for image n is ``sum_w e_w[n]``). The
same runs also score what-if compositions ``(sum_w e_w[n] ** p) ** (1 / p)`` for a few exponents p
(p = 1 is the shipped model): a composition whose median slack is the same at every G would price
plans of many small windows (G = 2) and of few large ones (G = 8) alike. Only a what-if: the tables
and their corrections were made for p = 1, and an exponent that fits the median also moves the
images the corrections had made exact.

Also reports, for the windows of one plan per G, each table entry over the same window run alone
(every other step exact): > 1 where the corrections' spreading step raised an entry above what
the window does alone.

    python benchmarks/bench_plan_caution.py [--profile digits] [--out benchmarks/results/plan_caution.md]

Cost on the 2-core CPU: about 50 plan runs of 20 images (~4 s each, one thread) plus the alone runs.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from pathlib import Path

import torch

EXPONENTS = (1.0, 1.25, 1.5, 2.0)
MIN_PSNR_DBS = (25.0, 27.5, 30.0, 32.5, 35.0, 37.5, 40.0, 42.5, 45.0)


def composed(entries_per_window, p: float) -> float:
    """A plan's error for one image from its windows' entries, composed with exponent ``p``."""
    s = math.fsum(e ** p for e in entries_per_window)
    return s ** (1.0 / p) if s > 0 else 0.0


def main(argv=None) -> int:
    from parastep.executor.evaluate import PSNR_CAP_DB, psnr_db_per_sample, quantile, run_schedule_local
    from parastep.executor.registry import load_pipeline
    from parastep.planner.options import SolverOptions
    from parastep.planner.plan import plan_schedule, recompute
    from parastep.profiler.audit import measure_window, window_keys
    from parastep.profiler.correct import cfg_split_settings, statements_for
    from parastep.profiler.trajectory import record_reference
    from parastep.profiles.io import resolve_profile

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="digits")
    ap.add_argument("--gpus", type=int, nargs="+", default=[2, 4, 8])
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "plan_caution.md")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    profile, sha = resolve_profile(args.profile)
    cal, oe = profile.calibration, profile.output_errors
    prompts, seeds = [s.prompt for s in oe.samples], [s.seed for s in oe.samples]
    pipe = load_pipeline(profile.model)
    pipe.set_progress_bar_config(disable=True)
    kw = {"guidance_scale": profile.guidance_scale}
    T = profile.num_steps
    ref = run_schedule_local(pipe, None, num_steps=T, prompts=prompts, seeds=seeds, call_kwargs=kw)
    options = SolverOptions(workers=1, seed=0, deterministic=True, time_limit_s=10.0)
    splits = cfg_split_settings(profile)

    runs = []            # (G, split, statement, windows' per-sample entries, measured per image, keys)
    seen = set()
    for req in statements_for(profile, world_sizes=args.gpus, min_psnr_dbs=MIN_PSNR_DBS):
        G, split = req["world_size"], "auto" if req.get("allow_split", True) else "off"
        name = req.get("policy") or (f"--min-psnr {req['min_psnr_db']:g}" if "min_psnr_db" in req else "default")
        s = plan_schedule(profile, profile_sha256=sha, options=options, **req).schedule
        keys = tuple(window_keys(s))
        if not keys or (G, keys) in seen:
            continue
        seen.add((G, keys))
        _, _, errs = recompute(s, profile)
        errs = [e for e in errs if any(x > 0 for x in e)]
        out = run_schedule_local(pipe, s, num_steps=T, prompts=prompts, seeds=seeds, call_kwargs=kw)
        runs.append((G, split, name, errs, psnr_db_per_sample(out, ref), keys))
        print(f"G={G} split={split} {name}: {len(keys)} windows, {time.perf_counter() - t0:.0f} s", flush=True)

    def slack(run, p):
        _, _, _, errs, measured, _ = run
        out = []
        for n, m in enumerate(measured):
            e = composed([w[n] for w in errs], p)
            if e > 0 and m < PSNR_CAP_DB:
                out.append(m - cal.at(run[0]).psnr_db(e))
        return out

    lines = ["# How cautious the quality model is on the optimizer's plans, per world size", "",
             f"Profile `{profile.name}` (sha256 {sha[:12]}), its {len(prompts)} calibration images; "
             f"{len(runs)} distinct plans (fixed, default, `--min-psnr` {MIN_PSNR_DBS[0]:g}-{MIN_PSNR_DBS[-1]:g} dB, "
             f"CFG split {'/'.join(splits)}), each run once. Slack = measured - predicted PSNR per image (dB).", "",
             "| composition exponent p | G | images | median slack | p10 slack | min slack | below prediction |",
             "|---|---|---|---|---|---|---|"]
    for p in EXPONENTS:
        for G in args.gpus:
            v = [x for r in runs if r[0] == G for x in slack(r, p)]
            if v:
                lines.append(f"| {p:g}{' (shipped)' if p == 1 else ''} | {G} | {len(v)} | {statistics.median(v):+.2f} | "
                             f"{quantile(v, 0.1):+.2f} | {min(v):+.2f} | {sum(x < 0 for x in v)} |")
    lines += ["", "Per plan (shipped composition): median and min slack over the images.", "",
              "| G | split | statement | windows | median slack | min slack |", "|---|---|---|---|---|---|"]
    for r in runs:
        v = slack(r, 1.0)
        lines.append(f"| {r[0]} | {r[1]} | {r[2]} | {len(r[5])} | {statistics.median(v):+.2f} | {min(v):+.2f} |")

    # entries vs the window run alone, for the windows of each G's --min-psnr 40 plan (or its last plan)
    traj = record_reference(pipe, prompts=prompts, seeds=seeds, num_steps=T, call_kwargs=kw)
    lines += ["", "Table entry / the window run alone (every other step exact), per image, for the windows of one plan per G.", "",
              "| G | plan | kind | predictor | start | size | median | max |", "|---|---|---|---|---|---|---|---|"]
    for G in args.gpus:
        mine = [r for r in runs if r[0] == G and r[1] == splits[0]]
        pick = next((r for r in mine if r[2] == "--min-psnr 40"), mine[-1] if mine else None)
        if pick is None:
            continue
        for key in pick[5]:
            alone = measure_window(pipe, traj, key, prompts=prompts, seeds=seeds, num_steps=T, call_kwargs=kw)
            entry = profile.window_errors(key[0], start=key[2], size=key[3], predictor=key[1])
            ratio = [e / a for e, a in zip(entry, alone) if a > 0]
            if ratio:
                lines.append(f"| {G} | {pick[2]} | {key[0]} | {key[1]} | {key[2]} | {key[3]} | {statistics.median(ratio):.2f} | {max(ratio):.2f} |")
    lines += ["", f"Wall time {time.perf_counter() - t0:.0f} s (one thread).", ""]
    text = "\n".join(lines)
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Quality/latency frontier on the bundled ``digits`` model, scored per image on held-out seeds.

For G in {2, 4, 8}, every plan is run in one process (the executor's hooks; quality does not depend
on hardware) on held-out samples (classes 0-9 x seeds 5000.., none of the profile's), and scored
the way users judge images: per-image PSNR of the output vs the sequential output of the same seed,
aggregated as the **mean** and the **10th percentile** (p10) over images. Series:

- ``fixed``: the paper's hand plan, warm-up W = 1..15;
- ``default``: ``parastep plan`` with no budget (every calibration image no worse than under the
  fixed plan with the default warm-up);
- ``optimal``: per-image bounds (``--budget X --coverage 0.9``) spread log-uniformly around the
  fixed plans' per-image errors;
- ``min-psnr``: ``--min-psnr DB`` (coverage 0.9) for DB in 30..40, scored by the share of held-out
  images at or above DB and the p10 image's distance to DB.
- ``default-w``: ``parastep plan --warmup W`` for W = 1..15, the default plan against the fixed plan
  with that warm-up (every calibration image predicted no worse than under it, predicted no
  slower): the planner's own answer to "beat the paper's plan with W warm-up steps".
- ``split-default``, ``split-optimal``, ``split-min-psnr``: the same three with CFG split
  allowed (``--cfg-split auto``); the three above plan with ``--cfg-split off`` (the "before").
  Split plans are run as planned: the executor computes both CFG halves of a split offset in the one
  process, so their quality is what the ranks would produce.
- ``lossless``: ``--budget 0`` with CFG split (zero deviation allowed).

``--interconnect NAME`` prices every exchange (and the pair swap) with a preset instead of the
profile's own comm part, as ``parastep plan --interconnect`` does.

Checks, printed and written to ``frontier.md``:
- dominance: at every fixed point some optimal/default plan is at least as fast and no more than
  0.5 dB below on both mean and p10;
- the best optimal speedup at >= the fixed point's mean and p10, as a ratio to the fixed speedup;
- the default plan vs the fixed plan with the default warm-up (mean, p10, predicted speedup).

Speedups are the planner's predictions from the shipped profile: compute measured on this
machine's CPU (1 thread per rank), exchange among 2 ranks measured with gloo, among 3..8 ranks
from the ``nvlink`` preset (see the profile's provenance).

    python benchmarks/bench_frontier.py [--seeds 2] [--budgets 12] [--gpus 2 4 8] [--out benchmarks/results]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

import torch

HELD_OUT_SEED0 = 5000
MIN_PSNR_TARGETS = (30.0, 32.5, 35.0, 37.5, 40.0)
TOLERANCE_DB = 0.5
SERIES = ("fixed", "default", "default-w", "optimal", "min-psnr", "split-default", "split-optimal", "split-min-psnr", "lossless")
# the CFG-split goal at G = 8 (nvlink): predicted speedup >= 6 with held-out mean >= 35 dB and p10 >= 30 dB
GOAL_MEAN_DB, GOAL_P10_DB, GOAL_SPEEDUP = 35.0, 30.0, 6.0


def main(argv=None) -> int:
    from parastep.executor.evaluate import psnr_db_per_sample, quantile, run_schedule_local, samples_of
    from parastep.executor.registry import load_pipeline
    from parastep.planner.options import SolverOptions
    from parastep.planner.plan import plan_schedule
    from parastep.profiler.calibrate import predicted_per_sample
    from parastep.profiles.io import resolve_profile

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=2, help="held-out seeds per class")
    ap.add_argument("--budgets", type=int, default=12, help="per-image bounds per G for the optimal series")
    ap.add_argument("--gpus", type=int, nargs="+", default=[2, 4, 8])
    ap.add_argument("--profile", default=None, help="profile YAML (default: the shipped digits profile)")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    ap.add_argument("--series", nargs="+", default=list(SERIES),
                    help="series to (re)run; others are kept from an existing frontier.json in --out")
    ap.add_argument("--interconnect", default=None, help="price exchanges with this preset (e.g. nvlink)")
    ap.add_argument("--time-limit", type=float, default=10.0, help="CP-SAT time limit per plan (default: the CLI's 10 s)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)

    profile, sha = resolve_profile("digits", args.profile)
    if args.interconnect:
        from parastep.profiles.interconnects import with_interconnect

        profile = with_interconnect(profile, args.interconnect, world_size=max(args.gpus))
    pipe = load_pipeline("digits")
    pipe.set_progress_bar_config(disable=True)
    T = profile.num_steps
    prompts, seeds = samples_of([str(d) for d in range(10)], [HELD_OUT_SEED0 + k for k in range(args.seeds)])
    kw = {"guidance_scale": profile.guidance_scale}
    ref = run_schedule_local(pipe, None, num_steps=T, prompts=prompts, seeds=seeds, call_kwargs=kw)
    options = SolverOptions(workers=2, time_limit_s=args.time_limit)
    t_start = time.perf_counter()
    cache: dict = {}

    def measure(schedule) -> dict:
        key = tuple((w.kind, w.start, str(getattr(w, "placement", None)), str(getattr(w, "split", None)),
                     getattr(w, "predictor", None), getattr(w, "size", None)) for w in schedule.windows)
        if key not in cache:
            out = run_schedule_local(pipe, schedule, num_steps=T, prompts=prompts, seeds=seeds, call_kwargs=kw)
            cache[key] = psnr_db_per_sample(out, ref)
        psnr = cache[key]
        pred = predicted_per_sample(schedule, profile)
        return {"psnr_mean_db": statistics.fmean(psnr), "psnr_p10_db": quantile(psnr, 0.1), "psnr_min_db": min(psnr),
                "psnr_db": psnr, "speedup": schedule.latency.speedup, "windows": len(schedule.windows),
                "predicted_mean": statistics.fmean(pred), "solver": f"{schedule.solver.name} {schedule.solver.status}",
                "solver_wall_s": schedule.solver.wall_s, "plan": " ".join(_short(w, schedule) for w in schedule.windows)}

    rows = []
    old_json = args.out / "frontier.json"
    if set(args.series) != set(SERIES) and old_json.exists():
        rows = [r for r in json.loads(old_json.read_text())["rows"] if r["series"] not in args.series]

    def planned(G, J, *, split: bool, **kw):
        return plan_schedule(profile, profile_sha256=sha, world_size=G, max_window=J, options=options, allow_split=split, **kw).schedule

    for G in args.gpus:
        J = min(G, profile.max_window)
        fixed_median = []
        for W in range(1, 16):
            s = plan_schedule(profile, profile_sha256=sha, world_size=G, max_window=J, policy="fixed", warmup=W).schedule
            fixed_median.append(statistics.median(predicted_per_sample(s, profile)))
            if "fixed" in args.series:
                rows.append({"G": G, "series": "fixed", "param": W, **measure(s)})
            if "default-w" in args.series:
                rows.append({"G": G, "series": "default-w", "param": W, **measure(planned(G, J, split=False, warmup=W))})
        lo, hi = min(fixed_median) / 10, max(fixed_median) * 3
        for prefix, split in (("", False), ("split-", True)):
            if split and not profile.can_split:
                continue
            if prefix + "default" in args.series:
                rows.append({"G": G, "series": prefix + "default", "param": None, **measure(planned(G, J, split=split))})
            for k in range(args.budgets if prefix + "optimal" in args.series else 0):
                b = math.exp(math.log(lo) + (math.log(hi) - math.log(lo)) * k / max(1, args.budgets - 1))
                s = planned(G, J, split=split, budget=b, coverage=0.9)
                rows.append({"G": G, "series": prefix + "optimal", "param": b, **measure(s)})
            if profile.calibration is not None and prefix + "min-psnr" in args.series:
                for db in MIN_PSNR_TARGETS:
                    s = planned(G, J, split=split, budget=profile.calibration.at(G).deviation_for_psnr(db), coverage=0.9, min_psnr_db=db)
                    r = measure(s)
                    r["at_or_above"] = sum(1 for p in r["psnr_db"] if p >= db) / len(r["psnr_db"])
                    rows.append({"G": G, "series": prefix + "min-psnr", "param": db, **r})
        if "lossless" in args.series and profile.can_split:
            rows.append({"G": G, "series": "lossless", "param": 0.0, **measure(planned(G, J, split=True, budget=0.0))})
        print(f"G={G} done ({time.perf_counter() - t_start:.0f} s, {len(cache)} distinct plans run)", flush=True)

    rows.sort(key=lambda r: (r["G"], SERIES.index(r["series"])))
    checks = {G: check(rows, G) for G in args.gpus}
    (args.out / "frontier.json").write_text(json.dumps({"rows": rows, "checks": checks, "profile": profile.name,
                                                        "profile_sha256": sha, "held_out_images": len(prompts),
                                                        "interconnect": args.interconnect}, indent=1))
    _plot(rows, args.gpus, args.out / "frontier.png")
    _table(rows, checks, args, args.out / "frontier.md", images=len(prompts), profile=profile)
    print(json.dumps(checks, indent=1))
    return 0


def _short(w, schedule) -> str:
    bounds = dict(zip((id(x) for x in schedule.windows), schedule.window_bounds()))
    a, b = bounds[id(w)]
    tag = {"exact": "E", "parallel": "P", "reuse": "R"}[w.kind]
    pred = "" if w.kind == "exact" else ("l" if w.predictor == "linear" else "")
    split = "s" if getattr(w, "split", None) or (w.kind == "parallel" and w.has_split) else ""   # CFG split somewhere in the window
    return f"{tag}{b - a}{pred}{split}@{a}"


def check(rows, G: int) -> dict:
    """Dominance, speedup ratio at equal quality, default vs fixed (module docstring)."""
    planned = [r for r in rows if r["G"] == G and r["series"] in ("optimal", "default", "default-w", "min-psnr")]   # without split
    fixed = [r for r in rows if r["G"] == G and r["series"] == "fixed"]
    dominated, ratios = [], []
    for f in fixed:
        ok = any(o["speedup"] >= f["speedup"] - 1e-9 and o["psnr_mean_db"] >= f["psnr_mean_db"] - TOLERANCE_DB
                 and o["psnr_p10_db"] >= f["psnr_p10_db"] - TOLERANCE_DB for o in planned)
        dominated.append(ok)
        equal = [o["speedup"] for o in planned if o["psnr_mean_db"] >= f["psnr_mean_db"] and o["psnr_p10_db"] >= f["psnr_p10_db"]]
        ratios.append(max(equal) / f["speedup"] if equal else None)
    default = next(r for r in rows if r["G"] == G and r["series"] == "default")
    from parastep.planner.fixed import default_warmup

    W0 = default_warmup(50)
    f0 = next(r for r in fixed if r["param"] == W0)
    out = {
        "fixed_points_matched_within_0.5dB": f"{sum(dominated)}/{len(dominated)}",
        "unmatched_fixed_warmups": [f["param"] for f, d in zip(fixed, dominated) if not d],
        "speedup_ratio_at_equal_mean_and_p10": {"max": max((x for x in ratios if x), default=None),
                                                "median": statistics.median([x for x in ratios if x]) if any(ratios) else None},
        "default_vs_fixed": {"fixed_W": W0, "speedup": [default["speedup"], f0["speedup"]],
                             "mean_db": [default["psnr_mean_db"], f0["psnr_mean_db"]],
                             "p10_db": [default["psnr_p10_db"], f0["psnr_p10_db"]],
                             "holds": default["speedup"] > f0["speedup"] and default["psnr_mean_db"] >= f0["psnr_mean_db"]
                             and default["psnr_p10_db"] >= f0["psnr_p10_db"]},
    }
    split = [r for r in rows if r["G"] == G and r["series"].startswith("split-")]
    if split:
        good = [r for r in split if r["psnr_mean_db"] >= GOAL_MEAN_DB and r["psnr_p10_db"] >= GOAL_P10_DB]
        before = [r for r in planned if r["psnr_mean_db"] >= GOAL_MEAN_DB and r["psnr_p10_db"] >= GOAL_P10_DB]
        best = max(good, key=lambda r: r["speedup"], default=None)
        out["split_goal"] = {"mean_db_at_least": GOAL_MEAN_DB, "p10_db_at_least": GOAL_P10_DB,
                             "best_split_speedup": best["speedup"] if best else None,
                             "best_split_plan": best["plan"] if best else None,
                             "best_unsplit_speedup": max((r["speedup"] for r in before), default=None),
                             "goal_speedup": GOAL_SPEEDUP,
                             "holds": bool(best and best["speedup"] >= GOAL_SPEEDUP)}
    lossless = next((r for r in rows if r["G"] == G and r["series"] == "lossless"), None)
    if lossless:
        out["lossless"] = {"speedup": lossless["speedup"], "psnr_min_db": lossless["psnr_min_db"]}
    mp = [r for r in rows if r["G"] == G and r["series"] == "min-psnr"]
    if mp:
        out["min_psnr"] = [{"target_db": r["param"], "at_or_above": r["at_or_above"], "p10_db": r["psnr_p10_db"],
                            "p10_minus_target_db": r["psnr_p10_db"] - r["param"], "speedup": r["speedup"]} for r in mp]
    return out


def _plot(rows, gpus, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(gpus), figsize=(5 * len(gpus), 8.5), squeeze=False)
    style = {"fixed": ("tab:red", "^:"), "optimal": ("tab:blue", "o-"), "default": ("black", "*"), "default-w": ("tab:gray", "x"),
             "min-psnr": ("tab:green", "s"), "split-optimal": ("tab:purple", "o--"), "split-default": ("tab:purple", "*"),
             "split-min-psnr": ("tab:olive", "s"), "lossless": ("tab:cyan", "D")}
    for c, G in enumerate(gpus):
        for series, (color, fmt) in style.items():
            pts = sorted((r["speedup"], r["psnr_mean_db"], r["psnr_p10_db"]) for r in rows if r["G"] == G and r["series"] == series)
            if not pts:
                continue
            xs, ms, ps = zip(*pts)
            size = 12 if series.endswith("default") else 4
            axes[0][c].plot(xs, ms, fmt, color=color, label=series, ms=size)
            axes[1][c].plot(xs, ps, fmt, color=color, label=series, ms=size)
        axes[0][c].set_title(f"digits, G={G} (held-out images)")
        axes[0][c].set_ylabel("mean per-image PSNR vs sequential (dB)")
        axes[1][c].set_ylabel("10th-percentile per-image PSNR (dB)")
        for r in (0, 1):
            axes[r][c].set_xlabel("predicted speedup")
            axes[r][c].grid(alpha=0.3)
            axes[r][c].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _table(rows, checks, args, path: Path, *, images: int, profile) -> None:
    lines = ["# digits quality/latency frontier (per image, held-out seeds)", "",
             f"{images} held-out images (10 classes x {args.seeds} seeds from {HELD_OUT_SEED0}), {profile.num_steps} DDIM steps, "
             f"profile `{profile.name}`; every schedule run in one process. Speedup: the planner's prediction (compute "
             "measured on this CPU, 1 thread per rank; exchange: "
             + (f"the `{args.interconnect}` preset for every rank count and the pair swap)." if args.interconnect
                else "see the profile's provenance).")
             + " Plan notation: E exact, P parallel, R reuse, size, `l` linear predictor, `s` CFG split, `@` start step.", "",
             "| G | series | W / bound / target | predicted speedup | mean PSNR (dB) | p10 PSNR (dB) | min PSNR (dB) | plan |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        p = r["param"]
        param = f"W={p}" if r["series"] in ("fixed", "default-w") else ("" if p is None else (f"{p:g} dB" if r["series"].endswith("min-psnr") else f"{p:.3g}"))
        lines.append(f"| {r['G']} | {r['series']} | {param} | {r['speedup']:.3f} | {r['psnr_mean_db']:.2f} | {r['psnr_p10_db']:.2f} | "
                     f"{r['psnr_min_db']:.2f} | `{r['plan']}` |")
    lines += ["", "## Checks", "", "```json", json.dumps(checks, indent=1), "```"]
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    raise SystemExit(main())

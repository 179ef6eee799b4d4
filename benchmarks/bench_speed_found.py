"""Speed found by the calibration: ``--min-psnr X --coverage 0.9`` at G = 8 under two profiles of the
same model, scored on held-out images, and the frontier of both side by side.

For each profile (``--old``: a profile file or ``REV:PATH`` read with ``git show``, default the
digits profile before the calibration on the optimizer's picks; ``--new``: default the shipped
one), every target X in ``--targets`` is planned at ``--gpus`` with ``--interconnect`` (default
nvlink: the issue's setting) and run in ONE process (quality does not depend on hardware) on classes
0-9 x ``--seeds`` seeds from 6000 (none of either profile's), scored per image against the
sequential output of the same seed. Speedups are each profile's own predictions.

Writes ``--out`` (markdown: per profile and target, the predicted speedup, the held-out p10 and
the share at or above X), ``--json`` and ``--plot`` (predicted speedup against the held-out p10
image, both profiles, with the X = p10 targets marked).

    python benchmarks/bench_speed_found.py [--old c42c64c:profiles/digits.yaml] [--new digits] [--gpus 8]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"
COVERAGE = 0.9


def load(spec: str):
    from parastep.profiles.io import resolve_profile

    if ":" in spec and not Path(spec).exists():
        rev, path = spec.split(":", 1)
        text = subprocess.run(["git", "show", f"{rev}:{path}"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).resolve().parents[1]).stdout
        tmp = Path(tempfile.mkdtemp()) / Path(path).name
        tmp.write_text(text)
        spec = str(tmp)
    if spec.endswith((".yaml", ".yml")) or Path(spec).is_file():
        return resolve_profile(None, spec)
    return resolve_profile(spec)


def plot(rows: list[dict], path: Path, *, world_size: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.0, 4.6))
    for label, marker, color in (("old", "s", "tab:gray"), ("new", "o", "tab:blue")):
        got = [r for r in rows if r["which"] == label]
        ax.plot([r["p10_db"] for r in got], [r["speedup"] for r in got], marker=marker, color=color, lw=1,
                label=f"{label}: {got[0]['profile']}" if got else label)
        for r in got:
            ok = r["share"] >= 0.85
            ax.annotate(f"{r['target_db']:g}{'' if ok else ' (miss)'}", (r["p10_db"], r["speedup"]), fontsize=7,
                        color=color if ok else "tab:red", xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("held-out 10th-percentile image, dB vs sequential (labels: --min-psnr X)")
    ax.set_ylabel("predicted speedup")
    ax.set_title(f"--min-psnr X --coverage 0.9 at G = {world_size}: old vs new calibration")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None) -> int:
    from parastep.executor.evaluate import psnr_db_per_sample, quantile, run_schedule_local, samples_of
    from parastep.executor.registry import load_pipeline
    from parastep.planner.options import SolverOptions
    from parastep.planner.plan import plan_schedule
    from parastep.profiles.interconnects import with_interconnect

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old", default="c42c64c:profiles/digits.yaml")
    ap.add_argument("--new", default="digits")
    ap.add_argument("--gpus", type=int, default=8)
    ap.add_argument("--interconnect", default="nvlink")
    ap.add_argument("--targets", type=float, nargs="+", default=[25.0, 27.5, 30.0, 32.5, 35.0, 37.5, 40.0])
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--out", type=Path, default=RESULTS / "speed-found.md")
    ap.add_argument("--json", type=Path, default=RESULTS / "speed-found.json")
    ap.add_argument("--plot", type=Path, default=RESULTS / "speed-found.png")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    G = args.gpus
    profiles = {"old": load(args.old), "new": load(args.new)}
    model = profiles["new"][0].model
    pipe = load_pipeline(model)
    pipe.set_progress_bar_config(disable=True)
    T = profiles["new"][0].num_steps
    if profiles["old"][0].num_steps != T:
        raise SystemExit("the two profiles plan different step counts; compare profiles of one configuration")
    kw = {"guidance_scale": profiles["new"][0].guidance_scale}
    prompts, seeds = samples_of([str(d) for d in range(10)], [6000 + k for k in range(args.seeds)])
    ref = run_schedule_local(pipe, None, num_steps=T, prompts=prompts, seeds=seeds, call_kwargs=kw)
    options = SolverOptions(workers=1, seed=0, deterministic=True, time_limit_s=10.0)
    rows = []
    for which, (prof, sha) in profiles.items():
        prof = with_interconnect(prof, args.interconnect, world_size=G) if args.interconnect else prof
        for x in args.targets:
            s = plan_schedule(prof, profile_sha256=sha, world_size=G, budget=prof.calibration.at(G).deviation_for_psnr(x),
                              coverage=COVERAGE, min_psnr_db=x, options=options).schedule
            m = psnr_db_per_sample(run_schedule_local(pipe, s, num_steps=T, prompts=prompts, seeds=seeds, call_kwargs=kw), ref)
            rows.append({"which": which, "profile": f"sha256 {sha[:12]}", "target_db": x, "speedup": s.latency.speedup,
                         "p10_db": quantile(m, 0.1), "median_db": quantile(m, 0.5), "share": sum(v >= x for v in m) / len(m),
                         "psnr_db": [float(v) for v in m]})
            r = rows[-1]
            print(f"{which} --min-psnr {x:g}: {r['speedup']:.2f}x, p10 {r['p10_db']:.1f} dB, {r['share']:.0%} >= X", flush=True)
    best = {w: max((r for r in rows if r["which"] == w and r["share"] >= 0.85 and r["target_db"] == 30.0),
                   key=lambda r: r["speedup"], default=None) for w in profiles}
    lines = [f"# Speed found at G = {G} ({args.interconnect or 'profile'} exchange costs), old vs new calibration", "",
             f"Model `{model}`, {len(prompts)} held-out images (classes 0-9 x seeds 6000-{6000 + args.seeds - 1}); old profile "
             f"`{args.old}` ({profiles['old'][1][:12]}), new `{args.new}` ({profiles['new'][1][:12]}); each plan run in one "
             "process, scored per image against the sequential output of the same seed; speedups are each profile's predictions.", "",
             "| profile | --min-psnr X | predicted speedup | held-out p10 dB | median dB | share >= X |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['which']} | {r['target_db']:g} | {r['speedup']:.2f}x | {r['p10_db']:.1f} | {r['median_db']:.1f} | {r['share']:.0%} |"
              for r in rows]
    for w, r in best.items():
        lines += ["", f"{w}: `--min-psnr 30` " + (f"{r['speedup']:.2f}x with {r['share']:.0%} of images at or above 30 dB"
                                                   if r else "not covered at 85 %")]
    lines += ["", f"Wall time {time.perf_counter() - t0:.0f} s (one thread).", ""]
    args.out.write_text("\n".join(lines))
    args.json.write_text(json.dumps({"world_size": G, "interconnect": args.interconnect, "rows": rows}, indent=1) + "\n")
    plot(rows, args.plot, world_size=G)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

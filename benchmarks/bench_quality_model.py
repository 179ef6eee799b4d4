"""Accuracy of the quality model per window, against each window run alone end to end (digits).

For a random sample of candidate windows (kind, predictor, start, size) of the shipped digits
profile, the *direct* measurement runs the window alone (every other step exact) through the real
pipeline to the output and takes the per-sample output RMS vs the sequential output, on the
profile's own calibration samples: what the profile's ``output_errors`` claim to be. Compared:

- ``output_errors`` (the shipped model: the window's end-boundary deviation exact, the rest of the
  run linearised along the top few directions per boundary; ``rank (T-1)(T-2)/2`` forwards);
- the previous model: ``sum_j gain[s+j] * deviation[s][j]`` (mean tables x random-direction gain),
  which has no per-sample values (compared with the per-sample mean).

Reports the median and 90th percentile of |model / direct - 1| over windows x samples, and writes
``benchmarks/results/quality_model.md``.

    python benchmarks/bench_quality_model.py [--windows 40] [--seed 0]
"""

from __future__ import annotations

import argparse
import random
import statistics
from pathlib import Path

import torch


def main(argv=None) -> int:
    from parastep.executor.registry import load_pipeline
    from parastep.profiler.deviation import stand_in, window_predictions
    from parastep.profiler.propagation import perturbed_output
    from parastep.profiler.trajectory import record_reference
    from parastep.profiles.io import resolve_profile

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--windows", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "quality_model.md")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    profile, _ = resolve_profile("digits")
    oe = profile.output_errors
    prompts, seeds = [s.prompt for s in oe.samples], [s.seed for s in oe.samples]
    pipe = load_pipeline("digits")
    pipe.set_progress_bar_config(disable=True)
    T, J = profile.num_steps, profile.max_window
    kw = {"guidance_scale": profile.guidance_scale}
    traj = record_reference(pipe, prompts=prompts, seeds=seeds, num_steps=T, call_kwargs=kw)
    rng = random.Random(args.seed)
    cands = [(k, p, s, w) for k in ("parallel", "reuse") for p in ("last", "linear") for s in range(1 if p == "last" else 2, T)
             for w in range(2 if k == "parallel" else 1, min(J, T - s) + 1) if s + w < T]
    picked = rng.sample(cands, min(args.windows, len(cands)))
    new_rel, old_rel, forwards = [], [], 0
    rows = []
    for kind, pred, s, w in picked:
        if kind == "parallel":
            _, ehat, n = window_predictions(pipe, traj, prompts=prompts, seeds=seeds, num_steps=T, call_kwargs=kw,
                                            start=s, size=w, predictor=pred)
            forwards += n
            outs = [traj.e[s]] + list(ehat[1:])
        else:
            outs = [stand_in(traj, predictor=pred, start=s, k=j) for j in range(w)]
        out, n = perturbed_output(pipe, traj, prompts=prompts, seeds=seeds, num_steps=T, call_kwargs=kw, step=s + w - 1,
                                  direction=None, outputs={s + j: e for j, e in enumerate(outs)})
        forwards += n
        direct = (out - traj.x[T]).reshape(len(prompts), -1).double().pow(2).mean(1).sqrt().tolist()
        model = profile.window_errors(kind, start=s, size=w, predictor=pred)
        old = profile.window_deviation(kind, start=s, size=w, predictor=pred)
        rel = [abs(m / d - 1) for m, d in zip(model, direct) if d > 0]
        new_rel += rel
        old_rel.append(abs(old / statistics.fmean(direct) - 1))
        rows.append(f"| {kind} | {pred} | {s} | {w} | {statistics.fmean(direct):.4g} | {statistics.fmean(model):.4g} | "
                    f"{old:.4g} | {statistics.median(rel):.3f} |")

    def q(v, x):
        v = sorted(v)
        return v[min(len(v) - 1, int(x * len(v)))]

    text = "\n".join([
        "# Quality model accuracy per window (digits, calibration samples)", "",
        f"{len(picked)} random candidate windows of the shipped profile ({profile.name}), each run alone end to end "
        f"({forwards} forwards); 'direct' = per-sample output RMS (latent units) vs the sequential output.", "",
        "| model | windows x samples | median abs rel error | 90th pct abs rel error |", "|---|---|---|---|",
        f"| output_errors (shipped: exact window, linearised rest, rank {oe.rank}) | {len(new_rel)} | {q(new_rel, 0.5):.3f} | {q(new_rel, 0.9):.3f} |",
        f"| previous: gain x mean deviation (vs per-sample mean) | {len(old_rel)} | {q(old_rel, 0.5):.3f} | {q(old_rel, 0.9):.3f} |",
        "", "| kind | predictor | start | size | direct mean | model mean | previous | median rel error |",
        "|---|---|---|---|---|---|---|---|", *rows, ""])
    args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

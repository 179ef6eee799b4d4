"""Predicted vs measured speedup of exact, CFG-split and BatchStep plans on the bundled digits model, G = 1 and 2.

For each configuration: ``parastep plan --model digits --gpus G ...`` (the predicted speedup is the
schedule's ``latency.speedup``), then ``parastep exec SCHED --reference --repeats R`` (the median of R
timed runs of the schedule and of the plain pipeline, interleaved, one thread per rank; ``exec``'s own
report) and, for the quality, ``parastep evaluate SCHED`` on held-out seeds (seeds 5000.. and the
classes 0-9, which no profile saw): the 10th-percentile and the worst image's PSNR vs the sequential
output of the same seed. Writes ``benchmarks/results/batchstep.md`` and ``.json``.

Run:  python benchmarks/bench_batchstep.py [--repeats 5] [--seeds 2] [--only NAME ...]
(about 4 minutes on this 2-core machine with the defaults).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results"

# name -> (gpus, extra plan arguments)
CONFIGS: dict[str, tuple[int, list[str]]] = {
    "g1-exact": (1, ["--budget", "0"]),
    "g1-psnr35": (1, ["--min-psnr", "35"]),
    "g1-psnr35-nobatch": (1, ["--min-psnr", "35", "--batch", "off"]),
    "g1-fixed-batch": (1, ["--policy", "fixed-batch"]),
    "g2-lossless-split": (2, ["--budget", "0"]),
    "g2-hand-split": (2, ["--budget", "0", "--cfg-split", "off"]),     # then every step split by hand: split_every_step
    "g2-lossless-nosplit": (2, ["--budget", "0", "--cfg-split", "off"]),
    "g2-default": (2, []),
    "g2-default-j8": (2, ["--max-window", "8"]),
    "g2-psnr35": (2, ["--min-psnr", "35"]),
    "g2-psnr35-j8": (2, ["--min-psnr", "35", "--max-window", "8"]),
    "g2-psnr35-j8-nobatch": (2, ["--min-psnr", "35", "--max-window", "8", "--batch", "off"]),
}


def _parastep(*args: str, cwd: Path, stdout=None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "parastep.cli", *args]
    return subprocess.run(cmd, cwd=cwd, stdout=stdout if stdout is not None else subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, check=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def _windows(schedule: dict) -> str:
    kinds = {"exact": 0, "parallel": 0, "batched": 0, "split": 0, "reuse": 0}
    for w in schedule["windows"]:
        if w["kind"] == "parallel":
            kinds["batched" if w.get("batch") else "split" if any(isinstance(e, list) for e in w["placement"]) else "parallel"] += 1
        else:
            kinds[w["kind"]] += 1
    return ", ".join(f"{n} {k}" for k, n in kinds.items() if n)


HAND = {"g2-hand-split"}    # configurations whose plan is rewritten by split_every_step


def split_every_step(path: Path) -> None:
    """Rewrite an all-exact 2-rank schedule so that every step splits its CFG batch over ranks
    (0, 1) (the plan the optimizer would pick if a swap were free), priced with the shipped profile
    by the planner's own ``recompute``: a split plan whose prediction can be checked even where the
    optimizer, pricing the swap right, no longer picks one."""
    from parastep.planner.plan import recompute
    from parastep.profiles.io import load_profile
    from parastep.schedules.check import implied_totals
    from parastep.schedules.io import dump_schedule, load_schedule
    from parastep.schedules.model import ExactWindow

    sched = load_schedule(path)
    if sched.world_size != 2 or any(w.kind != "exact" for w in sched.windows):
        raise SystemExit(f"split_every_step needs an all-exact 2-rank schedule, got {path}")
    profile, _ = load_profile(ROOT / "profiles" / "digits.yaml")
    windows = [ExactWindow(start=w.start, split=[[0, 1]]) for w in sched.windows]
    sched = sched.model_copy(update={"windows": windows, "policy": "fixed"})
    latency_s, _, _ = recompute(sched, profile)
    sched = sched.model_copy(update={
        "latency": sched.latency.model_copy(update={"predicted_s": latency_s, "speedup": sched.latency.sequential_s / latency_s}),
        "totals": implied_totals(windows, world_size=2, output_bytes=sched.output_bytes, raw_half_bytes=profile.raw_half_bytes)})
    path.write_text(dump_schedule(sched))


def run_one(name: str, gpus: int, extra: list[str], *, repeats: int, seeds: int, work: Path) -> dict:
    sched = work / f"{name}.yaml"
    with open(sched, "w") as fh:
        _parastep("plan", "--model", "digits", "--gpus", str(gpus), *extra, cwd=work, stdout=fh)
    if name in HAND:
        split_every_step(sched)
        _parastep("validate", str(sched), cwd=work)
    data = yaml.safe_load(sched.read_text())
    out = work / f"exec-{name}"
    _parastep("exec", str(sched), "--reference", "--repeats", str(repeats), "--out", str(out), cwd=work)
    report = json.loads((out / "report.json").read_text())
    ref = report["reference"]
    row = {"name": name, "gpus": gpus, "plan_args": extra, "windows": _windows(data),
           "predicted_speedup": data["latency"]["speedup"], "measured_speedup": ref["speedup"],
           "plan_runs_s": report["latency_spread_s"]["runs"], "sequential_runs_s": ref["latency_spread_s"]["runs"],
           "exec_psnr_db": ref.get("psnr_db"), "identical": ref.get("identical")}
    row["measured_over_predicted"] = row["measured_speedup"] / row["predicted_speedup"]
    runs = [s / p for s, p in zip(row["sequential_runs_s"], row["plan_runs_s"])]
    row["speedup_runs"] = runs
    if seeds and not ref.get("identical"):
        ev = work / f"eval-{name}"
        args = ["evaluate", str(sched), "--out", str(ev)]
        for s in range(5000, 5000 + seeds):
            args += ["--seed", str(s)]
        _parastep(*args, cwd=work)
        q = json.loads((ev / "quality.json").read_text())
        psnrs = [float(im["psnr_db"]) for im in q["images"]]
        target = _target(extra)
        row.update(heldout_images=len(psnrs), heldout_psnr_db_p10=q["psnr_db"]["p10"], heldout_psnr_db_min=q["psnr_db"]["min"],
                   heldout_psnr_db_mean=q["psnr_db"]["mean"], target_db=target,
                   heldout_coverage=None if target is None else sum(v >= target for v in psnrs) / len(psnrs))
    return row


def _target(extra: list[str]):
    return float(extra[extra.index("--min-psnr") + 1]) if "--min-psnr" in extra else None


def write(rows: list[dict], *, repeats: int, seeds: int) -> str:
    date = _dt.date.today().isoformat()
    lines = [f"# Predicted vs measured speedup: exact, CFG-split and BatchStep plans (digits, G = 1, 2)", "",
             f"`python benchmarks/bench_batchstep.py --repeats {repeats} --seeds {seeds}`, {date}, {platform.machine()} "
             f"with {os.cpu_count()} cores, no GPU, one thread per rank; `exec --reference --repeats {repeats}` (median "
             f"of the ratio of medians; runs interleaved), quality by `evaluate` on seeds 5000-{5000 + seeds - 1} x "
             f"classes 0-9 (held out; p10 as `evaluate` reports it).", "",
             "| plan | G | windows | predicted | measured (median) | speedup per run | measured / predicted | "
             "held-out p10 / min PSNR (dB) |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        q = (f"{r['heldout_psnr_db_p10']:.1f} / {r['heldout_psnr_db_min']:.1f}"
             + (f" (target {r['target_db']:g}: {r['heldout_coverage']:.0%} of {r['heldout_images']} at or above)"
                if r.get("target_db") else "")
             if "heldout_psnr_db_p10" in r else ("bit-identical" if r.get("identical") else "-"))
        runs = ", ".join(f"{x:.2f}" for x in r["speedup_runs"])
        label = ' '.join(r['plan_args']) or '(default)'
        label = f"`{label}`, then every step split by hand" if r["name"] in HAND else f"`{label}`"
        lines.append(f"| {label} | {r['gpus']} | {r['windows']} | {r['predicted_speedup']:.2f}x | "
                     f"{r['measured_speedup']:.2f}x | {runs} | {r['measured_over_predicted']:.2f} | {q} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seeds", type=int, default=2, help="held-out seeds for evaluate (x 10 classes); 0: skip")
    ap.add_argument("--only", nargs="*", choices=sorted(CONFIGS), help="run only these configurations")
    ap.add_argument("--out", default=str(OUT / "batchstep"), help="results prefix (.md and .json)")
    args = ap.parse_args()
    names = args.only or list(CONFIGS)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            gpus, extra = CONFIGS[name]
            row = run_one(name, gpus, extra, repeats=args.repeats, seeds=args.seeds, work=Path(tmp))
            rows.append(row)
            print(f"{name}: predicted {row['predicted_speedup']:.2f}x, measured {row['measured_speedup']:.2f}x "
                  f"({row['windows']})", file=sys.stderr, flush=True)
    text = write(rows, repeats=args.repeats, seeds=args.seeds)
    Path(args.out + ".md").write_text(text)
    Path(args.out + ".json").write_text(json.dumps(rows, indent=1) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

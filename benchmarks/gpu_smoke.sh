#!/usr/bin/env bash
# The executor's CUDA paths on one GPU, with the bundled digits model (no download):
#   1. `evaluate` of the default G = 2 and G = 8 plans on cuda and on cpu: the per-image PSNRs must agree;
#   2. `exec --reference` of 1-rank schedules on cuda (nccl world of one): all exact (must be
#      identical to the sequential run) and `--min-psnr 30` (reuse windows on one rank);
#   3. `exec` of a 2-rank schedule on a 1-GPU machine: must be refused in one line, exit 2.
# Plans are made beforehand where OR-Tools is installed (DIR/*.yaml, see `prepare` below), because
# the GPU machine of this workplace has no OR-Tools. Usage:
#   bash benchmarks/gpu_smoke.sh prepare DIR          # here: write the schedules
#   bash benchmarks/gpu_smoke.sh run DIR OUT [cuda]   # there: run them, results in OUT (a few files)
set -u
cmd=${1:?prepare|run}; dir=${2:?DIR}
P="${PARASTEP:-parastep}"
if [ "$cmd" = prepare ]; then
    mkdir -p "$dir"
    $P plan --model digits --gpus 2 > "$dir/g2.yaml" || exit 1
    $P plan --model digits --gpus 8 > "$dir/g8.yaml" || exit 1
    $P plan --model digits --gpus 1 > "$dir/g1_exact.yaml" || exit 1
    $P plan --model digits --gpus 1 --min-psnr 30 > "$dir/g1_reuse.yaml" || exit 1
    exit 0
fi
out=${3:?OUT}; dev=${4:-cuda}
mkdir -p "$out"; work=$(mktemp -d)
for g in g2 g8; do
    for d in "$dev" cpu; do
        $P evaluate "$dir/$g.yaml" --device "$d" --seed 1000 --seed 1001 --out "$work/ev_${g}_$d" > "$work/ev_${g}_$d.log" 2>&1
        echo "evaluate $g $d: exit $?"; tail -n 2 "$work/ev_${g}_$d.log"
    done
done
for s in g1_exact g1_reuse; do
    $P exec "$dir/$s.yaml" --device "$dev" --reference --out "$work/ex_$s" > "$work/ex_$s.log" 2>&1
    echo "exec $s $dev: exit $?"; tail -n 3 "$work/ex_$s.log"
    cp "$work/ex_$s/report.json" "$out/report_$s.json" 2>/dev/null
done
$P exec "$dir/g2.yaml" --device "$dev" --out "$work/ex_g2" > "$work/ex_g2.log" 2>&1
echo "exec g2 on one $dev device: exit $? (want 2 on a 1-GPU machine)"; cat "$work/ex_g2.log" | tail -n 3
python3 - "$work" "$out" "$dev" <<'PY'
import json, sys
from pathlib import Path
work, out, dev = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
summary = {}
for g in ("g2", "g8"):
    runs = {}
    for d in (dev, "cpu"):
        f = work / f"ev_{g}_{d}" / "quality.json"
        runs[d] = json.loads(f.read_text()) if f.exists() else None
    a, b = runs[dev], runs["cpu"]
    if a and b:
        pa, pb = [i["psnr_db"] for i in a["images"]], [i["psnr_db"] for i in b["images"]]
        diff = max(abs(x - y) for x, y in zip(pa, pb))
        # the same seed must be the same image on both devices: the sequential outputs against each other
        import math
        import numpy as np
        from PIL import Image
        seq = sorted((work / f"ev_{g}_{dev}" / "sequential").glob("*.png"))
        cross = []
        for f in seq:
            x = np.asarray(Image.open(f), dtype=np.float64) / 255
            y = np.asarray(Image.open(work / f"ev_{g}_cpu" / "sequential" / f.name), dtype=np.float64) / 255
            mse = float(((x - y) ** 2).mean())
            cross.append(math.inf if mse == 0 else 10 * math.log10(1 / mse))
        summary[g] = {"images": len(pa), f"mean_psnr_db_{dev}": sum(pa) / len(pa), "mean_psnr_db_cpu": sum(pb) / len(pb),
                      "max_abs_psnr_diff_db": diff, f"sequential_{dev}_vs_cpu_min_psnr_db": min(cross, default=None),
                      f"sequential_{dev}_vs_cpu_psnr_db": cross}
        print(f"evaluate {g}: {len(pa)} images, mean PSNR {dev} {sum(pa) / len(pa):.2f} dB, cpu {sum(pb) / len(pb):.2f} dB, "
              f"largest per-image difference {diff:.3f} dB; sequential {dev} vs cpu, same seed: worst PSNR "
              f"{min(cross, default=float('nan')):.1f} dB over {len(cross)} 8-bit PNGs")
    else:
        summary[g] = {"error": "an evaluate run wrote no quality.json"}
(out / "summary.json").write_text(json.dumps(summary, indent=2))
PY

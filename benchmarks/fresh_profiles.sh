#!/usr/bin/env bash
# Configurations no profile was ever tuned on: the bundled digits weights saved under another
# scheduler and step count, profiled by a new user's plain command
#   parastep profile --model-path DIR --gpus 8 --interconnect nvlink --steps T --out P.yaml
# then checked on 100 held-out images (benchmarks/bench_heldout.py --profile P.yaml).
# Results: benchmarks/results/heldout-<name>.{md,json,png} and fresh-profiles.log.
# Usage: [FRESH_CONFIGS='NAME SCHEDULER STEPS;...'] benchmarks/fresh_profiles.sh [WORKDIR]   (about 10 min per configuration on 2 cores)
set -eu
repo=$(cd "$(dirname "$0")/.." && pwd)
work=${1:-$(mktemp -d)}
mkdir -p "$work"
log="$repo/benchmarks/results/fresh-profiles.log"
echo "# fresh profiles of untuned configurations, $(date -u +%Y-%m-%dT%H:%MZ), $(uname -m), $(nproc) cores" > "$log"
configs=${FRESH_CONFIGS:-"euler30 EulerDiscreteScheduler 30;dpmpp20 DPMSolverMultistepScheduler 20"}   # NAME SCHEDULER STEPS;...
IFS=';' read -ra cfgs <<< "$configs"
for cfg in "${cfgs[@]}"; do
  set -- $cfg; name=$1; sched=$2; steps=$3
  python - "$work/digits-$name" "$sched" <<'PY'
import sys, diffusers
from parastep.executor.registry import load_pipeline
pipe = load_pipeline("digits")
pipe.scheduler = getattr(diffusers, sys.argv[2]).from_config(pipe.scheduler.config)
pipe.save_pretrained(sys.argv[1])
PY
  cmd="parastep profile --model-path $work/digits-$name --gpus 8 --interconnect nvlink --steps $steps --out $work/digits-$name.yaml"
  echo "\$ $cmd    # digits weights, $sched, $steps steps" >> "$log"
  t0=$(date +%s)
  $cmd 2>&1 | tee -a "$log"
  echo "# $name: profile $(( $(date +%s) - t0 )) s wall" >> "$log"
  python "$repo/benchmarks/bench_heldout.py" --profile "$work/digits-$name.yaml" --seeds 10 --gpus 2 4 8 --targets 30 35 40 \
    --out "$repo/benchmarks/results/heldout-digits-$name.md" --json "$repo/benchmarks/results/heldout-digits-$name.json" \
    --plot "$repo/benchmarks/results/heldout-digits-$name.png" | tail -3 >> "$log"
done

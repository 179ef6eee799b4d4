#!/usr/bin/env bash
# Rebuild the shipped profiles from scratch with the documented command and nothing else:
#   parastep profile --model M --gpus 8 --interconnect nvlink --out profiles/M.yaml
# for the two bundled models (measured here: one thread, costs of 8 ranks from the nvlink preset
# beyond this machine's 2 local ranks), then profiles/sdxl.yaml from the digits one
# (python -m parastep.profiles.make_sdxl). Run it on an idle machine: the profile times compute
# and exchanges. Each command's progress, wall time and load average go to
# benchmarks/results/rebuild-profiles.log.   Usage: benchmarks/rebuild_profiles.sh [MODEL ...]
set -eu
repo=$(cd "$(dirname "$0")/.." && pwd)
log="$repo/benchmarks/results/rebuild-profiles.log"
models=${*:-"digits flowdigits"}
echo "# rebuild of the shipped profiles, $(date -u +%Y-%m-%dT%H:%MZ), $(uname -m), $(nproc) cores" > "$log"
for m in $models; do
  cmd="parastep profile --model $m --gpus 8 --interconnect nvlink --out $repo/profiles/$m.yaml"
  echo "\$ $cmd    # $(cut -d' ' -f1-3 /proc/loadavg) load before" >> "$log"
  t0=$(date +%s)
  $cmd 2>&1 | tee -a "$log"
  echo "# $m: $(( $(date +%s) - t0 )) s wall" >> "$log"
done
case " $models " in *" digits "*)
  python -m parastep.profiles.make_sdxl >> "$log" 2>&1
  echo "# profiles/sdxl.yaml regenerated from profiles/digits.yaml (python -m parastep.profiles.make_sdxl)" >> "$log";;
esac

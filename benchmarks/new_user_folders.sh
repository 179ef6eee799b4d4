#!/usr/bin/env bash
# A new user's path on every tiny folder of the README's compatibility table:
#   save the folder -> parastep profile --model-path DIR -> parastep plan --profile -> parastep exec --reference
# with only the flags the pipeline itself asks for (--class-label for DiT, --image/--strength for
# img2img, --num-frames for video). One line per folder: exit codes and the last line of each step.
# Usage: benchmarks/new_user_folders.sh [WORKDIR] [NAME ...]   (~40-90 s per folder on 2 cores)
set -u
repo=$(cd "$(dirname "$0")/.." && pwd)
work=${1:-$(mktemp -d)}; shift || true
names=${*:-"sd15 sdxl sd3 flux pixart-sigma pixart-alpha sd15-img2img ddpm ddim dit cogvideox latte"}
mkdir -p "$work" && cd "$work" || exit 2
python -c "from PIL import Image; import numpy as np; Image.fromarray((np.random.RandomState(0).rand(32, 32, 3) * 255).astype('uint8')).save('in.png')"
for name in $names; do
  rm -rf "$name".*
  python -c "import sys; sys.path.insert(0, '$repo/tests'); from tiny_pipelines import make_compat_pipeline as m; m('$name').save_pretrained('$name.dir')" 2>/dev/null
  extra=(); size=(--height 32 --width 32)
  case $name in dit) extra=(--class-label 1);; sd15-img2img) extra=(--image in.png --strength 0.5);; cogvideox|latte) extra=(--num-frames 2);; esac
  case $name in ddpm|ddim|dit|sd15-img2img|pixart-sigma|pixart-alpha|cogvideox) size=();; esac   # their own default size
  t0=$(date +%s)
  parastep profile --model-path "$name.dir" --gpus 2 --steps 4 --max-window 2 "${extra[@]}" "${size[@]}" --out "$name.yaml" > "$name.plog" 2>&1; a=$?
  parastep plan --profile "$name.yaml" --gpus 2 > "$name.sched" 2> "$name.planlog"; b=$?
  parastep exec "$name.sched" --reference --out "$name.out" "${extra[@]}" "${size[@]}" > "$name.elog" 2>&1; c=$?
  echo "$name: profile $a, plan $b, exec $c ($(( $(date +%s) - t0 )) s) | $(tail -1 "$name.elog")"
done

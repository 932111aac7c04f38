#!/bin/bash
# Time a reconstruction step before and after a change, in one sitting on one host:
#   bash benchmarks/speed_before_after.sh <before-revision> <out-folder>
# runs benchmarks/speed.py from a git worktree of <before-revision> and from this working tree,
# interleaved and one at a time (nothing else should run), on ResNet-20 (twice), the embedded
# MobileNetV2, and torchvision's ResNet-18 and MobileNetV2 on random 224-pixel images. The
# working tree is timed twice a model: as speed.py's Lightning column always was ("after") and
# with calibrate's progress bar and TensorBoard logger ("as-run", --as-run). The JSONs go to
# <out-folder>/{before,after,as-run}/r<k>/ and each run's table to <out-folder>/logs/.
#   bash benchmarks/speed_before_after.sh <before-revision> <out-folder> embedded [rounds]
# times only the two embedded models, both trees as calibrate runs them (--as-run), in
# <rounds> rounds (default 3) of: before ResNet-20, before MobileNetV2, after ResNet-20,
# after MobileNetV2 (the "before" folder then holds --as-run runs too, where the revision's
# speed.py has --as-run; 0a52cc6, the tree before issue 31, is timed without it).
# speed.py times the default recipe's units (two blocks a unit, the ends joined) since
# 2026-12-03; a <before-revision> older than that times one block a unit with the ends apart,
# so its rows compare units of another shape (the JSONs record unit_blocks, join_end_layers).
set -euo pipefail
before_rev=${1:?usage: speed_before_after.sh <before-revision> <out-folder>}
out=$(realpath -m "${2:?usage: speed_before_after.sh <before-revision> <out-folder>}")
repo=$(cd "$(dirname "$0")/.." && pwd)
python="$repo/.venv/bin/python"
worktree=$(mktemp -d)
trap 'git -C "$repo" worktree remove --force "$worktree"' EXIT
git -C "$repo" worktree add --detach "$worktree" "$before_rev" >/dev/null
ln -s "$repo/data" "$worktree/data"  # the Fashion-MNIST files, not in git
mkdir -p "$out/logs"

run() {  # run <before|after|as-run> <run id> <log name> [speed.py options]
  local which=$1 id=$2 log=$3
  shift 3
  if [ "$which" = before ]; then
    (cd "$worktree" && PYTHONPATH="$worktree" "$python" benchmarks/speed.py \
      --out "$out/before/$id" "$@") >"$out/logs/${log}_before.txt" 2>&1
  elif [ "$which" = after ]; then
    (cd "$repo" && "$python" benchmarks/speed.py --out "$out/after/$id" "$@") \
      >"$out/logs/${log}_after.txt" 2>&1
  else
    (cd "$repo" && "$python" benchmarks/speed.py --out "$out/as-run/$id" --as-run "$@") \
      >"$out/logs/${log}_as-run.txt" 2>&1
  fi
  grep '| all units' "$out/logs/${log}_${which}.txt" | sed "s/^/${log} ${which}: /"
}

run_before_as_run() {  # run_before_as_run <run id> <log name> [speed.py options]
  local id=$1 log=$2 as_run=--as-run label="as run"
  shift 2
  # speed.py has --as-run since 2026-12-01 (after 0a52cc6, the tree before issue 31): an older
  # <before-revision> is timed as its Lightning column was, without the bar and the logger
  if ! grep -q -- '--as-run' "$worktree/benchmarks/speed.py"; then
    as_run=""
    label="its speed.py has no --as-run"
  fi
  (cd "$worktree" && PYTHONPATH="$worktree" "$python" benchmarks/speed.py $as_run \
    --out "$out/before/$id" "$@") >"$out/logs/${log}_before.txt" 2>&1
  grep '| all units' "$out/logs/${log}_before.txt" | sed "s/^/${log} before (${label}): /"
}

if [ "${3:-}" = embedded ]; then
  for k in $(seq 1 "${4:-3}"); do
    run_before_as_run "r$k" "resnet20_r$k"
    run_before_as_run "r$k" "mobilenetv2_r$k" --model mobilenetv2
    run as-run "r$k" "resnet20_r$k"
    run as-run "r$k" "mobilenetv2_r$k" --model mobilenetv2
  done
  exit 0
fi

for k in 1 2; do
  for which in before after as-run; do run "$which" "r$k" "resnet20_r$k"; done
done
for which in before after as-run; do run "$which" r1 mobilenetv2 --model mobilenetv2; done
for model in resnet18 mobilenet_v2; do
  for which in before after as-run; do
    run "$which" r1 "${model}_random224" --model "$model" --images random --image-size 224 \
      --iters 30 --calib 128
  done
done

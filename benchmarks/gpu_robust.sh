#!/usr/bin/env bash
# Lab driver for the robust-training runs on one GPU machine (docs/training.md "Why the loss spiked",
# docs/results.md "preset=gpu, five seeds"). Run from anywhere; it works in the repository root.
#
#   bash benchmarks/gpu_robust.sh probe          # 4 short runs at once, per-step diagnostics (benchmarks/spike_probe.py):
#                                                # the old recipe (no clip, no guard) at seeds 7 and 42, the guarded
#                                                # recipe at seed 7 (lr 1e-3 and 5e-4); writes $OUT/probe.tgz
#   bash benchmarks/gpu_robust.sh seeds 0 1      # the README's GPU pipeline per seed, all seeds at once:
#                                                # python launch.py stage=pipeline preset=gpu seed=S experiment.name=seed-S
#   bash benchmarks/gpu_robust.sh collect        # summaries and logs of every seed run so far -> $OUT/seeds.tgz
#
# Wheels for the packages the machine lacks travel in .whl/ (the device tool's README); they are installed once.
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 POSEKIT_CACHE=$PWD/.cache
if ! python3 -c "import hydra, torch_pruning, pycocotools, albumentations" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
fi
LAB=experiments/lab
mkdir -p "$LAB"
OUT=${OUT:-$LAB/out}
mkdir -p "$OUT"
nproc=$(nproc)

case "${1:-}" in
  probe)
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    lscpu | grep -E "Model name|^CPU\(s\)" | sed 's/  */ /g'
    common=(preset=gpu "data.num_workers=$(( nproc / 4 - 1 ))" train.resume=false ${EXTRA:-})
    old=(optim.guard.clip_factor=0 optim.guard.spike_factor=0)
    run() {  # name, overrides...
      local name=$1; shift
      timeout "${PROBE_TIMEOUT:-470}" python3 benchmarks/spike_probe.py --out "$LAB" --stop-at "${STOP_AT:-1600}" "${common[@]}" \
        experiment.name="$name" "$@" > "$LAB/$name.log" 2>&1
    }
    tag=${TAG:-}
    run old-s7$tag seed=7 "${old[@]}" &
    sleep 5  # the first one generates the synthetic set; the others wait on its lock
    run old-s42$tag seed=42 "${old[@]}" &
    run guard-s7$tag seed=7 &
    if [ -n "$tag" ]; then run guard-s42$tag seed=42 & else run guard-lr5e-4-s7 seed=7 optim.lr=5e-4 & fi
    wait
    for f in "$LAB"/*.log; do echo "== $f"; grep -E "^\{|steps, loss|dead ReLU|Error|error" "$f" | tail -12; done
    tar czf "$OUT/probe.tgz" "$LAB"/*.jsonl "$LAB"/*.report.json "$LAB"/*.log
    ;;
  seeds)
    shift
    n=$#
    for s in "$@"; do
      python3 launch.py stage=pipeline preset=gpu seed="$s" experiment.name="seed-$s" \
        data.num_workers=$(( nproc / n - 1 )) > "$LAB/seed-$s.log" 2>&1 &
      sleep 5
    done
    wait
    ;;
  collect)
    for d in experiments/seed-*; do
      [ -d "$d" ] || continue
      echo "== $d"; tail -25 "$LAB/$(basename "$d").log"
    done
    find experiments -maxdepth 4 -name summary.json -path "*seed-*" | tar czf "$OUT/seeds.tgz" -T - "$LAB"/seed-*.log
    ;;
  *) echo "usage: $0 probe | seeds SEED... | collect" >&2; exit 2 ;;
esac

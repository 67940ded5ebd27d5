#!/usr/bin/env bash
# Lab driver for the accuracy-latency map (sweeps/sweep/accuracy_latency.yaml, docs/sweeps.md) on one GPU machine
# lent for about 30 minutes at a time. Run from anywhere; it works in the repository root.
#
#   bash benchmarks/gpu_map.sh detach [STAGES]   # the sweep's points (of stage counts STAGES, e.g. 2,3; default
#                                                # all), JOBS at a time in a pool (hydra/launcher=parallel), in a
#                                                # new session (setsid): AP of both targets now, latency deferred.
#                                                # Records of earlier leases carried in experiments/sweeps/
#                                                # accuracy_latency (their map.tgz unpacked) join the sweep
#   TIME_GPU=1 bash benchmarks/gpu_map.sh detach 2   # the same, then the deferred gpu target on the idle card
#                                                # (time-gpu below) before MAP_DONE: one stage count per lease,
#                                                # timed on its own trained weights
#   bash benchmarks/gpu_map.sh poll N            # wait up to N s for it; progress; pack the records: $OUT/map.tgz
#   bash benchmarks/gpu_map.sh time-gpu          # the deferred gpu target, one entry at a time on the idle card;
#                                                # models that are not here (an earlier lease's) are rebuilt with
#                                                # random weights (--rebuild); then pack
#
# On the 2-core VM afterwards, with the packs unpacked into one folder (they hold no model or ONNX file):
#   python -m posekit.sweep.report experiments/sweeps/accuracy_latency --bench cpu --rebuild --rounds 5
#
# Settings: JOBS (points at once, default 4), WORKERS (loader workers per training, default 6), EXTRA (overrides
# for every point), PRESET (default gpu), GPU_DEVICE (the gpu target's device, default cuda), SNAP (the working
# copy, default /tmp/posekit-map). export.cpu_reduce_range=true: the INT8 CPU model is built for the VM (AVX2
# without VNNI, where 8-bit weights saturate), so the AP measured here is the AP of the file the VM times.
# A rehearsal at tiny scale on a CPU (the whole round trip: docs/sweeps.md):
#   PRESET=tiny GPU_DEVICE=cpu EXTRA="sweep.train_shape=[128,128] prune.pth=0,0.6 resolution=128x128 \
#     precision=fp32,int8 pipeline.targets.gpu.batch_sizes=[1,4]" bash benchmarks/gpu_map.sh detach 2,3
set -u
cd "$(dirname "$0")/.."
SNAP=${SNAP:-/tmp/posekit-map}
SWEEP=experiments/sweeps/accuracy_latency
pack() {  # records, summaries, eval metrics, bench outputs, logs: no weights, no ONNX, no detections
  [ -d "$SNAP/$SWEEP" ] || return 0
  (cd "$SNAP" && tar czf "${OUT:-/tmp}/map.tgz" --exclude='*.pt' --exclude='*.ckpt' --exclude='*.onnx' \
    --exclude='*.npz' --exclude='detections.json' --exclude='tensorboard' --exclude='.submitit' \
    "$SWEEP" $(ls experiments/map-*.log 2>/dev/null))
}
case "${1:-}" in
  detach)
    rm -rf "$SNAP"; mkdir -p "$SNAP/experiments/sweeps"
    tar cf - --exclude=./experiments --exclude=./.git --exclude=./.venv . | tar xf - -C "$SNAP"
    # an earlier lease's records (its map.tgz unpacked here and carried) join this lease's sweep and report
    [ -d "$SWEEP" ] && cp -r "$SWEEP" "$SNAP/experiments/sweeps/"
    stages=${2:+model.stages=$2}
    cd "$SNAP" && setsid nohup bash -c ". benchmarks/gpu_env.sh; nvidia-smi --query-gpu=name --format=csv,noheader;
      python3 launch.py -m +sweep=accuracy_latency preset=${PRESET:-gpu} $stages hydra/launcher=parallel \
        hydra.launcher.n_jobs=${JOBS:-4} data.num_workers=${WORKERS:-6} \
        pipeline.targets.gpu.device=${GPU_DEVICE:-cuda} pipeline.targets.gpu.defer=true \
        pipeline.targets.cpu.defer=true export.cpu_reduce_range=true ${EXTRA:-};
      if [ -n '${TIME_GPU:-}' ]; then
        python3 -m posekit.sweep.report $SWEEP --bench gpu --rebuild > experiments/map-time-gpu.log 2>&1; fi
      touch experiments/MAP_DONE" > experiments/map-sweep.log 2>&1 < /dev/null &
    sleep 2; echo "detached in $SNAP: accuracy_latency ${stages:-all stage counts}"; exit 0 ;;
  poll)
    [ -d "$SNAP" ] || { echo "no detached map run on this machine"; exit 3; }
    end=$(( $(date +%s) + ${2:-540} ))
    while [ ! -e "$SNAP/experiments/MAP_DONE" ] && [ "$(date +%s)" -lt "$end" ]; do sleep 15; done
    grep -E ": running|Error|error:|sweep report" "$SNAP/experiments/map-sweep.log" | tail -20 | cut -c1-300
    echo "points with a summary: $(ls "$SNAP/$SWEEP"/*/pipeline/summary.json 2>/dev/null | grep -vc /shared/)"
    [ -e "$SNAP/experiments/map-time-gpu.log" ] && tail -3 "$SNAP/experiments/map-time-gpu.log" | cut -c1-300
    [ -e "$SNAP/experiments/MAP_DONE" ] && echo MAP_DONE
    pack; exit 0 ;;
  time-gpu)
    [ -d "$SNAP/$SWEEP" ] || { mkdir -p "$SNAP"; tar cf - --exclude=./.git --exclude=./.venv . | tar xf - -C "$SNAP"; }
    cd "$SNAP" && . benchmarks/gpu_env.sh
    python3 -m posekit.sweep.report "$SWEEP" --bench gpu --rebuild > experiments/map-time-gpu.log 2>&1
    tail -5 experiments/map-time-gpu.log; pack; exit 0 ;;
  *) echo "usage: $0 detach [STAGES] | poll N | time-gpu" >&2; exit 2 ;;
esac

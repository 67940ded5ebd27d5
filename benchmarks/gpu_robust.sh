#!/usr/bin/env bash
# Lab driver for the robust-training runs on one GPU machine (docs/training.md "Why the loss spiked",
# docs/results.md "preset=gpu, five seeds"). Run from anywhere; it works in the repository root.
#
#   bash benchmarks/gpu_robust.sh probe          # 4 short runs at once, per-step diagnostics (benchmarks.spike_probe):
#                                                # the old recipe (no clip, no guard) at seeds 7 and 42, the guarded
#                                                # recipe at seed 7 (lr 1e-3 and 5e-4); writes $OUT/probe.tgz
#   bash benchmarks/gpu_robust.sh seeds 0 1      # the README's GPU pipeline per seed, all seeds at once:
#                                                # python launch.py stage=pipeline preset=gpu seed=S experiment.name=seed-S
#   bash benchmarks/gpu_robust.sh collect        # summaries and logs of every seed run so far -> $OUT/seeds.tgz
#   bash benchmarks/gpu_robust.sh probe-pair 2 3400   # seed 2 to step 3400 (schedule unchanged), two probes at once:
#                                                # the preset as is, and with optim.l1_kernels=unnormalized
#   bash benchmarks/gpu_robust.sh detach probe-pair 2 3400   # the same, detached (below)
#   bash benchmarks/gpu_robust.sh detach 1 2     # copy the tree to /tmp/posekit-snap, then run the seeds there one
#                                                # after another in a new session (setsid): later device calls may
#                                                # re-send a changed tree without touching the run
#   bash benchmarks/gpu_robust.sh detach together 0 2   # the same, the seeds at once on the one card, 7 loader
#                                                # workers each (the schedule is in steps, so sharing changes the
#                                                # wall time, not the run)
#   bash benchmarks/gpu_robust.sh poll 560       # wait up to N s for the detached run, print its progress, collect
#   EXTRA=train.compile=true bash benchmarks/gpu_robust.sh detach tta 2   # benchmarks.time_to_accuracy alone
#   bash benchmarks/gpu_robust.sh detach tta-seeds 0 1 2   # benchmarks.time_to_accuracy, one seed after another
#   bash benchmarks/gpu_robust.sh detach tta-pipeline 2   # one seed alone on the card: benchmarks.time_to_accuracy
#                                                # (cold start, AP curve; issue 20), then the rest of the README's
#                                                # pipeline (eval, prune, retrain, export, eval, bench) on its model
#   bash benchmarks/gpu_robust.sh lift 3 0.5 3   # issue 21's stall: seed 3's trained model (seeds run) pruned at pth
#                                                # 0.5, probed by benchmarks.dead_channels with --lift 3 (DEAD=0:
#                                                # not; TAG= suffixes the experiment's name), then
#                                                # retrained with retrain.lift_bn_inputs=3 and evaluated (MODEL=
#                                                # and CACHE= point it at another run's model and data set)
#   bash benchmarks/gpu_robust.sh detach tta-pipeline-seeds 0 1 2   # tta-pipeline per seed, one after another
#                                                # (STEPS= replaces the pipeline's steps after training)
#   bash benchmarks/gpu_robust.sh detach tta-lift 4   # tta-pipeline 4, then on its model: lift at pth 0.2 (floor 3,
#                                                # against the pipeline's pth 0.2 retrain without it) and at pth 0.5
#                                                # with 3,000 retrain steps (floor 3): the lift's open questions
#   EXTRA="pipeline.steps=[...]" bash ...         # extra overrides for every seed run (e.g. leave out the bench step)
#
# Wheels for the packages the machine lacks travel in .whl/ (the device tool's README); they are installed once.
set -u
cd "$(dirname "$0")/.."
SNAP=/tmp/posekit-snap
case "${1:-}" in
  detach)
    rm -rf "$SNAP"; mkdir -p "$SNAP"
    tar cf - --exclude=./experiments --exclude=./.git --exclude=./.venv . | tar xf - -C "$SNAP"
    shift
    mkdir -p "$SNAP/experiments/lab"
    case "${1:-}" in
      probe-pair|tta|tta-pipeline|lift) job='bash benchmarks/gpu_robust.sh "$@"' ;;
      tta-seeds) shift; job='for s in "$@"; do bash benchmarks/gpu_robust.sh tta "$s"; done' ;;
      tta-pipeline-seeds) shift; job='for s in "$@"; do bash benchmarks/gpu_robust.sh tta-pipeline "$s"; done' ;;
      tta-lift) shift; job='s=$1; r=$PWD/experiments/lab/tta/runs/seed-$s
        bash benchmarks/gpu_robust.sh tta-pipeline "$s"
        MODEL=$r/tta/train/model.pt CACHE=$r/cache DEAD=0 bash benchmarks/gpu_robust.sh lift "$s" 0.2 3
        MODEL=$r/tta/train/model.pt CACHE=$r/cache DEAD=0 EXTRA=retrain.max_steps=3000 TAG=-r3000 \
          bash benchmarks/gpu_robust.sh lift "$s" 0.5 3' ;;
      together) shift; job='bash benchmarks/gpu_robust.sh seeds "$@"' ;;
      *) job='for s in "$@"; do bash benchmarks/gpu_robust.sh seeds "$s"; done' ;;
    esac
    cd "$SNAP" && setsid nohup bash -c "$job; touch experiments/lab/ALL_DONE" _ "$@" \
      > /tmp/posekit-detached.log 2>&1 < /dev/null &
    sleep 2; echo "detached in $SNAP: seeds $*"; exit 0 ;;
  poll)
    [ -d "$SNAP" ] || { echo "no detached run on this machine"; exit 3; }
    out=${OUT:-/tmp}; end=$(( $(date +%s) + ${2:-560} ))
    while [ ! -e "$SNAP/experiments/lab/ALL_DONE" ] && [ "$(date +%s)" -lt "$end" ]; do sleep 15; done
    for f in "$SNAP"/experiments/lab/seed-*.log "$SNAP"/experiments/lab/pp-*.log "$SNAP"/experiments/lab/tta-*.log \
             "$SNAP"/experiments/lab/lift-*.log; do
      [ -e "$f" ] || continue
      echo "== $f"; grep -E "progress|step [0-9]+/|pipeline step|AP [0-9]|Error|pipeline: |skipped|steps, loss|off share|^\{" "$f" | tail -14 | cut -c1-400
    done
    [ -e "$SNAP/experiments/lab/ALL_DONE" ] && echo ALL_DONE
    cd "$SNAP" && OUT=$out bash benchmarks/gpu_robust.sh collect > /dev/null; exit 0 ;;
esac
. benchmarks/gpu_env.sh
LAB=experiments/lab
mkdir -p "$LAB"
OUT=${OUT:-$LAB/out}
mkdir -p "$OUT"
nproc=$(nproc)
pack_lift() {  # NAME: a lift run's log, probe table and summaries -> $OUT/NAME.tgz
  tar czf "$OUT/$1.tgz" "$LAB/$1.log" $(ls "$LAB/$1.dead.txt" 2>/dev/null) $(find "experiments/$1" -name "summary*.json")
}

case "${1:-}" in
  probe)
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    lscpu | grep -E "Model name|^CPU\(s\)" | sed 's/  */ /g'
    common=(preset=gpu "data.num_workers=$(( nproc / 4 - 1 ))" train.resume=false ${EXTRA:-})
    old=(optim.guard.clip_factor=0 optim.guard.spike_factor=0)
    run() {  # name, overrides...
      local name=$1; shift
      timeout "${PROBE_TIMEOUT:-470}" python3 -m benchmarks.spike_probe --out "$LAB" --stop-at "${STOP_AT:-1600}" "${common[@]}" \
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
  probe-pair)
    seed=${2:?seed}; stop=${3:?stop step}
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    common=(preset=gpu seed="$seed" "data.num_workers=$(( nproc / 2 - 1 ))" train.resume=false ${EXTRA:-})
    pp() {  # name, overrides...
      local name=$1; shift
      timeout "${PROBE_TIMEOUT:-900}" python3 -m benchmarks.spike_probe --out "$LAB" --stop-at "$stop" "${common[@]}" \
        experiment.name="$name" "$@" > "$LAB/$name.log" 2>&1
    }
    pp "pp-s$seed-all" &
    sleep 5  # the first one generates the synthetic set; the other waits on its lock
    pp "pp-s$seed-unnorm" optim.l1_kernels=unnormalized &
    wait
    mkdir -p "$OUT"; tar czf "$OUT/probe-pair.tgz" "$LAB"/probe-pp-*.jsonl "$LAB"/probe-pp-*.report.json "$LAB"/pp-*.log
    ;;
  seeds)
    shift
    n=$#
    for s in "$@"; do
      python3 launch.py stage=pipeline preset=gpu seed="$s" experiment.name="seed-$s" \
        data.num_workers=$(( nproc / n - 1 )) ${EXTRA:-} > "$LAB/seed-$s.log" 2>&1 &
      sleep 5
    done
    wait
    ;;
  tta)
    seed=${2:?seed}
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    python3 -m benchmarks.time_to_accuracy --out "$LAB/tta" --preset gpu --seeds "$seed" --every 750 --final-val-images 300 \
      ${EXTRA:-} > "$LAB/tta-$seed.log" 2>&1
    ;;
  tta-pipeline)
    seed=${2:?seed}
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    run="$LAB/tta/runs/seed-$seed"
    python3 -m benchmarks.time_to_accuracy --out "$LAB/tta" --preset gpu --seeds "$seed" --every 750 --final-val-images 300 \
      ${EXTRA:-} > "$LAB/tta-$seed.log" 2>&1
    # the rest of `stage=pipeline preset=gpu` on the model just trained, with the data set that run generated
    POSEKIT_CACHE="$run/cache" python3 launch.py stage=pipeline preset=gpu seed="$seed" experiment.root="$run" \
      experiment.name=tta "pipeline.steps=${STEPS:-[eval,prune,retrain,eval,export,eval,bench]}" ${EXTRA:-} \
      > "$LAB/seed-$seed.log" 2>&1
    ;;
  lift)
    seed=${2:?seed}; pth=${3:?pth}; floor=${4:?floor}
    model=${MODEL:-$PWD/experiments/seed-$seed/train/model.pt}; name="lift-s$seed-p$pth-f$floor${TAG:-}"
    export POSEKIT_CACHE=${CACHE:-$POSEKIT_CACHE}  # the data set the model was trained on (tta-pipeline: its own)
    while [ ! -e "$model" ]; do sleep 10; done  # the seeds run may still be training
    log="$LAB/$name.log"
    python3 launch.py stage=prune preset=gpu seed="$seed" experiment.name="$name" prune.model="$model" \
      prune.pth="$pth" > "$log" 2>&1
    images=$(find "$POSEKIT_CACHE" -path "*val*" -name "*.jpg" | head -1 | xargs dirname)
    [ "${DEAD:-1}" = 1 ] && python3 -m benchmarks.dead_channels "$model" "experiments/$name/prune/model.pruned-$pth.pt" \
      --images "$images/*.jpg" --n 32 --lift "$floor" > "$LAB/$name.dead.txt" 2>&1  # about 2 min on 16 cores
    python3 launch.py stage=pipeline preset=gpu seed="$seed" experiment.name="$name" prune.model="$model" \
      prune.pth="$pth" retrain.model="$PWD/experiments/$name/prune/model.pruned-$pth.pt" \
      retrain.lift_bn_inputs="$floor" "pipeline.steps=[retrain,eval]" ${EXTRA:-} >> "$log" 2>&1
    pack_lift "$name"
    ;;
  collect)
    for d in experiments/seed-*; do
      [ -d "$d" ] || continue
      echo "== $d"; tail -25 "$LAB/$(basename "$d").log"
    done
    find experiments -maxdepth 4 -name summary.json -path "*seed-*" | tar czf "$OUT/seeds.tgz" -T - "$LAB"/seed-*.log 2>/dev/null
    if [ -d "$LAB/tta" ]; then  # time_to_accuracy's table and JSON, the run's record and logs, the pipeline's summaries
      (find "$LAB/tta" -maxdepth 1 -name "time_to_accuracy.json"; find "$LAB/tta/runs" \( -name "summary.json" \
        -o -name "record.json" -o -name "train.log" -o -name "pipeline.md" -o -name "metrics.json" \) ; ls "$LAB"/tta-*.log \
        "$LAB"/seed-*.log) 2>/dev/null | tar czf "$OUT/tta.tgz" -T -
    fi
    for f in "$LAB"/lift-*.log; do [ -e "$f" ] && pack_lift "$(basename "$f" .log)" 2>/dev/null; done
    ls "$LAB"/probe-pp-*.jsonl > /dev/null 2>&1 && tar czf "$OUT/probe-pair.tgz" "$LAB"/probe-pp-*.jsonl "$LAB"/probe-pp-*.report.json "$LAB"/pp-*.log 2>/dev/null
    ;;
  *) echo "usage: $0 probe | probe-pair SEED STOP | seeds SEED... | tta SEED | tta-pipeline SEED | lift SEED PTH FLOOR | collect | detach ... | poll N" >&2; exit 2 ;;
esac

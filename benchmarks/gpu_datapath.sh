#!/usr/bin/env bash
# The real data pipeline against the memory-fed step on one GPU (docs/data.md, "The device data path").
#
#   bash benchmarks/gpu_datapath.sh [STEPS]     # default 700 optimizer steps per run
#
# Runs `launch.py stage=train preset=gpu` for STEPS steps once per entry of RUNS on a smaller synthetic set (8,000
# images; the loader's rate does not depend on the set's size), with the preset's batch, resolution and workers:
#   cpu-path       the preset as it is (workers decode, augment and render the targets)
#   device-aug     data.targets_on_device + data.augment_on_device (workers ship sources and draws)
#   device-decode  the same + data.decode_on_device (workers ship JPEG bytes)
#   memory-fed     debug.memory_batches=64: the same step without a data pipeline (the reference)
#   *-compiled     cpu-path, memory-fed or device-aug with train.compile=true (the compile time is in the
#                  start-up's first step)
# (RUNS="cpu-path memory-fed" picks some; the default is the first four and device-aug-compiled.)
# and prints each run's steady-state images/s: from the progress lines' timestamps, between the second logged
# step and the last (the first steps pay cuDNN's autotuning and the loader's start). Logs and a JSON go to $OUT
# (or experiments/lab/datapath). Wheels for the packages the machine lacks travel in .whl/ (device README).
set -u
cd "$(dirname "$0")/.."
steps=${1:-700}
. benchmarks/gpu_env.sh
out=${OUT:-experiments/lab/datapath}
mkdir -p "$out"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no GPU"; } | tee "$out/gpu.txt"
common=(stage=train preset=${PRESET:-gpu} trainer.max_steps="$steps" trainer.max_epochs=1000 data.synthetic.num_train=${NUM_TRAIN:-8000} train.resume=false
        train.progress_every_n_steps=${EVERY:-100} ${EXTRA:-})
declare -A runs=(
  [cpu-path]=""
  [device-aug]="data.targets_on_device=true data.augment_on_device=true"
  [device-decode]="data.targets_on_device=true data.augment_on_device=true data.decode_on_device=true"
  [memory-fed]="debug.memory_batches=64"
  [device-aug-compiled]="data.targets_on_device=true data.augment_on_device=true train.compile=true"
  [cpu-path-compiled]="train.compile=true"
  [memory-fed-compiled]="debug.memory_batches=64 train.compile=true"
)
RUNS=${RUNS:-cpu-path device-aug device-decode memory-fed device-aug-compiled}
for name in $RUNS; do
  # shellcheck disable=SC2086
  timeout 400 python3 launch.py "${common[@]}" experiment.name="datapath-$name" ${runs[$name]} > "$out/$name.log" 2>&1
  echo "$name: rc $?"
done
RUNS=$RUNS python3 - "$out" <<'EOF'
import json, os, re, sys
from datetime import datetime
from pathlib import Path

out = Path(sys.argv[1])
line = re.compile(r"^\[(\S+ \S+)\]\[posekit\.train\]\[INFO\] - step (\d+)/\d+ .*")
rows = {}
for name in os.environ["RUNS"].split():  # this call's runs only (an older log in the folder is not one of them)
    text = (out / f"{name}.log").read_text(errors="replace")
    marks = [(datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f"), int(m.group(2)))
             for m in map(line.match, text.splitlines()) if m]
    start = re.search(r"start-up [^\n]*", text)
    summary = Path("experiments") / f"datapath-{name}" / "train" / "summary.json"
    batch = json.loads(summary.read_text())["config"]["data"]["batch_size"] if summary.is_file() else None
    if len(marks) < 3 or batch is None:
        rows[name] = {"error": "fewer than 3 progress lines or no summary", "tail": text[-600:]}
        continue
    (t1, s1), (t2, s2) = marks[1], marks[-1]
    rows[name] = {"steps": [s1, s2], "seconds": round((t2 - t1).total_seconds(), 2),
                  "images_per_s": round(batch * (s2 - s1) / (t2 - t1).total_seconds(), 1),
                  "startup": start.group(0) if start else None}
for name, r in rows.items():
    # a compiled run against the compiled memory-fed run, an uncompiled one against the uncompiled
    ref = rows.get("memory-fed-compiled" if name.endswith("-compiled") else "memory-fed", {}).get("images_per_s")
    if "images_per_s" in r and ref:
        r["share_of_memory_fed"] = round(r["images_per_s"] / ref, 3)
    print(f"{name:14s} {r.get('images_per_s', r.get('error'))} images/s  "
          f"{r.get('share_of_memory_fed', '')}  {r.get('startup') or ''}")
(out / "datapath.json").write_text(json.dumps({"gpu": (out / "gpu.txt").read_text().strip(), "runs": rows}, indent=1))
EOF

"""What ``train.compile_prefill`` saves: a compile from Inductor's on-disk caches against a cold one.

    python -m benchmarks.compile_cache [--device cpu] [--stages 2] [--width 0.25] [--shape 128 128] [--batch 8]
                                       [--autocast none|bfloat16|float16] [--channels-last] [--repeats 1]

Runs ``python -m posekit.model.warm SPEC`` (the compile prefill's process: compile the network, one forward and
backward pass at the batch shape) twice per repeat, in fresh processes with one fresh ``TORCHINDUCTOR_CACHE_DIR``:
the first compiles cold and fills the caches, the second is what the training process does after the prefill (same
graph, same shapes: it finds the compiled graphs). Prints one JSON line per repeat: the wall seconds of each
process (start-up, imports and the compiled pass) and the seconds of its compiled pass (compile + run), plus the
machine. The preset=gpu network: ``--device cuda --stages 3 --width 1 --shape 288 384 --batch 32 --autocast
bfloat16 --channels-last``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def one_process(spec: Path, cache: Path) -> dict:
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "posekit.model.warm", str(spec)], cwd=ROOT, capture_output=True,
                          text=True, env={**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(cache)})
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"posekit.model.warm failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return {"process_s": round(wall, 2), "compiled_pass_s": json.loads(proc.stdout.strip().splitlines()[-1])["seconds"][0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--stages", type=int, default=2)
    ap.add_argument("--width", type=float, default=0.25)
    ap.add_argument("--shape", type=int, nargs=2, default=[128, 128])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--autocast", default="none", choices=["none", "bfloat16", "float16"])
    ap.add_argument("--channels-last", action="store_true")
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()

    import torch

    from posekit.model import BpNetLite
    from posekit.model.warm import write_spec
    from posekit.runtime.host import cpu_name
    from posekit.skeleton import Skeleton

    sk = Skeleton.default()
    machine = {"cpu": cpu_name(), "cores": os.cpu_count(), "torch": torch.__version__}
    if args.device.startswith("cuda"):
        machine["gpu"] = torch.cuda.get_device_name(0)
    with tempfile.TemporaryDirectory(prefix="posekit-compile-cache-") as tmp:
        tmp = Path(tmp)
        net = BpNetLite(stages=args.stages, num_heatmaps=sk.num_heatmaps, num_pafs=sk.num_pafs, width=args.width)
        spec = write_spec(tmp, net, pruning_history=None, batch_shape=(args.batch, 3, *args.shape),
                          device=args.device,
                          autocast_dtype=None if args.autocast == "none" else getattr(torch, args.autocast),
                          channels_last=args.channels_last, backend="inductor", cudnn_benchmark=True)
        for r in range(args.repeats):
            cache = tmp / f"inductor-{r}"
            cold = one_process(spec, cache)
            cached = one_process(spec, cache)
            print(json.dumps({"repeat": r, "network": {"stages": args.stages, "width": args.width,
                                                       "batch_shape": [args.batch, 3, *args.shape],
                                                       "autocast": args.autocast,
                                                       "channels_last": args.channels_last},
                              "device": args.device, "cold": cold, "from_cache": cached, "machine": machine}),
                  flush=True)


if __name__ == "__main__":
    main()

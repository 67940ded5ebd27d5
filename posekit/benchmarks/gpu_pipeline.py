"""The GPU run behind docs/results.md: the whole life cycle on one H100/H200, then DDP scaling on two.

    python -m posekit.benchmarks.gpu_pipeline --phase train --out DIR   # data, 256x256 throughput on 1 (and 2) GPUs, training
    python -m posekit.benchmarks.gpu_pipeline --phase rest  --out DIR   # eval, prune 0.2, retrain, export fp32/int8(/fp16), eval, bench
    python -m posekit.benchmarks.gpu_pipeline --phase ddp   --out DIR   # only the 1 vs 2 GPU scaling (trainer=ddp)

Each phase fits one 10-minute command. Everything is plain `python launch.py ...` (preset=gpu, experiment `gpu` under
./experiments, data cache ./.cache); this script only sequences them and gathers each stage's summary.json into
DIR/<phase>.json. It exercises the GPU-only code paths CI cannot run: bf16-mixed training, channels_last, the torch
backend with CUDA graphs (eval/bench of the .pt models), and DDP.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EXP = ROOT / "experiments"


def launch(*overrides: str, log: list) -> int:
    cmd = [sys.executable, str(ROOT / "launch.py"), "preset=gpu", *overrides]
    print("\n$", " ".join(cmd[1:]), flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT)
    log.append({"cmd": " ".join(cmd[1:]), "rc": proc.returncode, "wall_s": round(time.perf_counter() - t0, 1)})
    return proc.returncode


def summaries(root: Path) -> dict:
    out = {}
    for p in sorted(root.rglob("summary.json")):
        try:
            s = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        s.pop("config", None)
        out[str(p.relative_to(EXP))] = s
    return out


def ddp_scaling(log: list, seconds: int) -> None:
    """The train stage at 256x256 with the real data pipeline on 1 and on 2 GPUs (images/s in each summary)."""
    for n in (1, 2):
        launch("stage=train", f"experiment.name=ddp{n}", "resolution=256x256", "train.resume=false",
               "trainer=ddp", f"trainer.devices={n}", "trainer.strategy=" + ("ddp" if n > 1 else "auto"),
               f"trainer.max_time=00:00:00:{seconds:02d}", "trainer.sync_batchnorm=" + str(n > 1).lower(), log=log)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--phase", choices=["train", "rest", "ddp"], required=True)
    ap.add_argument("--out", default=".")
    ap.add_argument("--ddp-seconds", type=int, default=30)
    args = ap.parse_args()
    os.environ.setdefault("POSEKIT_CACHE", str(ROOT / ".cache"))
    import torch

    log: list = []
    result: dict = {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
                    "gpus": torch.cuda.device_count(), "phase": args.phase}
    if args.phase == "train":
        # the data pipeline vs the same step fed from memory, at 256x256 (issue: >= 90%)
        from posekit.benchmarks.gpu_speed import training_from_memory

        result["train_from_memory_256"] = training_from_memory((256, 256), batch=32)
        if torch.cuda.device_count() > 1:
            ddp_scaling(log, seconds=args.ddp_seconds)
        launch("stage=pipeline", "pipeline.steps=[train]", "experiment.name=gpu", log=log)
    elif args.phase == "rest":
        launch("stage=pipeline", "experiment.name=gpu", "prune.pth=0.2", log=log)
    else:
        ddp_scaling(log, seconds=args.ddp_seconds)
    result["commands"] = log
    result["summaries"] = summaries(EXP)
    pipe = EXP / "gpu" / "pipeline" / "pipeline.md"
    if pipe.exists():
        result["pipeline_md"] = pipe.read_text()
        print(pipe.read_text())
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / f"{args.phase}.json").write_text(json.dumps(result, indent=2, default=str))
    print(json.dumps(log, indent=1))


if __name__ == "__main__":
    main()

"""Time to accuracy: how long ``python launch.py stage=train`` takes from the command to a saved model that reaches
an AP target, and where that time goes (issue: AP 0.80 in under 5 minutes on one GPU).

    python -m benchmarks.time_to_accuracy --out DIR [--preset gpu] [--seeds 0 1 2] [--every 500] [--target 0.8]
                                          [--val-images 100] [--warm] [hydra overrides ...]

For each seed it runs the real command, ``launch.py stage=train preset=<preset> seed=<seed>`` (plus the
overrides), as a user does, with ``+callbacks=weight_snapshots``: every ``--every`` optimizer steps the run writes
its weights and the time (posekit/train/snapshots.py). Nothing is evaluated inside the run; writing the snapshots
is in its time and is reported (``snapshot_s``). After the run each snapshot is evaluated on the first
``--val-images`` val images (COCO AP, the eval stage's predictor), and the saved model on ``--final-val-images``
(default: the whole val set), which is what the target is judged on.

Cold by default: each run gets a fresh synthetic-data cache and fresh torch.compile caches, so generating the data
set and compiling count (``--warm`` reuses one cache across the runs; the first run is still cold).

Prints one table (seconds from the command) and the AP curve against wall time per seed, and writes
``DIR/time_to_accuracy.json``. The breakdown, from the run's own records (``snapshots/record.json`` marks, the
model file's time) and this script's clock around the command::

    startup    command -> end of the first optimizer step
      launch      command -> data module set up, less the two below (interpreter, imports, config, model)
      data        the data module waiting for the synthetic set: finding it, or the rest of its generation, which
                  starts before the imports (posekit.data.early; ``resolve_s``)
      index       reading and indexing the annotations (``index_s``)
      trainer     set up -> on_train_start (model to the device, optimizer, loader workers)
      first batch on_train_start -> the first batch
      first step  the first step (cuDNN autotuning, compilation)
    train      end of the first step -> end of the last (snapshots included)
    finish     end of training -> model.pt written (checkpoints, the model file)
    total      command -> model.pt written (= startup + train + finish)
    generation wall time of generating the synthetic set (0 when it was cached), overlapped with the launch or
               not (and with training when the run streams it: data.synthetic.stream_block);
               startup_without_data_wait = startup - data
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
STARTUP_PARTS = ("launch_s", "data_s", "index_s", "trainer_s", "first_batch_s", "first_step_s")


# ============================================================================================== the run
def with_snapshots(overrides: list[str]) -> str:
    """``+callbacks=[weight_snapshots,...]``: the snapshots beside the callbacks the overrides ask for
    (``+callbacks=lr_monitor`` or ``+callbacks=[lr_monitor,...]``); Hydra takes one ``+callbacks=`` override."""
    names = ["weight_snapshots"]
    for o in overrides:
        if o.startswith("+callbacks="):
            names += [n.strip() for n in o.split("=", 1)[1].strip("[]").split(",") if n.strip()]
    return f"+callbacks=[{','.join(dict.fromkeys(names))}]"


def launch_train(run_dir: Path, preset: str, seed: int, every: int, overrides: list[str], cold: bool,
                 shared_cache: Path) -> dict[str, Any]:
    """``launch.py stage=train`` in a subprocess, timed from just before it starts to just after it exits."""
    cache = run_dir / "cache" if cold else shared_cache
    env = dict(os.environ, POSEKIT_CACHE=str(cache), PYTHONUNBUFFERED="1")
    if cold:  # compiled kernels are part of a cold start too
        env.update(TORCHINDUCTOR_CACHE_DIR=str(run_dir / "inductor"), TRITON_CACHE_DIR=str(run_dir / "triton"))
    cmd = [sys.executable, str(ROOT / "launch.py"), "stage=train", f"preset={preset}", f"seed={seed}",
           f"experiment.root={run_dir}", "experiment.name=tta", "train.resume=false",
           with_snapshots(overrides), f"callbacks.weight_snapshots.every_n_steps={every}",
           *(o for o in overrides if not o.startswith("+callbacks="))]
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "train.log", "w") as log:
        t_cmd = time.time()
        rc = subprocess.call(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        t_exit = time.time()
    if rc != 0:
        tail = (run_dir / "train.log").read_text()[-3000:]
        raise SystemExit(f"{' '.join(cmd)} failed ({rc}):\n{tail}")
    return {"command": cmd, "t_cmd": t_cmd, "t_exit": t_exit, "cache": str(cache)}


def breakdown(t_cmd: float, t_exit: float, model_time: float, record: dict[str, Any],
              completed: float | None = None) -> dict[str, float]:
    """Seconds of each phase (module docstring) from the command's clock and the run's ``record.json``;
    ``completed``: when the generated set was complete (its ``params.json``), for a run that trained on a streamed
    set and ended before its generation (the record then has no ``generate_end``)."""
    m, data = record["marks"], record["data"]
    resolve_s, index_s = float(data.get("resolve_s") or 0.0), float(data.get("index_s") or 0.0)
    parts = {
        "launch_s": m["setup"] - t_cmd - resolve_s - index_s,
        "data_s": resolve_s,
        "index_s": index_s,
        "trainer_s": m["train_start"] - m["setup"],
        "first_batch_s": m["first_batch"] - m["train_start"],
        "first_step_s": m["first_step"] - m["first_batch"],
    }
    end = data.get("generate_end", completed)
    generation = end - data["generate_start"] if data.get("generated") and end is not None else 0.0
    out = {
        **parts,
        "generation_s": generation if "generated" in data else resolve_s,
        "startup_without_data_wait_s": m["first_step"] - t_cmd - resolve_s,
        "startup_s": m["first_step"] - t_cmd,
        "train_s": m["train_end"] - m["first_step"],
        "snapshot_s": float(record["snapshot_s"]),
        "finish_s": model_time - m["train_end"],
        "total_s": model_time - t_cmd,
        "exit_s": t_exit - model_time,
    }
    return {k: round(v, 3) for k, v in out.items()}


# ============================================================================================== evaluation
def evaluator(summary: dict[str, Any], cache: str):
    """``(model file, max_images) -> AP`` with the run's own config (the eval stage's predictor and COCO eval) on
    the val images of the data set in ``cache`` (the run's ``POSEKIT_CACHE``)."""
    from omegaconf import OmegaConf

    from posekit.data.paths import resolve_data
    from posekit.evaluate import evaluate
    from posekit.runtime.configured import build_predictor
    from posekit.skeleton import Skeleton

    cfg = OmegaConf.create(summary["config"])
    cfg.data.synthetic.cache_dir = str(Path(cache) / "synthetic")  # the run's data set (its POSEKIT_CACHE)
    skeleton = Skeleton.from_cfg(OmegaConf.to_container(cfg.keypoints, resolve=True))
    paths = resolve_data(cfg, splits=("val",))

    def ap(path: Path, max_images: int | None) -> float:
        predictor = build_predictor(cfg, path, skeleton)
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools' table, once per snapshot
            metrics, _ = evaluate(predictor, paths.val_ann, paths.val_images, skeleton, max_images=max_images,
                                  max_dets=int(cfg.eval.max_dets), progress=False)
        value = float(metrics.get("AP", -1.0))
        return max(value, 0.0)  # COCO's -1 (nothing to find) counts as nothing found

    return ap


def measure_seed(seed: int, args: argparse.Namespace, overrides: list[str]) -> dict[str, Any]:
    run_dir = args.out / "runs" / f"seed-{seed}"
    run = launch_train(run_dir, args.preset, seed, args.every, overrides, cold=not args.warm,
                       shared_cache=args.out / "cache")
    stage = run_dir / "tta" / "train"
    record = json.loads((stage / "snapshots" / "record.json").read_text())
    summary = json.loads((stage / "summary.json").read_text())
    model = stage / "model.pt"
    marker = next(Path(run["cache"]).rglob("params.json"), None)  # written last by the generator
    times = breakdown(run["t_cmd"], run["t_exit"], model.stat().st_mtime, record,
                      marker.stat().st_mtime if marker is not None else None)

    ap = evaluator(summary, run["cache"])
    t0 = time.perf_counter()
    curve = []
    for snap in record["snapshots"]:
        value = ap(stage / "snapshots" / f"step-{snap['step']:07d}.pt", args.val_images)
        curve.append({"step": snap["step"], "wall_s": round(snap["time"] - run["t_cmd"], 3), "AP": round(value, 4)})
    final_ap = ap(model, args.final_val_images)
    eval_s = time.perf_counter() - t0
    reached = next((p for p in curve if p["AP"] >= args.target), None)
    return {
        "seed": seed,
        "times": times,
        "curve": curve,
        "val_images": args.val_images,
        "time_to_target_s": reached["wall_s"] if reached else None,
        "step_to_target": reached["step"] if reached else None,
        "final_AP": round(final_ap, 4),
        "final_val_images": args.final_val_images,
        "global_step": summary["metrics"].get("global_step"),
        "passed": bool(final_ap >= args.target and times["total_s"] <= args.budget_s),
        "eval_s_outside_timing": round(eval_s, 2),
        "run": run,
        "record": str(stage / "snapshots" / "record.json"),
    }


# ============================================================================================== report
def table(results: list[dict[str, Any]], target: float, budget_s: float) -> str:
    head = ("| seed | start-up s | (waiting for data s) | (generating data s) | train s | (snapshots s) | finish s | total s | "
            f"time to AP {target:g} s | final AP | <= {budget_s:g} s and AP >= {target:g} |")
    lines = [head, "|" + "---:|" * 10 + "---|"]
    for r in results:
        t = r["times"]
        ttt = "-" if r["time_to_target_s"] is None else f"{r['time_to_target_s']:.1f}"
        lines.append(f"| {r['seed']} | {t['startup_s']:.1f} | {t['data_s']:.1f} | {t['generation_s']:.1f} | "
                     f"{t['train_s']:.1f} | "
                     f"{t['snapshot_s']:.1f} | {t['finish_s']:.1f} | {t['total_s']:.1f} | {ttt} | "
                     f"{r['final_AP']:.3f} | {'yes' if r['passed'] else 'no'} |")
    lines.append("")
    lines.append("start-up, seconds: " + ", ".join(p.removesuffix("_s") for p in STARTUP_PARTS))
    for r in results:
        lines.append(f"  seed {r['seed']}: " + "  ".join(f"{r['times'][p]:.1f}" for p in STARTUP_PARTS))
    for r in results:
        lines.append(f"AP on {r['val_images']} val images against wall time from the command, seed {r['seed']}:")
        lines.append("  " + "  ".join(f"{p['wall_s']:.0f}s:{p['AP']:.3f}(step {p['step']})" for p in r["curve"]))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("overrides", nargs="*", help="hydra overrides for every run (after the preset)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--preset", default="gpu")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--every", type=int, default=500, help="optimizer steps between weight snapshots")
    ap.add_argument("--target", type=float, default=0.80, help="AP target")
    ap.add_argument("--budget-s", type=float, default=300.0, help="seconds from the command to the saved model")
    ap.add_argument("--val-images", type=int, default=100, help="val images per snapshot evaluation")
    ap.add_argument("--final-val-images", type=int, default=None, help="val images for model.pt; default: all")
    ap.add_argument("--warm", action="store_true", help="share one data cache and compile cache across runs")
    args = ap.parse_args(argv)
    args.out = args.out.resolve()
    import torch

    results = [measure_seed(seed, args, list(args.overrides)) for seed in args.seeds]
    report = {
        "host": {"cpu": _cpu(), "logical_cpus": os.cpu_count(), "python": platform.python_version(),
                 "torch": torch.__version__,
                 "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
        "preset": args.preset, "overrides": list(args.overrides), "target": args.target, "budget_s": args.budget_s,
        "cold": not args.warm, "every_n_steps": args.every, "results": results,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "time_to_accuracy.json").write_text(json.dumps(report, indent=2) + "\n")
    print(table(results, args.target, args.budget_s))
    print(f"wrote {args.out / 'time_to_accuracy.json'}")
    return report


def _cpu() -> str:
    from posekit.runtime.host import cpu_name

    return cpu_name()


if __name__ == "__main__":
    main()

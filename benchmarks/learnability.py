"""The learnability test's run, over seeds: how far above its bar each seed lands. ``python -m benchmarks.learnability``

    python -m benchmarks.learnability --out DIR [--seeds 42 0 1] [--jobs 3] [--threads 1] [overrides ...]

``tests/test_train.py::test_short_schedule_scores_above_zero_through_eval`` trains :data:`LEARNABLE` (seed 42) and
asserts that ``stage=eval`` finds the people. That bar needs a margin measured over seeds and machines, and a
shorter schedule needs it measured again: this runs the test's two commands (``stage=train`` then ``stage=eval``)
for each seed, ``--jobs`` at a time with ``OMP_NUM_THREADS=--threads`` each, and prints one JSON line per seed:
training seconds, first and last epoch loss, their ratio, AP and AP50 on the 16 val images. Extra hydra overrides
go after the test's (to try another schedule). The test trains on one thread (``OMP_NUM_THREADS=1``, in the
background while the rest of the suite runs: tests/conftest.py), so ``--threads 1`` gives the test's own figures: the
thread count changes the floating-point sums.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# A short but real schedule on an easy synthetic set (one large person per image, no clutter, mild augmentation):
# enough for the network to find people, so stage=eval must find them. Measured margins: docs/measurements/
# learnability_margin.md.
LEARNABLE = (
    "preset=tiny",
    "model.width=0.25",
    "optim.lr=2e-3",
    "data.synthetic.num_train=200",
    "data.synthetic.num_val=16",
    "data.synthetic.image_size=[128,128]",
    "data.synthetic.min_people=1",
    "data.synthetic.max_people=1",
    "data.synthetic.person_height=[0.7,0.9]",
    "data.synthetic.distractors=0",
    "data.synthetic.crowd_prob=0",
    "data.synthetic.unannotated_prob=0",
    "data.augment.rotate_deg=0",
    "data.augment.scale_jitter=[1.0,1.0]",
    "data.augment.color_jitter=0",
    "data.augment.translate_px=10",
    "data.batch_size=8",
    "trainer.limit_train_batches=1.0",
    "trainer.max_epochs=40",  # 25 full batches an epoch: 1,000 steps
    "train.val_every_n_epochs=0",  # AP once, by stage=eval, not during training
)


def run_seed(seed: int, out: Path, threads: int | None, overrides: list[str]) -> dict:
    """Train and evaluate one seed under ``out/seed-<seed>``; returns the figures."""
    root = out / f"seed-{seed}"
    common = [*LEARNABLE, *overrides, f"seed={seed}", f"experiment.root={root}"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "run.log", "w") as log:
        t0 = time.monotonic()
        for stage in ("train", "eval"):
            rc = subprocess.call([sys.executable, str(ROOT / "launch.py"), f"stage={stage}", *common], cwd=ROOT,
                                 env=env, stdout=log, stderr=subprocess.STDOUT)
            if rc != 0:
                raise SystemExit(f"seed {seed}: stage={stage} failed ({rc}); see {root / 'run.log'}")
            if stage == "train":
                train_s = time.monotonic() - t0
    m = json.loads((root / "default" / "train" / "summary.json").read_text())["metrics"]
    ev = json.loads((root / "default" / "eval" / "trained" / "metrics.json").read_text())
    return {"seed": seed, "train_s": round(train_s, 1), "loss_first_epoch": round(m["train/loss_first_epoch"], 2),
            "loss_last_epoch": round(m["train/loss"], 2),
            "loss_ratio": round(m["train/loss"] / m["train/loss_first_epoch"], 4),
            "AP": round(ev["AP"], 4), "AP50": round(ev["AP50"], 4), "images": ev["images"],
            "threads": threads or "default"}


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("overrides", nargs="*", help="hydra overrides after the test's")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=[42, 0, 1])
    ap.add_argument("--jobs", type=int, default=1, help="seeds run at once")
    ap.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS per run (default: torch's own)")
    args = ap.parse_args(argv)
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        results = list(pool.map(lambda s: run_seed(s, args.out, args.threads, args.overrides), args.seeds))
    for r in results:
        print(json.dumps(r), flush=True)
    return results


if __name__ == "__main__":
    main()

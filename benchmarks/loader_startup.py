"""Data-loader start-up: seconds from ``iter(train_dataloader())`` to the first batch, with and without the
forkserver preload (docs/data.md).

    python -m benchmarks.loader_startup --workers 2 4 [hydra overrides, default preset=tiny]

Each measurement runs in a fresh process (a forkserver starts once per process and keeps its preload).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time


def first_batch_seconds(workers: int, preload: bool, overrides: list[str]) -> float:
    """In this process: build the data module, start a loader with ``workers`` workers, time its first batch."""
    import posekit.data.datamodule as dm_module
    from posekit.config import compose

    if not preload:
        dm_module.FORKSERVER_PRELOAD = ["__main__"]  # multiprocessing's own default
        dm_module.forkserver.only("__main__")
    dm = dm_module.PoseDataModule(compose([*overrides, f"data.num_workers={workers}"]))
    dm.prepare_data()
    dm.setup("fit")
    t = time.perf_counter()
    next(iter(dm.train_dataloader()))
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("overrides", nargs="*", default=["preset=tiny"])
    ap.add_argument("--workers", type=int, nargs="+", default=[2, 4])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--one", nargs=2, metavar=("WORKERS", "PRELOAD"), help=argparse.SUPPRESS)  # child process
    args = ap.parse_args()
    if args.one:
        print(first_batch_seconds(int(args.one[0]), args.one[1] == "1", args.overrides))
        return
    print(f"{os.cpu_count()} CPUs; overrides: {' '.join(args.overrides)}")
    print("| workers | preload | first batch s (each run) |")
    print("|---:|---|---|")
    for workers in args.workers:
        for preload in ("0", "1"):
            runs = []
            for _ in range(args.repeats):
                out = subprocess.run([sys.executable, "-m", "benchmarks.loader_startup", *args.overrides,
                                      "--one", str(workers), preload], capture_output=True, text=True, check=True)
                runs.append(float(out.stdout.strip().splitlines()[-1]))
            print(f"| {workers} | {'yes' if preload == '1' else 'no'} | {', '.join(f'{r:.1f}' for r in runs)} |",
                  flush=True)


if __name__ == "__main__":
    main()

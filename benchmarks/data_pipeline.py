"""Data-pipeline speed on one CPU core: ``python -m benchmarks.data_pipeline [--samples 200]``.

Times ``PoseDataset.__getitem__`` (JPEG decode + person-centric affine + colour jitter + loss mask + heatmap/PAF
targets; the image stays uint8, normalized later on the training device), single process, one thread, for the training inputs 256x256 and 288x384, on

* ``coco-sample``: the four real COCO val2017 photos in tests/data/coco-sample (640x480-ish JPEGs, 12 samples);
* ``synthetic``: a small synthetic set at the default 384x512 (generated into a temporary folder).

Prints samples/s per core and the share of decode and target encoding, with the hardware, and samples/s per core
when the workers ship keypoints and the training device renders the targets (``data.targets_on_device``), when
they ship the decoded source and the draws and the device augments (``data.augment_on_device``), and when they
ship the JPEG bytes for the device to decode (``data.decode_on_device``). A
DataLoader with N workers delivers about N times this (minus collation), which tells how many workers keep a GPU
fed.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path

import cv2
import torch

from posekit.config import AugmentConfig, CodecConfig, SyntheticConfig
from posekit.data.coco import PoseDataset
from posekit.data.images import read_image_rgb
from posekit.data.synthetic import ensure_synthetic
from posekit.skeleton import Skeleton

ROOT = Path(__file__).resolve().parents[1]
COCO_SAMPLE = ROOT / "tests" / "data" / "coco-sample"
RESOLUTIONS = ((256, 256), (288, 384))


def hardware() -> str:
    """CPU model name (lscpu) and core count."""
    model = platform.processor() or platform.machine()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=5).stdout
        model = next((ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name")), model)
    except (OSError, subprocess.SubprocessError):
        pass
    return f"{model}, {os.cpu_count()} cores ({platform.system()} {platform.machine()})"


def _time_per_call(fn, n: int) -> float:
    start = time.perf_counter()
    for i in range(n):
        fn(i)
    return (time.perf_counter() - start) / n


def item_time(ds: PoseDataset, samples: int) -> float:
    """Seconds per ``ds[i]`` (everything a loader worker does for one item), after a short warm-up."""
    for i in range(min(5, len(ds))):  # warm-up: caches, lazy imports
        ds[i]
    return _time_per_call(lambda i: ds[i % len(ds)], min(samples, 10 * len(ds)))


def measure(ds: PoseDataset, samples: int) -> dict[str, float]:
    """Seconds per sample: total (``ds[i]``), JPEG decode alone and target encoding alone."""
    n = min(samples, 10 * len(ds))
    total = item_time(ds, samples)
    files = [ds.image_dir / ds._records[int(r)]["file_name"] for r, _ in ds._samples]
    decode = _time_per_call(lambda i: read_image_rgb(files[i % len(files)]), n)
    kps = [ds.sample(i)["keypoints"] for i in range(len(ds))]
    targets = _time_per_call(lambda i: ds.encoder(kps[i % len(kps)]), n)
    return {"total": total, "decode": decode, "targets": targets}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=200, help="samples timed per row")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    skeleton = Skeleton.default()
    with tempfile.TemporaryDirectory() as tmp:
        synthetic = ensure_synthetic(SyntheticConfig(num_train=48, num_val=1, cache_dir=tmp), skeleton, workers=1)
        sources = {
            "coco-sample": (COCO_SAMPLE / "test_coco.json", COCO_SAMPLE),
            "synthetic 384x512": (synthetic["train_ann"], synthetic["train_images"]),
        }
        rows = []
        for name, (ann, images) in sources.items():
            for hw in RESOLUTIONS:
                ds = PoseDataset(ann, images, skeleton, hw, CodecConfig(), AugmentConfig(), train=True, seed=0)
                t = measure(ds, args.samples)
                # data.targets_on_device: the worker's item without the targets (keypoints only)
                light = PoseDataset(ann, images, skeleton, hw, CodecConfig(), AugmentConfig(), train=True, seed=0,
                                    keypoints_only=True)
                kps_only = item_time(light, args.samples)
                # data.augment_on_device (+ decode_on_device): the worker reads, draws, makes the mask
                device = [item_time(PoseDataset(ann, images, skeleton, hw, CodecConfig(), AugmentConfig(), train=True,
                                                seed=0, keypoints_only=True, device_augment=True, jpeg_bytes=jpeg),
                                    args.samples) for jpeg in (False, True)]
                rows.append((name, f"{hw[0]}x{hw[1]}", 1.0 / t["total"], 1e3 * t["total"], t["decode"] / t["total"],
                             t["targets"] / t["total"], 1.0 / kps_only, 1.0 / device[0], 1.0 / device[1]))  # fmt: skip
    print(f"data pipeline, one process, one thread: {hardware()}")
    print("| data | input HxW | samples/s/core | ms/sample | JPEG decode | targets (encode) "
          "| samples/s/core, targets on device | augment on device | + decode on device |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, hw, rate, ms, dec, tgt, light_rate, dev_rate, bytes_rate in rows:
        print(f"| {name} | {hw} | {rate:.0f} | {ms:.2f} | {dec:.0%} | {tgt:.0%} | {light_rate:.0f} | {dev_rate:.0f} "
              f"| {bytes_rate:.0f} |")


if __name__ == "__main__":
    main()

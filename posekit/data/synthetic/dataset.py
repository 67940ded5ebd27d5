"""Generating and caching the synthetic dataset: the cache key, the process pool, the COCO files.

:func:`ensure_synthetic` renders the train and val splits on first use under a folder named by a hash of every
generating parameter (plus :data:`GENERATOR_VERSION`); generation runs in a temporary folder renamed into place
when complete, under a file lock so concurrent ranks wait for one generator.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import uuid
from collections.abc import Mapping
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import cv2
from filelock import FileLock
from tqdm import tqdm

from posekit.data import forkserver
from posekit.data.synthetic.person import RENDERED_JOINTS
from posekit.data.synthetic.render import SPLITS, render_image
from posekit.errors import UserError
from posekit.skeleton import Skeleton

log = logging.getLogger("posekit.data")

# Bump when the renderer changes what it draws or writes: cached datasets of older versions are not reused.
GENERATOR_VERSION = 3
JPEG_QUALITY = 90
_IMAGES_PER_PROCESS = 64  # at least this many images per generating process (process start-up costs ~0.1 s)


def default_cache_dir() -> Path:
    """``$POSEKIT_CACHE/synthetic`` if set, else ``~/.cache/posekit/synthetic``."""
    root = os.environ.get("POSEKIT_CACHE")
    return (Path(root).expanduser() if root else Path.home() / ".cache" / "posekit") / "synthetic"


def generation_params(syn_cfg: Any, skeleton: Skeleton) -> dict:
    """Every parameter that changes the generated files (the cache key). ``syn_cfg``: a ``SyntheticConfig``."""
    missing = [n for n in skeleton.dataset_joints if n not in RENDERED_JOINTS]
    if missing:
        raise UserError(
            f"the synthetic dataset renders the COCO-17 joints {list(RENDERED_JOINTS)}; keypoints="
            f"{skeleton.name} asks for {missing}. Use data=coco with your own annotations for this skeleton."
        )
    h, w = (int(v) for v in syn_cfg.image_size)
    lo, hi = (float(v) for v in syn_cfg.person_height)
    params = {
        "version": GENERATOR_VERSION,
        "seed": int(syn_cfg.seed),
        "num_train": int(syn_cfg.num_train),
        "num_val": int(syn_cfg.num_val),
        "image_size": [h, w],
        "min_people": int(syn_cfg.min_people),
        "max_people": int(syn_cfg.max_people),
        "person_height": [lo, hi],
        "crowd_prob": float(syn_cfg.crowd_prob),
        "unannotated_prob": float(syn_cfg.unannotated_prob),
        "distractors": int(syn_cfg.distractors),
        "dataset_joints": list(skeleton.dataset_joints),
        "category": skeleton.coco_category(),
    }
    problems = []
    if h < 32 or w < 32:
        problems.append(f"data.synthetic.image_size={[h, w]}: need [H, W] >= 32")
    if not 1 <= params["min_people"] <= params["max_people"]:
        problems.append("data.synthetic.min_people/max_people: need 1 <= min_people <= max_people")
    if not 0 < lo <= hi <= 1.5:
        problems.append(f"data.synthetic.person_height={[lo, hi]}: need 0 < low <= high (fractions of image height)")
    if params["num_train"] < 1 or params["num_val"] < 1:
        problems.append("data.synthetic.num_train/num_val: need >= 1")
    if problems:
        raise UserError("; ".join(problems))
    return params


def dataset_dir(params: Mapping, cache_dir: str | os.PathLike | None = None) -> Path:
    """The cache folder of the dataset ``params`` describes: ``<cache>/synthetic-<hash>``."""
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]
    root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    return root / f"synthetic-{digest}"


def is_cached(syn_cfg: Any, skeleton: Skeleton) -> bool:
    """Whether the data set ``syn_cfg`` describes is complete in its cache (:func:`ensure_synthetic` would not
    generate it)."""
    return _complete(dataset_dir(generation_params(syn_cfg, skeleton), getattr(syn_cfg, "cache_dir", None)))


def ensure_synthetic(syn_cfg: Any, skeleton: Skeleton, workers: int | None = None) -> dict[str, Path]:
    """The synthetic dataset described by ``syn_cfg`` (a ``SyntheticConfig``), generated on first use.

    Args:
        syn_cfg: ``cfg.data.synthetic``.
        skeleton: gives the dataset joint order and the COCO category.
        workers: generating processes; default ``syn_cfg.workers`` (0 = all cores).

    Returns:
        ``{"train_ann", "train_images", "val_ann", "val_images"}`` -> absolute paths.
    """
    params = generation_params(syn_cfg, skeleton)
    root = dataset_dir(params, getattr(syn_cfg, "cache_dir", None))
    if not _complete(root):
        root.parent.mkdir(parents=True, exist_ok=True)
        # FileLock: an flock the kernel drops when its holder dies, so a killed generator never blocks the next
        with FileLock(root.with_name(root.name + ".lock")):
            if not _complete(root):  # another process may have finished it while we waited
                if workers is None:
                    workers = int(getattr(syn_cfg, "workers", 0) or 0)
                _generate(params, root, workers)
    return {
        "train_ann": root / "annotations" / "train.json",
        "train_images": root / "train",
        "val_ann": root / "annotations" / "val.json",
        "val_images": root / "val",
    }



def _complete(root: Path) -> bool:
    return (root / "params.json").is_file()


def _generate(params: dict, root: Path, workers: int) -> None:
    # Leftovers of killed generations of this dataset (we hold the lock, so nobody else is writing them).
    for stale in root.parent.glob(f".{root.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = root.parent / f".{root.name}.tmp-{uuid.uuid4().hex[:8]}"
    counts = {"train": params["num_train"], "val": params["num_val"]}
    jobs = [(s, i) for s in SPLITS for i in range(counts[s])]
    for s in SPLITS:
        (tmp / s).mkdir(parents=True)
    (tmp / "annotations").mkdir()
    workers = workers if workers > 0 else (os.cpu_count() or 1)
    workers = min(workers, max(1, len(jobs) // _IMAGES_PER_PROCESS))  # a pool only pays off for many images
    log.info("generating the synthetic dataset (%d images, %d processes) in %s", len(jobs), workers, root)
    results: dict[str, list] = {s: [] for s in SPLITS}
    try:
        args = [(params, str(tmp), s, i) for s, i in jobs]
        bar = tqdm(total=len(jobs), desc="synthetic data", unit="img", dynamic_ncols=True)
        with bar, contextlib.ExitStack() as stack:
            if workers > 1:
                # Not fork: forking a parent whose OpenMP/OpenCV thread pools already ran can deadlock the child
                # on an inherited lock (seen here once). A fork server starts clean. As with any spawn/forkserver
                # pool, a script calling this needs an `if __name__ == "__main__":` guard (posekit's entry points
                # have one). An executor (not mp.Pool) fails loudly if a worker dies instead of respawning it.
                # The process has one forkserver: in a training process it also preloads the loader's modules
                # (posekit.data.forkserver).
                forkserver.want(__name__)
                ctx = forkserver.context()
                pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_worker_init)
                stack.callback(pool.shutdown, wait=True, cancel_futures=True)  # Ctrl-C: drop the queued images
                it = pool.map(_render_to_file, args, chunksize=8)
            else:
                it = map(_render_to_file, args)
            for (split, _), result in zip(jobs, it):  # map keeps job order: ids do not depend on scheduling
                results[split].append(result)
                bar.update()
        for split in SPLITS:
            _write_coco(tmp / "annotations" / f"{split}.json", results[split], params)
        (tmp / "params.json").write_text(json.dumps(params, indent=2, sort_keys=True) + "\n")  # completion marker
        if not _complete(root):  # (without a file lock another process may have finished first: keep theirs)
            os.replace(tmp, root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _worker_init() -> None:
    cv2.setNumThreads(1)  # one image per process; cv2's own threads would only oversubscribe the cores


def _render_to_file(job: tuple[dict, str, str, int]) -> tuple[dict, list[dict]]:
    params, tmp, split, index = job
    img, anns = render_image(params, split, index)
    file_name = f"{index + 1:012d}.jpg"
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    assert ok, "cv2 failed to encode a JPEG"
    Path(tmp, split, file_name).write_bytes(buf.tobytes())
    info = {"id": index + 1, "file_name": file_name, "height": img.shape[0], "width": img.shape[1]}
    return info, anns


def _write_coco(path: Path, results: list[tuple[dict, list[dict]]], params: Mapping) -> None:
    images, annotations = [], []
    for info, anns in results:
        images.append({**info, "license": 1})
        for ann in anns:
            annotations.append({"id": len(annotations) + 1, "image_id": info["id"], **ann})
    coco = {
        "info": {
            "description": "posekit synthetic multi-person keypoints",
            "version": str(GENERATOR_VERSION),
            "generator_params": {k: v for k, v in params.items() if k != "category"},
        },
        "licenses": [{"id": 1, "name": "CC0 1.0 (generated)", "url": ""}],
        "categories": [params["category"]],
        "images": images,
        "annotations": annotations,
    }
    path.write_text(json.dumps(coco, separators=(",", ":")))

"""Generating and caching the synthetic dataset: the cache key, the process pool, the COCO files.

:func:`ensure_synthetic` renders the train and val splits on first use under a folder named by a hash of every
generating parameter (plus :data:`GENERATOR_VERSION`); generation runs under a file lock, so concurrent ranks wait
for one generator, and ``params.json``, written last, marks the set complete (a killed generation's folder is
removed by the next one).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Mapping
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import cv2
from filelock import FileLock
from tqdm import tqdm

from posekit import io
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
# niceness of the generating processes while a training process streams the set (ensure_synthetic's on_image): the
# training process and its loader workers come first, the generator takes the cores they leave idle
_STREAMING_NICE = 10


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


def dataset_root(syn_cfg: Any, skeleton: Skeleton) -> Path:
    """The cache folder of the data set ``syn_cfg`` (a ``SyntheticConfig``) describes."""
    return dataset_dir(generation_params(syn_cfg, skeleton), getattr(syn_cfg, "cache_dir", None))


def is_cached(syn_cfg: Any, skeleton: Skeleton) -> bool:
    """Whether the data set ``syn_cfg`` describes is complete in its cache (:func:`ensure_synthetic` would not
    generate it)."""
    return _complete(dataset_root(syn_cfg, skeleton))


# ``ensure_synthetic(on_image=...)``: called in the generating thread with (split, COCO image dict, its COCO
# annotation dicts), ids final, in index order, train split first, as each image is written
ImageListener = Callable[[str, dict, list[dict]], None]


def ensure_synthetic(
    syn_cfg: Any, skeleton: Skeleton, workers: int | None = None, on_image: ImageListener | None = None
) -> dict[str, Path]:
    """The synthetic dataset described by ``syn_cfg`` (a ``SyntheticConfig``), generated on first use.

    Args:
        syn_cfg: ``cfg.data.synthetic``.
        skeleton: gives the dataset joint order and the COCO category.
        workers: generating processes; default ``syn_cfg.workers`` (0 = all cores).
        on_image: if this call generates the set, told of each image as soon as its file is written (the
            streamed first epoch, ``posekit.data.stream``); its generating processes then run at a lower
            priority, so that training on the first images takes the cores it needs.

    Returns:
        ``{"train_ann", "train_images", "val_ann", "val_images"}`` -> absolute paths.
    """
    params = generation_params(syn_cfg, skeleton)
    root = dataset_dir(params, getattr(syn_cfg, "cache_dir", None))  # dataset_root, with the params kept
    if not _complete(root):
        root.parent.mkdir(parents=True, exist_ok=True)
        # FileLock: an flock the kernel drops when its holder dies, so a killed generator never blocks the next
        with FileLock(root.with_name(root.name + ".lock")):
            if not _complete(root):  # another process may have finished it while we waited
                if workers is None:
                    workers = int(getattr(syn_cfg, "workers", 0) or 0)
                _generate(params, root, workers, on_image)
    return split_paths(root)


def split_paths(root: Path) -> dict[str, Path]:
    """The annotation files and image folders of the data set in ``root``."""
    return {
        "train_ann": root / "annotations" / "train.json",
        "train_images": root / "train",
        "val_ann": root / "annotations" / "val.json",
        "val_images": root / "val",
    }


def _complete(root: Path) -> bool:
    return (root / "params.json").is_file()


def _generate(params: dict, root: Path, workers: int, on_image: ImageListener | None = None) -> None:
    """Render into ``root`` itself, so an image's path is final as soon as it is written (the streamed first epoch
    reads them then). ``params.json``, written last and atomically, marks the set complete: ``root`` without it
    is a killed generation's, removed here (we hold the lock, so nobody else is writing it) or on an error."""
    for stale in root.parent.glob(f".{root.name}.tmp-*"):  # temporary folders of earlier posekit versions
        shutil.rmtree(stale, ignore_errors=True)
    shutil.rmtree(root, ignore_errors=True)
    counts = {"train": params["num_train"], "val": params["num_val"]}
    jobs = [(s, i) for s in SPLITS for i in range(counts[s])]
    for s in SPLITS:
        (root / s).mkdir(parents=True)
    (root / "annotations").mkdir()
    workers = workers if workers > 0 else (os.cpu_count() or 1)
    workers = min(workers, max(1, len(jobs) // _IMAGES_PER_PROCESS))  # a pool only pays off for many images
    log.info("generating the synthetic dataset (%d images, %d processes) in %s", len(jobs), workers, root)
    coco: dict[str, tuple[list, list]] = {s: ([], []) for s in SPLITS}  # split -> (images, annotations)
    try:
        args = [(params, str(root), s, i) for s, i in jobs]
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
                nice = _STREAMING_NICE if on_image is not None else 0
                pool = ProcessPoolExecutor(workers, mp_context=ctx, initializer=_worker_init, initargs=(nice,))
                stack.callback(pool.shutdown, wait=True, cancel_futures=True)  # Ctrl-C: drop the queued images
                it = pool.map(_render_to_file, args, chunksize=8)
            else:
                it = map(_render_to_file, args)
            for (split, _), (info, anns) in zip(jobs, it):  # map keeps job order: ids do not depend on scheduling
                images, annotations = coco[split]
                image = {**info, "license": 1}
                image_anns = [{"id": len(annotations) + k + 1, "image_id": info["id"], **a} for k, a in enumerate(anns)]
                images.append(image)
                annotations.extend(image_anns)
                if on_image is not None:
                    on_image(split, image, image_anns)
                bar.update()
        for split in SPLITS:
            _write_coco(root / "annotations" / f"{split}.json", *coco[split], params)
        with io.atomic_path(root / "params.json") as tmp:  # the completion marker, last
            tmp.write_text(json.dumps(params, indent=2, sort_keys=True) + "\n")
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise


def _worker_init(nice: int = 0) -> None:
    cv2.setNumThreads(1)  # one image per process; cv2's own threads would only oversubscribe the cores
    if nice > 0:
        os.nice(nice)


def _render_to_file(job: tuple[dict, str, str, int]) -> tuple[dict, list[dict]]:
    params, root, split, index = job
    img, anns = render_image(params, split, index)
    file_name = f"{index + 1:012d}.jpg"
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    assert ok, "cv2 failed to encode a JPEG"
    Path(root, split, file_name).write_bytes(buf.tobytes())
    info = {"id": index + 1, "file_name": file_name, "height": img.shape[0], "width": img.shape[1]}
    return info, anns


def _write_coco(path: Path, images: list[dict], annotations: list[dict], params: Mapping) -> None:
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

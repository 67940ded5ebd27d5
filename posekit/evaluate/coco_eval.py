"""COCO keypoint evaluation with pycocotools (``COCOeval(iouType='keypoints')``), for any skeleton.

* OKS sigmas come from the skeleton (``keypoints.sigmas``), so custom keypoint sets score correctly
  (pycocotools' built-in sigmas are COCO-17's).
* ``params.maxDets = [max_dets]`` (COCO's keypoint default is 20) and ``params.imgIds`` = the images actually
  evaluated (a corrupt image is skipped, counted, and not scored as all misses).
* Detections are COCO results: dataset-order keypoints with float coordinates (TAO truncates them with
  ``int()``, quirk 9: a systematic -0.5 px bias, fixed), ``v = 1`` for predicted joints and ``[0, 0, 0]`` for
  missing ones (COCOeval ignores the detections' v; the zeros only keep files readable), ``score`` = person score.
* The 10 summary numbers are computed from ``eval['precision'/'recall']`` exactly as ``COCOeval.summarize``
  does, but for the configured ``max_dets`` (``summarize`` hard-codes 20), and printed as its table.
"""

from __future__ import annotations

import contextlib
import copy
import io as _io
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from posekit.codec.decode import People
from posekit.data.annotations import load_coco
from posekit.errors import UserError
from posekit.runtime.image_loop import predict_images
from posekit.skeleton import Skeleton

log = logging.getLogger(__name__)

STATS = ("AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl")
# (average precision?, IoU threshold, area) per entry of STATS, as COCOeval._summarizeKps
_SUMMARY = (
    (True, None, "all"), (True, 0.5, "all"), (True, 0.75, "all"), (True, None, "medium"), (True, None, "large"),
    (False, None, "all"), (False, 0.5, "all"), (False, 0.75, "all"), (False, None, "medium"), (False, None, "large"),
)


def keypoint_category(coco: COCO, skeleton: Skeleton) -> int:
    """The id of the GT category whose keypoints are the skeleton's dataset joints (1 for COCO persons)."""
    k = len(skeleton.dataset_joints)
    cats = [c for c in coco.dataset.get("categories", []) if len(c.get("keypoints", [])) == k]
    if not cats:
        found = {c.get("name"): len(c.get("keypoints", [])) for c in coco.dataset.get("categories", [])}
        raise UserError(
            f"no category in the annotations has {k} keypoints (keypoints={skeleton.name} has {k} dataset joints; "
            f"categories: {found}). Use the keypoints config that matches the dataset."
        )
    return int(cats[0]["id"])


def people_to_coco(people: People, image_id: int, skeleton: Skeleton, category_id: int = 1) -> list[dict]:
    """People (original-image pixels, network order) -> COCO keypoint results for one image."""
    kps = skeleton.to_dataset(people.keypoints)  # (N, K_ds, 3) [x, y, joint score]
    present = kps[..., 2] > 0
    out = np.zeros_like(kps, dtype=np.float64)
    out[..., :2] = np.where(present[..., None], np.round(kps[..., :2].astype(np.float64), 2), 0.0)
    out[..., 2] = present
    return [
        {
            "image_id": int(image_id),
            "category_id": int(category_id),
            "keypoints": [float(v) if i % 3 != 2 else int(v) for i, v in enumerate(person.reshape(-1))],
            "score": round(float(score), 5),
        }
        for person, score in zip(out, people.scores)
    ]


def format_table(metrics: dict[str, float], max_dets: int = 20) -> str:
    """The standard 10-line COCOeval keypoint summary."""
    lines = []
    for name, (ap, iou, area) in zip(STATS, _SUMMARY):
        title = "Average Precision  (AP)" if ap else "Average Recall     (AR)"
        iou_s = "0.50:0.95" if iou is None else f"{iou:0.2f}"
        lines.append(f" {title} @[ IoU={iou_s:<9} | area={area:>6s} | maxDets={max_dets:>3d} ] = {metrics[name]:0.3f}")
    return "\n".join(lines)


def evaluate_detections(ann: str | os.PathLike | COCO, detections: Sequence[dict], skeleton: Skeleton,
                        image_ids: Sequence[int] | None = None, max_dets: int = 20,
                        print_table: bool = True) -> dict[str, float]:
    """Score COCO keypoint results against a GT annotation file.

    Args:
        ann: GT annotation file (or a loaded COCO object).
        detections: COCO results (``image_id``, ``category_id``, ``keypoints`` (3*K_ds), ``score``).
        image_ids: images to score (default: all images of the GT file).
        max_dets: detections kept per image, best first.
    Returns:
        {"AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl"}; -1 where COCO leaves a value
        undefined (no GT in that area range).
    """
    gt = load_coco(ann)
    cat = keypoint_category(gt, skeleton)
    sigmas = np.asarray(skeleton.sigmas, dtype=np.float64)
    ids = sorted(gt.getImgIds()) if image_ids is None else [int(i) for i in image_ids]
    with contextlib.redirect_stdout(_io.StringIO()):
        if detections:
            dt = gt.loadRes(copy.deepcopy(list(detections)))  # loadRes adds area/bbox/id in place
        else:
            dt = COCO()
            dt.dataset = {"images": gt.dataset["images"], "categories": copy.deepcopy(gt.dataset["categories"]),
                          "annotations": []}
            dt.createIndex()
        E = COCOeval(gt, dt, iouType="keypoints")
        E.params.kpt_oks_sigmas = sigmas
        E.params.maxDets = [int(max_dets)]
        E.params.imgIds = ids
        E.params.catIds = [cat]
        E.evaluate()
        E.accumulate()
    metrics = {name: _summarize(E, ap, iou, area) for name, (ap, iou, area) in zip(STATS, _SUMMARY)}
    if print_table:
        print(format_table(metrics, max_dets), flush=True)
    return metrics


def _summarize(E: COCOeval, ap: bool, iou: float | None, area: str) -> float:
    p = E.params
    a = p.areaRngLbl.index(area)
    s = E.eval["precision"][..., a, 0] if ap else E.eval["recall"][..., a, 0]  # (T, R, K) / (T, K)
    if iou is not None:
        s = s[np.isclose(p.iouThrs, iou)]
    valid = s[s > -1]
    return float(np.mean(valid)) if valid.size else -1.0


def evaluate(predictor: Any, ann_file: str | os.PathLike, image_dir: str | os.PathLike, skeleton: Skeleton,
             max_images: int | None = None, max_dets: int = 20, progress: bool = True
             ) -> tuple[dict[str, Any], list[dict]]:
    """Run ``predictor`` on the GT file's images (sorted by id; the first ``max_images`` if given) and score.

    Returns (metrics, detections): metrics has the 10 COCO numbers (:data:`STATS`) plus ``images`` (evaluated),
    ``skipped_images`` (corrupt or missing files), ``dropped_annotations`` (non-finite keypoints or boxes) and
    ``ms_per_image`` (predictor time); detections are the COCO results of all evaluated images.
    """
    gt = load_coco(ann_file)
    cat = keypoint_category(gt, skeleton)
    ids = sorted(gt.getImgIds())
    if max_images is not None:
        ids = ids[: int(max_images)]
    image_dir = Path(image_dir)
    paths = [image_dir / gt.imgs[i]["file_name"] for i in ids]
    id_of = dict(zip(paths, ids))
    detections: list[dict] = []
    evaluated: list[int] = []
    t0 = time.perf_counter()

    def collect(path: Path, _image: np.ndarray, people: People) -> None:
        detections.extend(people_to_coco(people, id_of[path], skeleton, cat))
        evaluated.append(id_of[path])

    run = predict_images(predictor, paths, collect, desc="eval", progress=progress)
    if run.skipped:
        log.warning("eval: %d of %d images could not be read and were skipped", len(run.skipped), len(paths))
    if not evaluated:
        raise UserError(f"no readable image among {len(paths)} in {image_dir}: check data.val_images")
    metrics: dict[str, Any] = dict(evaluate_detections(gt, detections, skeleton, evaluated, max_dets, print_table=True))
    metrics.update(
        images=len(evaluated),
        skipped_images=len(run.skipped),
        dropped_annotations=int(getattr(gt, "dropped_annotations", 0)),
        ms_per_image=round(run.predict_s * 1e3 / len(evaluated), 3),
        seconds=round(time.perf_counter() - t0, 2),
    )
    return metrics, detections

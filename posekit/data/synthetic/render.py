"""Rendering one image of a split from its seed, and a preview of it with its ground truth drawn."""

from __future__ import annotations

from collections.abc import Mapping

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from posekit.data.synthetic.scene import Scene
from posekit.skeleton import Skeleton

VAL_MAX_PEOPLE = 20  # COCO keypoint eval keeps 20 detections per image: more GT people would cap recall
SPLITS = ("train", "val")


def render_image(params: Mapping, split: str, index: int) -> tuple[np.ndarray, list[dict]]:
    """Render one image of a split: ((H, W, 3) uint8 RGB, its annotations without ``id`` / ``image_id``).

    Deterministic in ``(params["seed"], split, index)``.
    """
    rng = np.random.default_rng([int(params["seed"]), SPLITS.index(split), int(index)])
    h, w = params["image_size"]
    max_people = params["max_people"] if split == "train" else min(params["max_people"], VAL_MAX_PEOPLE)
    scene = Scene(rng, h, w, params)
    img = scene.render(
        num_people=int(rng.integers(min(params["min_people"], max_people), max_people + 1)),
        max_total=max_people if split == "val" else None,
    )
    return img, scene.annotations(params["dataset_joints"])



def preview(params: Mapping, split: str, index: int, skeleton: Skeleton) -> np.ndarray:
    """One rendered image with its ground truth drawn: skeletons of the annotated people (v = 1 joints too),
    grey boxes around unannotated people and the crowd region's outline in red. (H, W, 3) uint8 RGB."""
    from posekit.codec.decode import People
    from posekit.viz.overlay import draw_people

    img, anns = render_image(params, split, index)
    people = [a for a in anns if a["num_keypoints"] > 0]
    kps = skeleton.to_network(np.array([a["keypoints"] for a in people], np.float32).reshape(len(people), -1))
    out = draw_people(img, People(kps, np.ones(len(people), np.float32)), skeleton, thickness=1)
    for a in anns:
        if a["iscrowd"]:
            region = mask_utils.decode(a["segmentation"] | {"counts": a["segmentation"]["counts"].encode()})
            contours, _ = cv2.findContours(region, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            cv2.drawContours(out, contours, -1, (255, 40, 40), 1, cv2.LINE_AA)
        elif a["num_keypoints"] == 0:
            x, y, w, h = a["bbox"]
            cv2.rectangle(out, (x, y), (x + w - 1, y + h - 1), (160, 160, 160), 1)
    return out

"""Loss masks: where the training loss may look (TAO ``get_segmentation_masks``, computed on the fly).

COCO does not label every person: crowds are one ``iscrowd=1`` region and some people have no keypoints
(``num_keypoints == 0``). A network that finds them would be punished for it, so their pixels are masked out::

    valid = NOT( (crowd - crowd AND labeled) OR unlabeled )

with ``crowd`` the union of the ``iscrowd=1`` segmentations, ``unlabeled`` the union of the non-crowd
segmentations with ``num_keypoints <= 0`` and ``labeled`` the union of those with ``num_keypoints > 0``.
TAO writes this mask as a JPEG next to each image (lossy, quirk 3) and resizes it bilinearly; here it is made
from the annotations at load time, warped with the image's own affine (the border counts as valid, as TAO) and
area-averaged onto the output grid, so each cell holds the exact fraction of valid input pixels it covers.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import cv2
import numpy as np
from pycocotools import mask as mask_utils


def segmentation_union(anns: Iterable[Mapping[str, Any]], h: int, w: int) -> np.ndarray:
    """(H, W) bool union of the annotations' segmentations (polygons, RLE or compressed RLE).

    An annotation without a segmentation (keypoint-only datasets) contributes its bounding box.
    """
    rles = []
    for ann in anns:
        segm = ann.get("segmentation")
        if not segm:
            x, y, bw, bh = ann.get("bbox", (0, 0, 0, 0))
            if bw <= 0 or bh <= 0:
                continue
            segm = [[x, y, x + bw, y, x + bw, y + bh, x, y + bh]]
        if isinstance(segm, list):  # polygons
            rles.extend(mask_utils.frPyObjects(segm, h, w))
        elif isinstance(segm.get("counts"), list):  # uncompressed RLE
            rles.append(mask_utils.frPyObjects(segm, h, w))
        else:  # compressed RLE
            rles.append(segm)
    if not rles:
        return np.zeros((h, w), bool)
    return mask_utils.decode(mask_utils.merge(rles)).astype(bool)


def needs_mask(anns: Iterable[Mapping[str, Any]]) -> bool:
    """True if any annotation is a crowd or an unlabeled person (otherwise the mask is all valid)."""
    return any(a.get("iscrowd", 0) or a.get("num_keypoints", 0) <= 0 for a in anns)


def valid_mask(anns: Iterable[Mapping[str, Any]], h: int, w: int) -> np.ndarray:
    """(H, W) uint8 {0, 1}: 1 where the loss counts, 0 on crowds (outside labeled people) and unlabeled people.

    ``anns``: one image's COCO person annotations (``segmentation``, ``iscrowd``, ``num_keypoints``).
    """
    anns = list(anns)
    crowd = segmentation_union([a for a in anns if a.get("iscrowd", 0)], h, w)
    unlabeled = segmentation_union(
        [a for a in anns if not a.get("iscrowd", 0) and a.get("num_keypoints", 0) <= 0], h, w
    )
    labeled = segmentation_union([a for a in anns if a.get("num_keypoints", 0) > 0], h, w)
    ignore = (crowd & ~labeled) | unlabeled
    return (~ignore).astype(np.uint8)


def warp_mask(mask: np.ndarray | None, matrix: np.ndarray, input_hw: tuple[int, int], stride: int) -> np.ndarray:
    """Warp a source-image mask into the network input and average it onto the output grid.

    Args:
        mask: (H_src, W_src) uint8 {0, 1}, or None for "all valid".
        matrix: (2, 3) affine, source pixel-index -> input pixel-index coordinates (the image's own).
        input_hw: (H, W) network input; multiples of ``stride``.
        stride: output stride (8).

    Returns:
        (1, H/stride, W/stride) float32 in [0, 1]: the fraction of each output cell's input pixels that are valid.
    """
    H, W = input_hw
    h, w = H // stride, W // stride
    if mask is None or mask.all():  # the border counts as valid, so an all-valid mask stays all valid
        return np.ones((1, h, w), np.float32)
    warped = cv2.warpAffine(
        mask * np.uint8(255), matrix, (W, H), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=255
    )
    # INTER_AREA at an integer factor averages each stride x stride block: cell i covers input pixels
    # [s*i, s*i + s - 1], the same cells the heatmap and PAF targets use.
    cells = cv2.resize(warped.astype(np.float32), (w, h), interpolation=cv2.INTER_AREA)
    return (cells * (1.0 / 255.0))[None]

"""Reading COCO annotation files: a malformed file is a :class:`UserError` naming it, and annotations whose
keypoints or box hold a non-finite number (NaN, Infinity: JSON parsers accept both) are dropped and counted,
so they never reach a loss, a target or an OKS (a single NaN keypoint made a training's loss NaN)."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from posekit.errors import MissingArtifactError, UserError

if TYPE_CHECKING:
    from pycocotools.coco import COCO

log = logging.getLogger(__name__)


def read_json_file(path: str | os.PathLike, what: str = "JSON file", hint: str = "") -> Any:
    """``json.load`` of ``path``; missing, unreadable or malformed is a :class:`UserError` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise MissingArtifactError(f"{what} not found: {path}. {hint}".strip())
    try:
        with open(path, "rb") as f:
            return json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        where = f" (line {e.lineno}, column {e.colno})" if isinstance(e, json.JSONDecodeError) else ""
        raise UserError(f"{what} {path} is not valid JSON{where}: {getattr(e, 'msg', e)}. {hint}".strip()) from None
    except OSError as e:
        raise UserError(f"cannot read {what} {path}: {e.strerror or e}. {hint}".strip()) from None


_NUMBERS = frozenset((int, float))  # the fast path's exact types: JSON's numbers (bool, an int subclass, is not one)


def _finite(values: Any) -> bool:
    """Whether ``values`` is None, a finite number, or a (nested) list of finite numbers."""
    if values is None:
        return True
    if isinstance(values, (int, float)) and not isinstance(values, bool):
        return math.isfinite(values)
    if isinstance(values, (list, tuple)):
        # The common case, a flat list of numbers (keypoints, a box), in C: one type scan and one exact sum, whose
        # result is finite only if every value is (NaN and Infinity propagate). fsum raises OverflowError when
        # finite values overflow in the sum and ValueError on inf + -inf; the element-wise check then decides.
        if _NUMBERS.issuperset(map(type, values)):
            try:
                if math.isfinite(math.fsum(values)):
                    return True
            except (OverflowError, ValueError):
                pass
            return all(math.isfinite(v) for v in values)
        return all(_finite(v) for v in values)
    return False  # a string, a bool or an object where numbers belong


def drop_non_finite(dataset: dict) -> int:
    """Remove (in place) annotations whose ``keypoints``, ``bbox`` or ``area`` is not all finite numbers;
    returns how many were removed."""
    anns = dataset.get("annotations") or []
    kept = [a for a in anns if all(_finite(a.get(k)) for k in ("keypoints", "bbox", "area"))]
    dropped = len(anns) - len(kept)
    if dropped:
        dataset["annotations"] = kept
    return dropped


def load_coco(ann: str | os.PathLike | COCO) -> COCO:
    """``pycocotools.coco.COCO`` of the annotation file ``ann`` (quietly), or ``ann`` itself if already one.

    Annotations with non-finite keypoints or boxes are dropped (logged); their count is the object's
    ``dropped_annotations`` attribute. A missing or malformed file raises :class:`UserError` naming it.
    """
    from pycocotools.coco import COCO  # imported on use: reading JSON must not need pycocotools loaded

    if isinstance(ann, COCO):
        return ann
    hint = "Check data.val_ann / data.train_ann (or data.root)."
    dataset = read_json_file(ann, "annotation file", hint)
    if not isinstance(dataset, dict) or not isinstance(dataset.get("images"), list):
        raise UserError(f"{ann} is not a COCO annotation file (no 'images' list). {hint}")
    dropped = drop_non_finite(dataset)
    if dropped:
        log.warning("%s: dropped %d annotation(s) with non-finite keypoints or boxes (NaN/Infinity)", ann, dropped)
    coco = COCO()
    coco.dataset = dataset
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            coco.createIndex()
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"{ann} is not a COCO annotation file ({type(e).__name__}: {e}). {hint}") from None
    coco.dropped_annotations = dropped
    return coco

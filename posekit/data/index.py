"""The training index of a COCO keypoints file: which images and people a data set samples, in compact records.

Torch-free (the synthetic generator's thread indexes streamed images with it before torch is imported:
``posekit.data.stream``). Used by :class:`posekit.data.coco.PoseDataset`.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from posekit.data import masks
from posekit.skeleton import Skeleton


def select_main_people(
    centers: np.ndarray, sizes: np.ndarray, num_keypoints: np.ndarray, areas: np.ndarray,
    min_keypoints: int = 5, min_area: float = 1024.0, min_dist_ratio: float = 0.3,
) -> list[int]:  # fmt: skip
    """Indices of the main people of one image (TAO ``_parse_annotation``), in annotation order.

    A person is a main person if it has ``>= min_keypoints`` labeled keypoints, segment area ``>= min_area`` and
    its box centre lies at least ``min_dist_ratio * max(w, h)`` of *its own* box from every main person accepted
    before it. (TAO takes ``max(w, h)`` from a stale loop variable, the image's last annotation: quirk 4, fixed.)

    Args:
        centers: (P, 2) box centres; sizes: (P, 2) box (w, h); num_keypoints, areas: (P,).
    """
    accepted: list[int] = []
    for p in range(len(centers)):
        if num_keypoints[p] < min_keypoints or areas[p] < min_area:
            continue
        radius = min_dist_ratio * float(sizes[p].max())
        if all(np.hypot(*(centers[p] - centers[q])) >= radius for q in accepted):
            accepted.append(p)
    return accepted


def _num_keypoints(ann: Mapping[str, Any]) -> int:
    if "num_keypoints" in ann:
        return int(ann["num_keypoints"])
    return int((np.asarray(ann.get("keypoints") or [0, 0, 0]).reshape(-1, 3)[:, 2] > 0).sum())


def image_record(img: Mapping, anns: Sequence[Mapping], skeleton: Skeleton) -> dict:
    """What one image needs at load time, in compact arrays (the raw COCO dicts are dropped)."""
    anns = [dict(a, num_keypoints=_num_keypoints(a)) for a in anns]
    people = [a for a in anns if a["num_keypoints"] > 0 and not a.get("iscrowd", 0)]
    k_ds = len(skeleton.dataset_joints)
    kps = np.array([a["keypoints"] for a in people], np.float32).reshape(-1, k_ds, 3)
    boxes = np.array([a["bbox"] for a in people], np.float32).reshape(-1, 4)
    # COCO boxes use continuous coordinates (pixel k spans [k, k+1]); keypoints are pixel indices like ours.
    centers = boxes[:, :2] + boxes[:, 2:] / 2 - 0.5
    areas = np.array([a.get("area", w * h) for a, (_, _, w, h) in zip(people, boxes)], np.float32)
    # Only what the loss mask needs: unlabeled people and crowds, plus labeled people when a crowd is present
    # (labeled pixels inside a crowd stay valid).
    ignore: list[dict] = []
    if masks.needs_mask(anns):
        crowd = any(a.get("iscrowd", 0) for a in anns)
        keys = ("segmentation", "iscrowd", "num_keypoints", "bbox")
        ignore = [{k: a.get(k) for k in keys} for a in anns if crowd or a["num_keypoints"] <= 0]
    return {
        "image_id": int(img["id"]),
        "file_name": img["file_name"],
        "hw": (int(img["height"]), int(img["width"])),
        "keypoints": skeleton.to_network(kps),  # (P, J, 3)
        "centers": centers,
        "sizes": boxes[:, 2:],
        "num_keypoints": np.array([a["num_keypoints"] for a in people], np.int32),
        "areas": areas,
        "mask_anns": ignore,
    }


def index_images(
    images: Sequence[Mapping], img_to_anns: Mapping[int, Sequence[Mapping]], skeleton: Skeleton, train: bool,
    min_keypoints: int = 5, min_area: float = 1024.0, max_images: int | None = None,
) -> tuple[list[dict], list[tuple[int, int]]]:  # fmt: skip
    """The dataset's index of ``images`` (COCO image dicts, in the order to keep) and their annotations.

    Returns ``(records, samples)``: one compact record per kept image (:func:`image_record`) and the samples as
    ``(record index, main person)``: one per main person for training, ``(record index, -1)`` per image otherwise.
    Images without a labeled person are skipped (TAO), and for training those without a main person too. The
    data set's constructor and the streamed first epoch (``posekit.data.stream``) both index with this.
    """
    records: list[dict] = []
    samples: list[tuple[int, int]] = []
    for img in images:
        anns = img_to_anns.get(int(img["id"]), [])
        if not any(_num_keypoints(a) > 0 and not a.get("iscrowd", 0) for a in anns):
            continue  # no labeled person: nothing to learn from (TAO skips these images)
        rec = image_record(img, anns, skeleton)
        if train:
            mains = select_main_people(
                rec["centers"], rec["sizes"], rec["num_keypoints"], rec["areas"], min_keypoints, min_area
            )
            if not mains:
                continue
            samples += [(len(records), p) for p in mains]
        else:
            samples.append((len(records), -1))
        records.append(rec)
        if max_images is not None and len(records) >= max_images:
            break
    return records, samples


class Packed:
    """A list of records stored as one pickled byte buffer + offsets.

    DataLoader workers share the dataset by fork; touching millions of small Python objects there copies their
    memory pages (refcounts). One numpy buffer per dataset is never written, so it stays shared (as detectron2).
    """

    def __init__(self, items: Sequence[Any]):
        blobs = [pickle.dumps(x, protocol=pickle.HIGHEST_PROTOCOL) for x in items]
        self._offsets = np.cumsum([0] + [len(b) for b in blobs], dtype=np.int64)
        self._buffer = np.frombuffer(b"".join(blobs), dtype=np.uint8) if blobs else np.zeros(0, np.uint8)

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, i: int) -> Any:
        return pickle.loads(self.blob(i))

    def blob(self, i: int) -> bytes:
        """Item ``i`` as stored (pickled)."""
        return self._buffer[self._offsets[i] : self._offsets[i + 1]].tobytes()


class SampleKey(NamedTuple):
    """A training sample handed to a loader worker whole, where the worker's copy of the data set has no index
    for it (the streamed first epoch, ``posekit.data.stream``): the image's record pickled as in the index
    (:func:`index_images`), and the main person."""

    record: bytes
    main: int

"""COCO person-keypoints dataset -> network inputs, heatmap/PAF targets and loss masks.

Training follows TAO's "one sample per main person" (``duplicate_data_with_each_person_as_center``): every
image yields one sample per *main person* (enough keypoints, a large enough area, not too close to another main
person), augmented around that person (``posekit.data.augment``); the targets hold every labeled person of the
image. Validation (``train=False``) fits the whole image into the input, aspect kept and padded (TAO "strict").

Items (tensors; P people, J joints, L limbs, (H, W) input, (h, w) = (H/8, W/8))::

    image     uint8 (3, H, W)       RGB; the model normalizes it on its device as TAO: x / 256 - 0.5
    heatmaps  float32 (J + 1, h, w) background last
    pafs      float32 (2L, h, w)
    mask      float32 (1, h, w)     fraction of each cell the loss may use (posekit.data.masks)
    image_id  int
    replaced  int                   1 if this item stands in for a sample whose image could not be read, else 0
"""

from __future__ import annotations

import logging
import os
import pickle
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate, get_worker_info

from posekit.codec.encode import Encoder
from posekit.data import masks
from posekit.data.annotations import load_coco
from posekit.data.augment import Augmenter, transform_keypoints, warp_image
from posekit.data.images import CorruptImageError, read_image_rgb, to_chw_uint8
from posekit.errors import UserError
from posekit.runtime.preprocess import BORDER_VALUE, strict_affine
from posekit.skeleton import Skeleton

log = logging.getLogger("posekit.data")


# ============================================================================================== index
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


def _image_record(img: Mapping, anns: Sequence[Mapping], skeleton: Skeleton) -> dict:
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


class _Packed:
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
        return pickle.loads(self._buffer[self._offsets[i] : self._offsets[i + 1]].tobytes())


# ============================================================================================== dataset
class PoseDataset(Dataset):
    """COCO keypoints -> (image, heatmaps, pafs, mask, image_id) items; see the module docstring.

    Args:
        ann_file: COCO person-keypoints JSON.
        image_dir: folder the images' ``file_name`` are relative to.
        skeleton: the keypoint set (dataset -> network order, flips, limbs).
        input_hw: (H, W) network input, multiples of the codec stride.
        codec_cfg: ``CodecConfig`` (stride, sigma, paf_half_width).
        augment_cfg: ``AugmentConfig``; None = no random augmentation.
        train: one sample per main person, person-centric crop (+ augmentation); else one sample per image,
            whole image letterboxed, no augmentation.
        max_images: keep only the first N images (sorted by id) that have a labeled person.
        min_keypoints, min_area: main-person filter (``data.main_person_min_keypoints`` / ``_min_area``).
        seed: fixes the augmentation stream (per worker: ``seed + worker id``); default: torch's seeds
            (``seed_everything`` + the DataLoader's per-worker seeds), so runs are reproducible either way.
        keypoints_only: items carry ``keypoints`` (P, J, 3) float32 in input coordinates instead of ``heatmaps`` and
            ``pafs``; the training device renders the targets (``data.targets_on_device``,
            :func:`posekit.codec.encode.encode_batch`; batch them with :func:`collate_people`).
    """

    def __init__(
        self,
        ann_file: str | os.PathLike,
        image_dir: str | os.PathLike,
        skeleton: Skeleton,
        input_hw: Sequence[int],
        codec_cfg: Any,
        augment_cfg: Any | None = None,
        train: bool = True,
        max_images: int | None = None,
        *,
        min_keypoints: int = 5,
        min_area: float = 1024.0,
        seed: int | None = None,
        keypoints_only: bool = False,
    ):
        self.keypoints_only = keypoints_only
        self.image_dir = Path(image_dir)
        if not self.image_dir.is_dir():
            raise UserError(f"image folder not found: {self.image_dir}")
        self.skeleton = skeleton
        self.input_hw = (int(input_hw[0]), int(input_hw[1]))
        self.stride = int(codec_cfg.stride)
        if any(v % self.stride for v in self.input_hw):
            raise UserError(f"input size {self.input_hw} must be a multiple of the stride {self.stride}")
        self.encoder = Encoder(skeleton, self.input_hw, codec_cfg)  # keypoints -> targets, ``self.encoder(kps)``
        self.train = train
        self.augment = Augmenter(augment_cfg if train else None, skeleton, self.input_hw)
        self.seed = seed

        coco = load_coco(ann_file)
        records, samples = [], []
        for image_id in sorted(coco.imgs):
            anns = coco.imgToAnns.get(image_id, [])
            if not any(_num_keypoints(a) > 0 and not a.get("iscrowd", 0) for a in anns):
                continue  # no labeled person: nothing to learn from (TAO skips these images)
            rec = _image_record(coco.imgs[image_id], anns, skeleton)
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
        self.num_dropped_annotations = int(getattr(coco, "dropped_annotations", 0))  # non-finite, at load
        del coco
        if not samples:
            raise UserError(
                f"{ann_file}: no usable {'training' if train else 'validation'} samples (need images with labeled "
                f"people; for training a main person with >= {min_keypoints} keypoints and area >= {min_area})"
            )
        self._records = _Packed(records)
        self._samples = np.array(samples, dtype=np.int64)  # (N, 2) [record index, main person or -1]
        self.num_images = len(records)
        self.num_skipped = 0  # unreadable images met by this process
        self._bad: set[int] = set()
        self._rng: np.random.Generator | None = None
        self._rng_owner: tuple | None = None

    def __len__(self) -> int:
        return len(self._samples)

    # ------------------------------------------------------------------ randomness
    def _generator(self) -> np.random.Generator:
        """This process's augmentation stream; re-seeded in each DataLoader worker (and each worker epoch)."""
        info = get_worker_info()
        owner = (os.getpid(), None if info is None else (info.id, info.seed))
        if self._rng_owner != owner:
            if self.seed is not None:
                seed = [self.seed, 0 if info is None else info.id + 1]
            else:
                seed = info.seed if info is not None else torch.initial_seed()
            self._rng, self._rng_owner = np.random.default_rng(seed), owner
        return self._rng

    # ------------------------------------------------------------------ samples
    def sample(self, index: int, rng: np.random.Generator | None = None) -> dict[str, Any]:
        """The transformed sample before target encoding (for tests, visualisation and benchmarks).

        Returns a dict: ``image`` (H, W, 3) uint8 RGB input, ``keypoints`` (P, J, 3) input coordinates, network
        order (labels swapped if flipped), ``mask`` (1, h, w) float32, ``matrix`` (2, 3) source -> input,
        ``flipped``, ``image_id``, ``file_name``. Raises :class:`CorruptImageError` for an unreadable image.
        """
        rec_idx, main = (int(v) for v in self._samples[index])
        rec = self._records[rec_idx]
        img = read_image_rgb(self.image_dir / rec["file_name"])
        rng = rng if rng is not None else self._generator()
        if main >= 0:
            matrix, flipped = self.augment.geometry(rng, rec["centers"][main], float(rec["sizes"][main, 1]))
            border = self.augment.border_value
        else:
            # the inference preprocessing's own letterbox (TAO strict), so the val loss sees what eval sees
            matrix, flipped = strict_affine(img.shape[:2], self.input_hw), False
            border = BORDER_VALUE
        image = warp_image(img, matrix, self.input_hw, border)
        image = self.augment.color(image, rng)
        keypoints = transform_keypoints(rec["keypoints"], matrix)
        if flipped:
            keypoints = self.augment.flip_joints(keypoints)
        valid = masks.valid_mask(rec["mask_anns"], *img.shape[:2]) if rec["mask_anns"] else None
        mask = masks.warp_mask(valid, matrix, self.input_hw, self.stride)
        return {
            "image": image,
            "keypoints": keypoints,
            "mask": mask,
            "matrix": matrix,
            "flipped": flipped,
            "image_id": rec["image_id"],
            "file_name": rec["file_name"],
        }

    def __getitem__(self, index: int) -> dict[str, Any]:
        for attempt in range(len(self)):
            i = (index + attempt) % len(self)
            if int(self._samples[i, 0]) in self._bad:
                continue
            try:
                s = self.sample(i)
            except CorruptImageError as e:
                self._skip(i, e)
                continue
            item = {
                "image": torch.from_numpy(to_chw_uint8(s["image"])),
                "mask": torch.from_numpy(s["mask"]),
                "image_id": s["image_id"],
                # 1 when this item replaces a sample whose image could not be read: the training process sums
                # these into summary.json (the loader workers' own counters are out of its sight)
                "replaced": int(attempt > 0),
            }
            if self.keypoints_only:
                kps = np.asarray(s["keypoints"], np.float32).reshape(-1, self.skeleton.num_joints, 3)
                item["keypoints"] = torch.from_numpy(kps)
            else:
                heatmaps, pafs = self.encoder(s["keypoints"])
                item["heatmaps"], item["pafs"] = torch.from_numpy(heatmaps), torch.from_numpy(pafs)
            return item
        raise UserError(f"no readable image among the {self.num_images} images in {self.image_dir}")

    def _skip(self, sample_index: int, error: Exception) -> None:
        """Remember an unreadable image (its other samples are skipped silently) and warn once for it."""
        self._bad.add(int(self._samples[sample_index, 0]))
        self.num_skipped += 1
        log.warning("skipping an unreadable image (%d so far in this process): %s", self.num_skipped, error)


def collate_people(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """``default_collate`` for items with ``keypoints`` (P_i, J, 3): those are padded with v = 0 rows to the
    batch's largest P (B, P, J, 3); padded rows render nothing (:func:`posekit.codec.encode.encode_batch`)."""
    kps = [it["keypoints"] for it in items]
    most = max(k.shape[0] for k in kps)
    padded = torch.zeros(len(kps), most, *kps[0].shape[1:], dtype=torch.float32)
    for i, k in enumerate(kps):
        padded[i, : k.shape[0]] = k
    batch = default_collate([{k: v for k, v in it.items() if k != "keypoints"} for it in items])
    batch["keypoints"] = padded
    return batch

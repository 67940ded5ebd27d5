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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate, get_worker_info

from posekit.codec.encode import Encoder
from posekit.data import masks
from posekit.data.annotations import load_coco
from posekit.data.augment import AugmentDraws, Augmenter, transform_keypoints, warp_image, warp_plan
from posekit.data.images import CorruptImageError, decode_image_rgb, read_image_bytes, read_image_rgb, to_chw_uint8
from posekit.data.index import Packed, SampleKey, index_images, select_main_people  # noqa: F401 (re-exported)
from posekit.errors import UserError
from posekit.runtime.preprocess import BORDER_VALUE, strict_affine
from posekit.skeleton import Skeleton

log = logging.getLogger("posekit.data")


# ============================================================================================== dataset
class PoseDataset(Dataset):
    """COCO keypoints -> (image, heatmaps, pafs, mask, image_id) items; see the module docstring.

    Args:
        ann_file: COCO person-keypoints JSON; None for an empty index, whose samples come whole as
            :class:`SampleKey` (the streamed first epoch, ``posekit.data.stream``).
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
        device_augment: items are :meth:`device_sample`'s: the source image and the augmentation's draws; the
            training device warps, jitters and renders (``data.augment_on_device``; batch them with
            ``posekit.data.device_augment.collate_device_items``).
        jpeg_bytes: with ``device_augment``, JPEG files are shipped as bytes for the device to decode
            (``data.decode_on_device``); other formats are still decoded here.
    """

    def __init__(
        self,
        ann_file: str | os.PathLike | None,
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
        device_augment: bool = False,
        jpeg_bytes: bool = False,
    ):
        self.keypoints_only = keypoints_only
        self.device_augment = device_augment
        self.jpeg_bytes = jpeg_bytes
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

        records, samples = [], []
        self.num_dropped_annotations = 0
        if ann_file is not None:
            coco = load_coco(ann_file)
            images = [coco.imgs[i] for i in sorted(coco.imgs)]
            records, samples = index_images(images, coco.imgToAnns, skeleton, train, min_keypoints, min_area,
                                            max_images)
            self.num_dropped_annotations = int(getattr(coco, "dropped_annotations", 0))  # non-finite, at load
            del coco
        if ann_file is not None and not samples:
            raise UserError(
                f"{ann_file}: no usable {'training' if train else 'validation'} samples (need images with labeled "
                f"people; for training a main person with >= {min_keypoints} keypoints and area >= {min_area})"
            )
        self._records = Packed(records)
        self._samples = np.array(samples, dtype=np.int64)  # (N, 2) [record index, main person or -1]
        self.sample_image_ids = np.array([records[r]["image_id"] for r, _ in samples], np.int64)  # (N,)
        self.num_images = len(records)
        self.num_skipped = 0  # unreadable images met by this process
        self._bad: set[int] = set()
        self._rng: np.random.Generator | None = None
        self._rng_owner: tuple | None = None

    def __len__(self) -> int:
        return len(self._samples)

    def record(self, index: int | SampleKey) -> tuple[dict, int]:
        """``(image record, main person or -1)`` of sample ``index``: a position in this data set's index, or a
        :class:`SampleKey` that carries both."""
        if isinstance(index, SampleKey):
            return pickle.loads(index.record), int(index.main)
        rec_idx, main = (int(v) for v in self._samples[index])
        return self._records[rec_idx], main

    def key(self, index: int) -> SampleKey:
        """Sample ``index`` as a :class:`SampleKey`, which any copy of the data set can load."""
        rec_idx, main = (int(v) for v in self._samples[index])
        return SampleKey(self._records.blob(rec_idx), main)

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
    def _placement(self, rec: dict, main: int, src_hw: tuple[int, int], rng: np.random.Generator | None,
                   draws: AugmentDraws | None) -> tuple[AugmentDraws, np.ndarray, int]:
        """``(draws, (2, 3) source -> input matrix, border value)`` of one sample: a training sample's random
        person-centric affine (``draws`` given, or drawn from ``rng``, default this process's stream), or a
        validation sample's letterbox (no draws)."""
        if main < 0:
            # the inference preprocessing's own letterbox (TAO strict), so the val loss sees what eval sees
            return AugmentDraws(), strict_affine(src_hw, self.input_hw), BORDER_VALUE
        if draws is None:
            draws = self.augment.draw(rng if rng is not None else self._generator())
        matrix = self.augment.matrix(draws, rec["centers"][main], float(rec["sizes"][main, 1]))
        return draws, matrix, self.augment.border_value

    def sample(self, index: int | SampleKey, rng: np.random.Generator | None = None, draws: AugmentDraws | None = None
               ) -> dict[str, Any]:
        """The transformed sample before target encoding (for tests, visualisation and benchmarks).

        ``draws`` (default: drawn from ``rng``, default this process's stream) fixes the augmentation, so the
        device path can be fed the same ones (:meth:`device_sample`).

        Returns a dict: ``image`` (H, W, 3) uint8 RGB input, ``keypoints`` (P, J, 3) input coordinates, network
        order (labels swapped if flipped), ``mask`` (1, h, w) float32, ``matrix`` (2, 3) source -> input,
        ``flipped``, ``draws``, ``image_id``, ``file_name``. Raises :class:`CorruptImageError` for an unreadable
        image.
        """
        rec, main = self.record(index)
        img = read_image_rgb(self.image_dir / rec["file_name"])
        draws, matrix, border = self._placement(rec, main, img.shape[:2], rng, draws)
        image = warp_image(img, matrix, self.input_hw, border)
        image = self.augment.apply_color(image, draws.color)
        keypoints = transform_keypoints(rec["keypoints"], matrix)
        if draws.flip:
            keypoints = self.augment.flip_joints(keypoints)
        valid = masks.valid_mask(rec["mask_anns"], *img.shape[:2]) if rec["mask_anns"] else None
        mask = masks.warp_mask(valid, matrix, self.input_hw, self.stride)
        return {
            "image": image,
            "keypoints": keypoints,
            "mask": mask,
            "matrix": matrix,
            "flipped": draws.flip,
            "draws": draws,
            "image_id": rec["image_id"],
            "file_name": rec["file_name"],
        }

    def device_sample(self, index: int | SampleKey, rng: np.random.Generator | None = None,
                      draws: AugmentDraws | None = None) -> dict[str, Any]:
        """What the device path needs of a sample (``data.augment_on_device``): the source and the draws, not the
        warped image. The draws come from the same stream, in the same order, as :meth:`sample`'s.

        Returns a dict: ``source`` (H_src, W_src, 3) uint8 RGB, or None when ``jpeg`` holds the file's JPEG bytes
        (``jpeg_bytes``; the size then comes from the annotation); ``source_hw`` (2,); ``matrix`` (2, 3) source
        -> input (keypoints, mask); ``warp_matrix`` (2, 3) and ``shrink_hw`` (h, w), (0, 0) for none: the image's
        warp plan (``augment.warp_plan``); ``flipped``; ``color`` (8,) the colour draws
        (``ColorDraws.as_row``, identity without jitter); ``border``; ``keypoints`` (P, J, 3) in *source*
        coordinates, network order; ``mask`` (1, h, w) as :meth:`sample`'s; ``draws``, ``image_id``,
        ``file_name``.
        """
        from posekit.data.device_augment import is_jpeg
        from posekit.data.device_color import IDENTITY_ROW

        rec, main = self.record(index)
        path = self.image_dir / rec["file_name"]
        data = read_image_bytes(path)
        source, jpeg = None, None
        if self.jpeg_bytes and is_jpeg(data):
            jpeg, src_hw = data, tuple(rec["hw"])
        else:
            source = decode_image_rgb(data, path)
            src_hw = source.shape[:2]
        draws, matrix, border = self._placement(rec, main, src_hw, rng, draws)
        shrink_hw, warp_matrix = warp_plan(src_hw, matrix)
        valid = masks.valid_mask(rec["mask_anns"], *src_hw) if rec["mask_anns"] else None
        return {
            "source": source,
            "jpeg": jpeg,
            "source_hw": np.array(src_hw, np.int64),
            "matrix": np.asarray(matrix, np.float64),
            "warp_matrix": np.asarray(warp_matrix, np.float64),
            "shrink_hw": np.array(shrink_hw or (0, 0), np.int64),
            "flipped": draws.flip,
            "color": np.array(draws.color.as_row() if draws.color else IDENTITY_ROW, np.float64),
            "border": border,
            "keypoints": np.asarray(rec["keypoints"], np.float32).reshape(-1, self.skeleton.num_joints, 3),
            "mask": masks.warp_mask(valid, matrix, self.input_hw, self.stride),
            "draws": draws,
            "image_id": rec["image_id"],
            "file_name": rec["file_name"],
        }

    def _device_item(self, i: int | SampleKey, attempt: int) -> dict[str, Any]:
        """:meth:`device_sample` as tensors for ``collate_device_items``."""
        s = self.device_sample(i)
        item = {k: torch.from_numpy(s[k]) for k in ("source_hw", "matrix", "warp_matrix", "shrink_hw", "color",
                                                     "keypoints", "mask")}
        item.update(
            source=None if s["source"] is None else torch.from_numpy(to_chw_uint8(s["source"])),
            jpeg=s["jpeg"], flipped=int(s["flipped"]), border=int(s["border"]), image_id=s["image_id"],
            replaced=int(attempt > 0), file_name=s["file_name"],
        )
        return item

    def __getitem__(self, index: int | SampleKey) -> dict[str, Any]:
        if isinstance(index, SampleKey):
            # a streamed sample: this copy of the data set has no index to pick a replacement from, and the image
            # is one the synthetic generator has just written, so an unreadable one means a broken cache
            try:
                return self._item(index, 0)
            except CorruptImageError as e:
                raise UserError(f"{e}. The synthetic data set was just generated and should be readable: delete "
                                f"its cache folder ({self.image_dir.parent}) and run again.") from None
        for attempt in range(len(self)):
            i = (index + attempt) % len(self)
            if int(self._samples[i, 0]) in self._bad:
                continue
            try:
                return self._item(i, attempt)
            except CorruptImageError as e:
                self._skip(i, e)
                continue
        raise UserError(f"no readable image among the {self.num_images} images in {self.image_dir}")

    def _item(self, i: int | SampleKey, attempt: int) -> dict[str, Any]:
        """Sample ``i`` as the loader's tensors; ``attempt`` > 0 marks it as standing in for an unreadable one."""
        if self.device_augment:
            return self._device_item(i, attempt)
        s = self.sample(i)
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

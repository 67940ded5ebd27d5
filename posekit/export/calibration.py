"""INT8 calibration inputs: TAO's image sampler, the calibration data file and ONNX Runtime's data reader.

1. :func:`sample_calibration_images` is TAO's ``sample_calibration_images.py`` with its criteria (an image
   qualifies when at least ``min_persons`` of its annotations have at least ``min_keypoints`` labeled
   keypoints) and two fixes: exactly ``num_images`` images are selected (TAO's loop ``break``s only once
   ``len(selected) > n``, so it copies n+1), and the shuffle is seeded (TAO's ``random.shuffle`` is not).
   The selection is written as a list file (one absolute path per line) instead of copying images.
2. :func:`build_calibration_data` preprocesses the images once, with the **same** function inference uses
   (``posekit.runtime.preprocess.preprocess``, strict mode: aspect-preserving letterbox on gray 128). TAO
   stretch-resizes calibration images while strict inference pads, so its INT8 ranges are measured on
   inputs the engine never sees (TAO quirk 7). The file (``calib.<H>.<W>.npz``, like TAO's tensorfile) stores
   the letterboxed uint8 canvases, which is lossless (normalization is affine in the uint8 value) and 4x
   smaller than float32; later exports reuse it while the image list and input size match.
3. :class:`CalibrationReader` feeds those batches to ONNX Runtime's calibrators.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from onnxruntime.quantization import CalibrationDataReader
from tqdm import tqdm

from posekit import io
from posekit.data.images import IMAGE_SUFFIXES, CorruptImageError, normalize, read_image_rgb
from posekit.errors import UserError

log = logging.getLogger(__name__)

DATA_FORMAT_VERSION = "posekit-calib/1"


# ------------------------------------------------------------------------------------------------ sampling
def qualifying_image_ids(coco: dict, min_persons: int = 1, min_keypoints: int = 5) -> list[int]:
    """Ids of images with >= ``min_persons`` annotations having ``num_keypoints >= min_keypoints`` (TAO's test;
    crowd regions have 0 keypoints, so they never count). Sorted by id."""
    anns = coco.get("annotations", [])
    ids = np.fromiter((a["image_id"] for a in anns), dtype=np.int64, count=len(anns))
    nkp = np.fromiter((a.get("num_keypoints", 0) for a in anns), dtype=np.int64, count=len(anns))
    good, counts = np.unique(ids[nkp >= min_keypoints], return_counts=True)
    return sorted(int(i) for i in good[counts >= min_persons])


def sample_calibration_images(
    ann_file: str | os.PathLike,
    images_dir: str | os.PathLike,
    num_images: int,
    *,
    min_persons: int = 1,
    min_keypoints: int = 5,
    seed: int = 42,
    shuffle: bool = True,
) -> list[Path]:
    """Pick exactly ``num_images`` calibration images (fewer, with a warning, if fewer qualify).

    Returns absolute image paths in selection order: a seeded shuffle of the qualifying ids (sorted first,
    so the result does not depend on the annotation file's order), or ascending ids when ``shuffle`` is off.
    """
    from posekit.data.annotations import read_json_file

    coco = read_json_file(ann_file, "annotation file", "Check data.train_ann (or data.root).")
    files = {int(im["id"]): im["file_name"] for im in coco.get("images", [])}
    ids = [i for i in qualifying_image_ids(coco, min_persons, min_keypoints) if i in files]
    if shuffle:
        random.Random(seed).shuffle(ids)
    if not ids:
        raise UserError(
            f"no image in {ann_file} has >= {min_persons} persons with >= {min_keypoints} keypoints each: lower "
            "precision.calibration.min_persons / min_keypoints, or give images with precision.calibration.images=PATH"
        )
    if len(ids) < num_images:
        log.warning("only %d images qualify for calibration (asked for %d); using all of them", len(ids), num_images)
    root = Path(images_dir)
    return [(root / files[i]).resolve() for i in ids[:num_images]]


def write_image_list(path: str | os.PathLike, images: Sequence[str | os.PathLike], header: str | None = None) -> Path:
    """One path per line; ``header`` (a ``#`` comment line) records how the list was made."""
    lines = ([header] if header else []) + [str(Path(p)) for p in images]
    return io.write_text(path, "\n".join(lines) + "\n")


def read_image_list(source: str | os.PathLike, num_images: int | None = None, seed: int = 42) -> list[Path]:
    """Images from a list file (one path per line; relative paths are relative to the file) or a folder.

    A folder's images are sorted, then a seeded sample of ``num_images`` is taken if it holds more.
    """
    source = Path(os.path.expanduser(str(source)))
    if source.is_dir():
        images = sorted(p.resolve() for p in source.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if num_images is not None and len(images) > num_images:
            images = sorted(random.Random(seed).sample(images, num_images))
    elif source.is_file():
        lines = [ln.strip() for ln in source.read_text().splitlines()]
        images = [(source.parent / ln).resolve() for ln in lines if ln and not ln.startswith("#")]
    else:
        raise UserError(f"calibration images not found: {source} (give a folder of images or a list file)")
    if not images:
        raise UserError(f"no calibration images in {source}")
    return images


# ------------------------------------------------------------------------------------------------ data file
@dataclass
class CalibrationData:
    """canvases: (N, H, W, 3) uint8 RGB, the letterboxed network inputs; images: their source paths."""

    canvases: np.ndarray
    images: list[str]

    @property
    def input_hw(self) -> tuple[int, int]:
        return int(self.canvases.shape[1]), int(self.canvases.shape[2])

    def batches(self) -> np.ndarray:
        """(N, 3, H, W) float32, normalized exactly as at inference."""
        return normalize(self.canvases)


def build_calibration_data(
    images: Sequence[str | os.PathLike],
    input_hw: tuple[int, int],
    path: str | os.PathLike,
    interpolation: str = "linear",
) -> CalibrationData:
    """Preprocess ``images`` (strict mode) and write the calibration data file atomically.

    Unreadable images are skipped with a warning; none readable is a :class:`UserError`.
    """
    from posekit.runtime.preprocess import preprocess

    canvases, used = [], []
    for p in tqdm(images, desc="calibration data", unit="img", leave=False):
        try:
            img = read_image_rgb(p)
        except CorruptImageError as e:
            log.warning("calibration: skipping %s", e)
            continue
        batch = preprocess(img, input_hw, mode="strict", interpolation=interpolation).batch[0]
        canvases.append(_to_canvas(batch))
        used.append(str(p))
    if not canvases:
        first = f" (first: {images[0]})" if images else ""
        raise UserError(f"none of the {len(images)} calibration images could be read{first}; check "
                        "precision.calibration.images or the train images")
    data = CalibrationData(np.stack(canvases), used)
    with io.atomic_path(path) as tmp:
        with open(tmp, "wb") as f:  # a file object: np.savez would append '.npz' to a bare name
            np.savez(
                f,
                canvases=data.canvases,
                images=np.array(used),
                input_hw=np.array(input_hw),
                interpolation=np.array(interpolation),
                version=np.array(DATA_FORMAT_VERSION),
            )
    return data


def load_calibration_data(path: str | os.PathLike) -> CalibrationData:
    with np.load(path, allow_pickle=False) as z:
        if str(z["version"]) != DATA_FORMAT_VERSION:
            raise UserError(f"{path}: calibration data of an unknown version; delete it to rebuild it")
        return CalibrationData(z["canvases"], [str(s) for s in z["images"]])


def calibration_data_matches(
    path: str | os.PathLike, images: Sequence[str | os.PathLike], input_hw: tuple[int, int], interpolation: str
) -> bool:
    """Whether the file at ``path`` was built from exactly ``images`` at ``input_hw`` (so it can be reused)."""
    if not Path(path).is_file():
        return False
    try:
        with np.load(path, allow_pickle=False) as z:
            return (
                str(z["version"]) == DATA_FORMAT_VERSION
                and tuple(int(v) for v in z["input_hw"]) == tuple(int(v) for v in input_hw)
                and str(z["interpolation"]) == interpolation
                and [str(s) for s in z["images"]] == [str(p) for p in images]
            )
    except (OSError, KeyError, ValueError):
        return False


def _to_canvas(batch: np.ndarray) -> np.ndarray:
    """(3, H, W) normalized float32 -> (H, W, 3) uint8, exactly (x/256 - 0.5 is invertible on integers)."""
    canvas = np.rint((batch.transpose(1, 2, 0) + 0.5) * 256.0).clip(0, 255).astype(np.uint8)
    if not np.array_equal(normalize(canvas), batch):  # someone changed the normalization: fail loudly
        raise RuntimeError("calibration canvas is not a lossless copy of the preprocessed input")
    return canvas


# ------------------------------------------------------------------------------------------------ reader
class CalibrationReader(CalibrationDataReader):
    """Feeds (N, 3, H, W) normalized batches to ONNX Runtime's calibrators, in the model's input layout.

    ``batch_size`` must match a fixed batch dimension of the model (posekit exports batch 1 unless
    ``export.dynamic_batch``); the last batch may be short only for dynamic-batch models.
    """

    def __init__(self, data: np.ndarray, input_name: str, batch_size: int = 1, channels_last: bool = False):
        self.data = np.transpose(data, (0, 2, 3, 1)) if channels_last else data
        self.input_name = input_name
        self.batch_size = max(1, int(batch_size))
        self.start, self.end = 0, len(self.data)
        self.rewind()

    @property
    def num_samples(self) -> int:
        return len(self.data)

    def _batches(self):
        for i in range(self.start, self.end, self.batch_size):
            yield {self.input_name: np.ascontiguousarray(self.data[i : min(i + self.batch_size, self.end)])}

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._iter, None)

    def rewind(self) -> None:
        self._iter = self._batches()

    def __len__(self) -> int:
        return -(-(self.end - self.start) // self.batch_size)

    def set_range(self, start_index: int, end_index: int) -> None:
        self.start, self.end = start_index, min(end_index, len(self.data))
        self.rewind()

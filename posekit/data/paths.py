"""Where the data is: ``resolve_data(cfg)`` -> the four paths every stage reads (annotations + image folders).

``data=synthetic`` generates (or reuses) the embedded dataset; ``data=coco`` checks that every path exists at
start-up, so a typo fails in a second with the override that fixes it, not after the model is built.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, InterpolationResolutionError

from posekit.errors import UserError
from posekit.skeleton import Skeleton


@dataclass(frozen=True)
class DataPaths:
    train_ann: Path | None  # None: not asked for (``resolve_data(splits=("val",))``)
    train_images: Path | None
    val_ann: Path | None
    val_images: Path | None


_KEYS = ("train_ann", "train_images", "val_ann", "val_images")


def resolve_data(cfg: DictConfig, splits: tuple[str, ...] = ("train", "val")) -> DataPaths:
    """The dataset's paths for the composed config (``cfg.data``, ``cfg.keypoints``).

    ``splits``: what the caller reads. For COCO only those paths must be set and exist (eval, bench and the
    export's parity check read ``val`` only, so they run with ``data.val_ann`` + ``data.val_images`` alone); the
    others are None. Raises :class:`UserError` naming the missing path and the override that sets it.
    """
    name = cfg.data.name
    if name == "synthetic":
        from posekit.data.synthetic import ensure_synthetic

        skeleton = Skeleton.from_cfg(OmegaConf.to_container(cfg.keypoints, resolve=True))
        return DataPaths(**ensure_synthetic(cfg.data.synthetic, skeleton))
    if name != "coco":
        raise UserError(f"data.name={name!r}: allowed values are ['synthetic', 'coco']")

    paths: dict[str, Path | None] = dict.fromkeys(_KEYS)
    for key in (k for k in _KEYS if k.split("_")[0] in splits):
        try:
            value = cfg.data[key]
        except (MissingMandatoryValue, InterpolationResolutionError):
            value = None
        if value is None:
            raise UserError(
                f"data.{key} is not set: pass data.root=/path/to/coco (holding annotations/, train2017/ and "
                f"val2017/) or set the path itself with data.{key}=..."
            )
        paths[key] = Path(os.path.expanduser(str(value))).resolve()
    for key, path in paths.items():
        if path is None:
            continue
        kind = "annotation file" if key.endswith("_ann") else "image folder"
        ok = path.is_file() if key.endswith("_ann") else path.is_dir()
        if not ok:
            raise UserError(
                f"COCO {kind} data.{key} not found: {path}. Point data.root=/path/to/coco at a folder holding "
                f"annotations/person_keypoints_{{train,val}}2017.json, train2017/ and val2017/, or override the "
                f"path itself: data.{key}=/path/to/{'file.json' if key.endswith('_ann') else 'images'}"
            )
    return DataPaths(**paths)

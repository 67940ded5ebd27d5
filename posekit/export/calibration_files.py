"""An experiment's calibration files: the selected images (``calibrate/images.txt``) and their preprocessed
inputs (``calibrate/calib.<H>.<W>.npz``), built once and reused by the calibrate stage and every INT8 export."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from posekit.experiment import Experiment
from posekit.export.artifacts import artifact_record, calib_data_name
from posekit.export.calibration import (
    CalibrationData,
    build_calibration_data,
    calibration_data_matches,
    load_calibration_data,
    read_image_list,
    sample_calibration_images,
    write_image_list,
)

log = logging.getLogger("posekit.calibrate")


def select_images(cfg: DictConfig, list_path: Path) -> list[Path]:
    """The calibration images: ``precision.calibration.images`` if set, else TAO's sampler on the train set.

    A sampled selection is written to ``list_path`` with its settings on the first line and reused while they
    match (sampling reads the whole train annotation file: seconds on COCO).
    """
    cal = cfg.precision.calibration
    if cal.images:
        return read_image_list(cal.images, cal.num_images, cal.seed)
    from posekit.data.paths import resolve_data

    data = resolve_data(cfg)
    header = (f"# posekit calibration images: ann={data.train_ann} num_images={cal.num_images} "
              f"min_persons={cal.min_persons} min_keypoints={cal.min_keypoints} seed={cal.seed}")
    if list_path.is_file() and list_path.read_text().splitlines()[:1] == [header]:
        return read_image_list(list_path)
    images = sample_calibration_images(
        data.train_ann, data.train_images, cal.num_images,
        min_persons=cal.min_persons, min_keypoints=cal.min_keypoints, seed=cal.seed,
    )
    write_image_list(list_path, images, header=header)
    return images


def prepare_calibration(cfg: DictConfig, exp: Experiment | None = None) -> tuple[CalibrationData, dict[str, Any]]:
    """Select the images and build (or reuse) the calibration data file for ``cfg.model.input_shape``.

    Returns the data and the ``summary.json`` records of the list and data files.
    """
    exp = exp or Experiment(cfg)
    folder = exp.dir("calibrate")
    input_hw = tuple(int(v) for v in cfg.model.input_shape)
    list_path = folder / "images.txt"
    images = select_images(cfg, list_path)
    if cfg.precision.calibration.images:  # an explicit selection: record what was used
        write_image_list(list_path, images, header=f"# posekit calibration images: {cfg.precision.calibration.images}")
    data_path = folder / calib_data_name(input_hw)
    interpolation = str(cfg.runtime.interpolation)
    if calibration_data_matches(data_path, images, input_hw, interpolation):
        log.info("calibration data: reusing %s (%d images)", data_path, len(images))
        data = load_calibration_data(data_path)
    else:
        log.info("calibration data: preprocessing %d images at %dx%d -> %s", len(images), *input_hw, data_path)
        data = build_calibration_data(images, input_hw, data_path, interpolation)
    records = {
        "calibration_images": artifact_record(list_path, precision="int8", format="image-list",
                                              num_images=len(images)),
        "calibration_data": artifact_record(data_path, precision="int8", format="npz-uint8-canvases",
                                            input_shape=[len(data.images), 3, *input_hw]),
    }
    return data, records

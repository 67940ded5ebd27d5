"""``stage=calibrate``: pick the INT8 calibration images and cache their preprocessed inputs.

    python launch.py stage=calibrate                               # sample the train set (TAO's criteria)
    python launch.py stage=calibrate precision.calibration.images=/path/to/folder_or_list.txt

Writes ``<experiment>/calibrate/images.txt`` (the selection, one path per line) and
``<experiment>/calibrate/calib.<H>.<W>.npz`` (the strict-preprocessed inputs, TAO's tensorfile). The export
stage with ``precision=int8`` calls :func:`~posekit.export.calibration_files.prepare_calibration` itself and
reuses both files while the selection settings, the images and the input size are unchanged.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from posekit.experiment import Experiment
from posekit.export.calibration_files import prepare_calibration

MAIN_METRIC = "num_images"


def run(cfg: DictConfig) -> dict[str, Any]:
    exp = Experiment(cfg)
    data, records = prepare_calibration(cfg, exp)
    folder = exp.dir("calibrate")
    metrics = {"num_images": len(data.images), "input_hw": list(data.input_hw)}
    exp.write_summary(folder, "calibrate", artifacts=records, metrics=metrics)
    print(f"calibration: {len(data.images)} images at {data.input_hw[0]}x{data.input_hw[1]} -> "
          f"{records['calibration_data']['path']}", flush=True)
    return metrics

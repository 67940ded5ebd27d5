"""One module per stage, each with ``run(cfg) -> dict`` of figures and a ``MAIN_METRIC`` key.

``run_stage`` validates the composed config, dispatches on ``cfg.stage`` and returns the main metric as a float,
so Hydra sweepers can optimize it. User errors (bad override, missing file) print one clear message and exit 2.
"""

from __future__ import annotations

import importlib
import logging
import sys
from typing import Any

from omegaconf import DictConfig

from posekit.config import validate
from posekit.errors import UserError

log = logging.getLogger("posekit")

STAGES = ("train", "prune", "retrain", "export", "eval", "infer", "bench", "calibrate", "pipeline")


def stage_module(name: str) -> Any:
    return importlib.import_module(f"posekit.stages.{name}")


def _multirun() -> bool:
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    except Exception:  # not under Hydra (tests calling run_stage directly)
        return False


def run_stage(cfg: DictConfig) -> float | None:
    stage = cfg.stage.value if hasattr(cfg.stage, "value") else str(cfg.stage)
    try:
        validate(cfg)
        module = stage_module(stage)
        metrics = module.run(cfg) or {}
    except UserError as e:
        log.error("%s", e)
        print(f"posekit: error: {e}", file=sys.stderr)
        if _multirun():  # one bad point must not end the whole sweep: the report shows it as failed
            return None
        sys.exit(2)
    main = getattr(module, "MAIN_METRIC", None)
    value = metrics.get(main) if main else None
    return float(value) if isinstance(value, (int, float)) else None

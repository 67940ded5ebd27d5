"""One module per stage, each with ``run(cfg) -> dict`` and a ``MAIN_METRIC`` key. The dict holds the stage's
figures and, under ``written``, the records of the files it wrote (:class:`posekit.export.artifacts.Artifact`), which
the pipeline hands to the next step.

``run_stage`` validates the composed config, prepares the experiment (writable, locked, cleaned, the trained
model's settings: :func:`posekit.preflight.prepared`), dispatches on ``cfg.stage`` and returns the main metric as
a float, so Hydra sweepers can optimize it. This is the one place user errors are reported: a
:class:`~posekit.errors.UserError` (bad override, missing or corrupt file, busy experiment) or a read-only/full
disk prints one line and exits 2; a traceback only with ``POSEKIT_DEBUG=1`` or ``hydra.verbose=true``.
"""

from __future__ import annotations

import importlib
import logging
import sys
from typing import Any

from omegaconf import DictConfig

from posekit.config import validate
from posekit.errors import EXIT_CODE, UserError, from_os_error, report

log = logging.getLogger("posekit")

# stages whose first step trains on the composed config's data: the loader's forkserver and the synthetic data set
# start before the stage's imports (posekit.data.early)
EARLY_START_STAGES = ("train",)


def stage_module(name: str) -> Any:
    return importlib.import_module(f"posekit.stages.{name}")


def _multirun() -> bool:
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    except Exception:  # not under Hydra (tests calling run_stage directly)
        return False


def _hydra_verbose() -> object:
    try:
        from hydra.core.hydra_config import HydraConfig

        return HydraConfig.get().verbose if HydraConfig.initialized() else None
    except Exception:
        return None


def _overrides() -> list[str] | None:
    from posekit.inherit import hydra_overrides

    try:
        return hydra_overrides()
    except Exception:
        return None


def run_stage(cfg: DictConfig) -> float | None:
    stage = cfg.stage.value if hasattr(cfg.stage, "value") else str(cfg.stage)
    try:
        validate(cfg)
        if stage == "pipeline" and _multirun():  # a sweep point: its steps lock their own (shared) folders
            module = stage_module(stage)
            metrics = module.run(cfg) or {}
        else:
            from posekit.preflight import prepared

            with prepared(stage, cfg, overrides=_overrides()) as ready:
                if stage in EARLY_START_STAGES:  # before the stage's imports (torch, Lightning: seconds, cold)
                    from posekit.data import early

                    early.start(ready)
                module = stage_module(stage)
                metrics = module.run(ready) or {}
    except (UserError, OSError) as e:
        error = e if isinstance(e, UserError) else from_os_error(e)
        if error is None:  # not the user's to fix: a bug, with its traceback
            raise
        report(error, _hydra_verbose(), raised=e)
        if _multirun():  # one bad point must not end the whole sweep: the report shows it as failed
            return None
        sys.exit(EXIT_CODE)
    main = getattr(module, "MAIN_METRIC", None)
    value = metrics.get(main) if main else None
    return float(value) if isinstance(value, (int, float)) else None

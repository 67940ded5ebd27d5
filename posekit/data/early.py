"""What a training process starts before it imports torch, so that it runs beside the imports, the model and the
trainer set-up instead of after them (issue: cold start-up before the first step).

* the loader's forkserver (``posekit.data.forkserver``): it imports torch, OpenCV and albumentations in its own
  process; the loader workers fork from it later, already loaded;
* the synthetic data set, when it is not cached yet: generated in a background thread (its process pool does the
  work). The data module does not need to know: it asks for the data set as before and waits on the data set's
  file lock (``posekit.data.synthetic``) until the background generation has finished, as it would for another
  process generating it. An error there is left to that call to report.

Measured on the 2-core development VM, ``preset=cpu_demo`` with 2 loader workers: docs/data.md, "Start-up".
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("posekit.data")

# the background generation's wall-clock times (time.time()) and whether it generated (False: the set was cached)
_record: dict[str, Any] = {}


def record() -> dict[str, Any]:
    """``{"generate_start", "generate_end", "generated"}`` of this process's background generation ({} if none)."""
    return dict(_record)


def start(cfg: DictConfig) -> threading.Thread | None:
    """Start the forkserver (when the loader has workers) and, for ``data=synthetic``, the data set's generation
    in a thread; returns that thread (None for COCO). Cheap when everything is there already."""
    from posekit.data import forkserver

    forkserver.want(*forkserver.LOADER_MODULES)
    if int(cfg.data.num_workers) > 0:
        forkserver.start()
    if cfg.data.name != "synthetic":
        return None
    # not a daemon: a process that fails early still finishes (and caches) the data set rather than leave it half made
    thread = threading.Thread(target=_resolve_quietly, args=(cfg,), name="posekit-synthetic-data")
    thread.start()
    return thread


def _resolve_quietly(cfg: DictConfig) -> None:
    from posekit.data.paths import resolve_data
    from posekit.data.synthetic import is_cached
    from posekit.skeleton import Skeleton

    try:
        skeleton = Skeleton.from_cfg(OmegaConf.to_container(cfg.keypoints, resolve=True))
        _record.update(generate_start=time.time(), generated=not is_cached(cfg.data.synthetic, skeleton))
        resolve_data(cfg)
        _record["generate_end"] = time.time()
    except Exception as e:  # the data module's own call reports it, with the stage's error handling
        _record.clear()
        log.debug("early data-set generation failed (the data module will report it): %s", e)

"""What a training process starts before it imports torch, so that it runs beside the imports, the model and the
trainer set-up instead of after them (issue: cold start-up before the first step).

* the loader's forkserver (``posekit.data.forkserver``): it imports torch, OpenCV and albumentations in its own
  process; the loader workers fork from it later, already loaded;
* the synthetic data set, when it is not cached yet: generated in a background thread (its process pool does the
  work). The data module asks for the data set as before and waits on the data set's file lock
  (``posekit.data.synthetic``) until the background generation has finished, as it would for another process
  generating it. An error there is left to that call to report.
  With ``data.synthetic.stream_block`` on a one-process run, the thread also indexes the train images as they are
  written (:class:`posekit.data.stream.StreamedIndex`, :func:`streamed_index`), and the data module trains on them
  without waiting for the rest.

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
# the StreamedIndex the background generation fills for this process's data module, set by the thread before it
# generates anything; _decided tells the data module that the thread has made that choice
_streaming: Any = None
_decided: threading.Event | None = None


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
    global _decided, _streaming
    _decided, _streaming = threading.Event(), None
    # not a daemon: a process that fails early still finishes (and caches) the data set rather than leave it half made
    thread = threading.Thread(target=_resolve_quietly, args=(cfg,), name="posekit-synthetic-data")
    thread.start()
    return thread


def streamed_index(cfg: DictConfig) -> Any:
    """The :class:`~posekit.data.stream.StreamedIndex` of the train split this process is generating for ``cfg``'s
    data set (same folder), or None: not streaming, another data set, the set was cached, or its train split is
    finished already (then the data module reads the files: the same samples in the same order)."""
    if _decided is None or cfg.data.name != "synthetic":
        return None
    _decided.wait()  # set within milliseconds of start(), before the generation itself
    if _streaming is None or _streaming.known_total() is not None:
        return None
    from posekit.data.synthetic import dataset_root
    from posekit.skeleton import Skeleton

    skeleton = Skeleton.from_cfg(OmegaConf.to_container(cfg.keypoints, resolve=True))
    return _streaming if _streaming.root == dataset_root(cfg.data.synthetic, skeleton) else None


def _resolve_quietly(cfg: DictConfig) -> None:
    global _streaming
    index = None
    try:
        from posekit.data.stream import StreamedIndex, one_process
        from posekit.data.synthetic import dataset_root, ensure_synthetic, is_cached
        from posekit.skeleton import Skeleton

        skeleton = Skeleton.from_cfg(OmegaConf.to_container(cfg.keypoints, resolve=True))
        syn = cfg.data.synthetic
        generated = not is_cached(syn, skeleton)
        _record.update(generate_start=time.time(), generated=generated)
        if generated and int(syn.stream_block) > 0 and one_process(cfg.trainer):
            d = cfg.data
            index = StreamedIndex(skeleton, d.main_person_min_keypoints, d.main_person_min_area, int(syn.stream_block),
                                  root=dataset_root(syn, skeleton))
            _streaming = index
        _decided.set()
        ensure_synthetic(syn, skeleton, on_image=index)
        if index is not None:
            index.finish()
        _record["generate_end"] = time.time()
    except Exception as e:  # the data module's own call reports it, with the stage's error handling
        _record.clear()
        if index is not None:  # a streaming data module is not waiting on the lock: tell it
            index.fail(e)
        log.debug("early data-set generation failed (the data module will report it): %s", e)
    finally:
        _decided.set()  # whatever happened, the data module must not wait for this thread's choice

"""What happens around every stage, before its first real work and after its last write.

``prepared(stage, cfg)`` (used by ``run_stage`` for a command and by the pipeline for each step):

1. the experiment folder must take a file (a read-only or full disk fails now, not after an hour of eval);
2. the stage's lock (:mod:`posekit.locks`): one writer per experiment stage, a second run stops at once;
3. temporary files of killed runs are removed (:func:`posekit.io.remove_stale_temp`);
4. the settings the model was trained with are taken over where the command line is silent (:mod:`posekit.inherit`);
5. a ``last.ckpt`` that train/retrain would resume from is checked: a truncated one is a clear error, not a
   traceback from deep inside Lightning.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from omegaconf import DictConfig

from posekit import io
from posekit.experiment import Experiment, pth_tag
from posekit.locks import is_primary_process, stage_lock


def lock_name(stage: str, cfg: DictConfig) -> str:
    """Retrains of different thresholds write different folders: each pth has its own lock."""
    return f"retrain-pth-{pth_tag(cfg.prune.pth)}" if stage == "retrain" else stage


def resume_checkpoint(stage: str, cfg: DictConfig) -> Path | None:
    """The ``last.ckpt`` train/retrain would resume from, if any."""
    if stage not in ("train", "retrain") or not bool(cfg.train.resume):
        return None
    exp = Experiment(cfg)
    folder = exp.train_dir if stage == "train" else exp.retrain_dir()
    path = folder / "checkpoints" / "last.ckpt"
    return path if path.is_file() else None


def check_resume_checkpoint(stage: str, cfg: DictConfig) -> None:
    """Refuse (``UserError``) a checkpoint to resume from that is empty, truncated, foreign or not finite."""
    path = resume_checkpoint(stage, cfg)
    if path is not None:
        from posekit.model.io import read_checkpoint  # torch: imported only when there is a checkpoint to read

        read_checkpoint(path, hint=(
            f"{stage} would resume from it. Move it away (mv {path} {path}.bad) to start {stage} over, or run with "
            "train.resume=false (starts over and overwrites the stage's checkpoints)."
        ))


@contextlib.contextmanager
def prepared(stage: str, cfg: DictConfig, *, wait: bool = False, overrides: list[str] | None = None,
             ) -> Iterator[DictConfig]:
    """Check, lock and clean the experiment for ``stage``; yields the config to run it with (see the module).

    ``wait``: wait for a running holder of the stage's lock instead of stopping (pipeline steps).
    ``overrides``: the command line (Hydra task overrides) when settings may be inherited; None: never.
    """
    from posekit.config import validate
    from posekit.inherit import inherit

    root = Experiment(cfg).root
    if not is_primary_process():  # another rank of a DDP job: rank 0 checks, locks and cleans
        yield inherit(cfg, stage, root, overrides)
        return
    io.ensure_writable(root, "the experiment folder")
    with stage_lock(root, lock_name(stage, cfg), wait=wait):
        io.remove_stale_temp(root)
        ready = inherit(cfg, stage, root, overrides)
        if ready is not cfg:
            validate(ready)
        check_resume_checkpoint(stage, ready)
        yield ready

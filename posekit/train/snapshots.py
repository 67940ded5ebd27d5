"""``WeightSnapshots``: the network's weights every N optimizer steps, with wall-clock times, for measuring time to
accuracy without evaluating inside the timed run (``+callbacks=weight_snapshots``; benchmarks/time_to_accuracy.py
evaluates the snapshots after the run).

Writes ``<stage dir>/snapshots/``: ``step-NNNNNNN.pt`` (posekit model files, loadable by every stage) and
``record.json``, rewritten after each snapshot::

    {"every_n_steps": N,
     "marks": {"setup", "train_start", "first_batch", "first_step", "train_end"},  # time.time() of each
     "data": {"resolve_s", "index_s",    # seconds the data module spent finding (or generating, or waiting for) the
                                          # data set and indexing it (before "setup")
              "generate_start", "generate_end", "generated"},  # the early background generation (posekit.data.early)
     "snapshots": [{"step", "time", "save_s"}],  # time: when the step ended; save_s: writing it (in the run's time)
     "snapshot_s": total save_s}

Times are ``time.time()`` (seconds since the epoch), so a launcher in another process can line them up with its
own clock. Writing a snapshot costs the run ``save_s`` (a copy to the host and a file write); that cost is
recorded, not hidden.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback

from posekit import io


class WeightSnapshots(Callback):
    """Every ``every_n_steps`` optimizer steps (and after the last one), the weights and the time (module doc)."""

    def __init__(self, every_n_steps: int = 500, folder: str | None = None) -> None:
        if int(every_n_steps) < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
        self.every = int(every_n_steps)
        self.folder = Path(folder) if folder else None
        self.marks: dict[str, float] = {}
        self.snapshots: list[dict[str, Any]] = []
        self.data: dict[str, float | None] = {}

    # ------------------------------------------------------------------ marks
    def _mark(self, name: str) -> None:
        self.marks.setdefault(name, time.time())

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._mark("setup")
        if self.folder is None:
            self.folder = Path(trainer.default_root_dir) / "snapshots"
        from posekit.data import early

        dm = getattr(trainer, "datamodule", None)
        self.data = {"resolve_s": getattr(dm, "resolve_s", None), "index_s": getattr(dm, "index_s", None),
                     **early.record()}

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._mark("train_start")

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        self._mark("first_batch")

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if "first_step" not in self.marks:
            _sync(pl_module.device)
            self._mark("first_step")
        step = int(trainer.global_step)
        # once per optimizer step (with gradient accumulation several batches end at the same step)
        saved = self.snapshots[-1]["step"] if self.snapshots else None
        if step > 0 and step % self.every == 0 and step != saved and trainer.is_global_zero:
            self.save(pl_module, step)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        step = int(trainer.global_step)
        if trainer.is_global_zero and step > 0 and (not self.snapshots or self.snapshots[-1]["step"] != step):
            self.save(pl_module, step)
        self._mark("train_end")
        if trainer.is_global_zero:
            self.write()

    # ------------------------------------------------------------------ files
    def save(self, pl_module: pl.LightningModule, step: int) -> None:
        """``step-NNNNNNN.pt`` of the live network (after its step's kernels finish) and a line in the record."""
        from posekit.model.io import save_model

        _sync(pl_module.device)
        ended = time.time()
        save_model(self.folder / f"step-{step:07d}.pt", pl_module.net,
                   pruning_history=pl_module.hparams.get("pruning_history"), step=step)
        self.snapshots.append({"step": step, "time": ended, "save_s": time.time() - ended})
        self.write()

    def write(self) -> Path:
        from posekit.data import early

        self.data.update(early.record())  # a streamed run's generation ends after setup, during training
        return io.write_json(self.folder / "record.json", {
            "every_n_steps": self.every,
            "marks": dict(self.marks),
            "data": dict(self.data),
            "snapshots": list(self.snapshots),
            "snapshot_s": sum(s["save_s"] for s in self.snapshots),
        })


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)

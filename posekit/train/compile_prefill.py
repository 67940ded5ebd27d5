"""Compile in a separate process while training starts eager (``train.compile_prefill``, posekit's addition).

Why: with ``train.compile`` on one GPU, the first step of a cold run waited about 40 s for the compile (run 21 on an
H100, docs/results.md "Time to AP 0.80"): the device warm-up (posekit/train/warmup.py) compiles a copy of the
network, and the data was ready long before it was. Training the eager network while a *thread* compiled the copy
hung on torch 2.11 (run 22: the first eager bf16 step and the thread's tracing blocked each other). A separate
process shares nothing with the training process but the disk:

1. :class:`CompilePrefill` writes the network (architecture, pruning history, weights) to a file and starts
   ``python -m posekit.model.warm SPEC``, which compiles that copy and runs one forward and backward pass
   at the training batch shape, memory format and autocast dtype on random images, then exits. The compiled graphs
   stay in Inductor's on-disk caches (FXGraphCache and AOTAutogradCache, under ``TORCHINDUCTOR_CACHE_DIR``, by
   default ``/tmp/torchinductor_<user>``), which are keyed by the graph, the input shapes and the configuration.
2. Meanwhile the training process trains the eager network (the warm-up thread only tunes cuDNN and loads kernels).
3. :class:`CompileAfterPrefill`: at the first batch boundary after the process has exited, the training process
   compiles its network in place, in its own main thread, and that compile finds the graphs in the caches
   (``python -m benchmarks.compile_cache``: a small network's compiled pass took 49-50 s cold and 4.4-4.6 s from
   the caches on the 2-core VM; not yet measured on a GPU).

The maths is the same eager or compiled; the eager steps are only slower. A prefill that failed leaves the run
eager (the real network would most likely fail the same way), with a warning; it never fails the run.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn

log = logging.getLogger("posekit.train")


class CompilePrefill:
    """The prefill process for a copy of ``net``: :meth:`start`, then :meth:`poll` until it returns its record.

    Args:
        net: the network as training will run it (written to a file now; never touched after).
        pruning_history: the network's pruning history (a pruned network is rebuilt by replaying it).
        batch_shape: (B, 3, H, W) of a training batch.
        device: the training device.
        autocast_dtype: the training step's autocast dtype (None: fp32).
        channels_last: the training memory format.
        backend: ``torch.compile``'s backend: the one the training process compiles with afterwards.
        cudnn_benchmark: ``trainer.benchmark`` (None: torch's default).
    """

    def __init__(
        self,
        net: nn.Module,
        *,
        pruning_history: list | None,
        batch_shape: tuple[int, int, int, int],
        device: torch.device | str,
        autocast_dtype: torch.dtype | None = None,
        channels_last: bool = False,
        backend: str = "inductor",
        cudnn_benchmark: bool | None = None,
    ) -> None:
        from posekit.model.warm import write_spec

        self.backend = backend
        self._dir = Path(tempfile.mkdtemp(prefix="posekit-compile-prefill-"))
        self._spec = write_spec(self._dir, net, pruning_history=pruning_history, batch_shape=batch_shape,
                                device=device, autocast_dtype=autocast_dtype, channels_last=channels_last,
                                backend=backend, cudnn_benchmark=cudnn_benchmark)
        self._proc: subprocess.Popen | None = None
        self.record: dict[str, Any] | None = None

    def start(self) -> CompilePrefill:
        self._t0 = time.perf_counter()
        self._out = open(self._dir / "out.log", "wb")  # noqa: SIM115 - open for the process's lifetime
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "posekit.model.warm", str(self._spec)],
            stdout=self._out, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        return self

    def poll(self) -> dict[str, Any] | None:
        """None while the process runs; then its record: ``{"rc", "wall_s", "seconds"}`` or ``{"rc", "wall_s",
        "error"}`` (the output's tail)."""
        if self.record is not None or self._proc is None or self._proc.poll() is None:
            return self.record
        self._out.close()
        out = (self._dir / "out.log").read_text(errors="replace")
        rec: dict[str, Any] = {"rc": self._proc.returncode, "wall_s": round(time.perf_counter() - self._t0, 3)}
        last = out.strip().splitlines()[-1] if out.strip() else ""
        try:
            rec.update(json.loads(last) if self._proc.returncode == 0 else {})
        except json.JSONDecodeError:
            pass
        if "seconds" not in rec:
            rec["error"] = out[-2000:] or f"exit code {self._proc.returncode}"
        self.record = rec
        self._cleanup()
        return rec

    def stop(self) -> None:
        """Kill the process if it still runs (training ended first); remove its files."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
            self.record = {"rc": self._proc.returncode, "error": "still compiling when training ended: killed"}
            self._out.close()
        self._cleanup()

    def _cleanup(self) -> None:
        for f in ("model.pt", "spec.json", "out.log"):
            (self._dir / f).unlink(missing_ok=True)
        try:
            self._dir.rmdir()
        except OSError:
            pass


class CompileAfterPrefill(pl.Callback):
    """Compiles ``pl_module.net`` in place at the first batch boundary after the prefill process has exited, and
    times the first compiled step (the compile from the caches). Kept in ``record`` for the train summary."""

    def __init__(self, prefill: CompilePrefill) -> None:
        self.prefill = prefill
        self.record: dict[str, Any] = {}
        self._timing = False

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._timing:
            self._t = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._timing:
            self.record["first_compiled_step_s"] = round(time.perf_counter() - self._t, 3)
            self._timing = False
            log.info("compile prefill: the first compiled step took %.1f s (the compile, from the caches)",
                     self.record["first_compiled_step_s"])
            return
        if "switched_at_step" in self.record or "stayed_eager" in self.record:
            return
        rec = self.prefill.poll()
        if rec is None:
            return
        self.record["prefill"] = rec
        if "error" in rec:
            self.record["stayed_eager"] = True
            log.warning("train.compile_prefill: the compile process failed; training stays eager. Its output:\n%s",
                        rec["error"][-1500:])
            return
        pl_module.net.compile(backend=self.prefill.backend)
        self.record["switched_at_step"] = int(trainer.global_step)
        self._timing = True
        log.info("compile prefill: the process compiled the network in %.1f s beside %d eager steps; compiling "
                 "in place now", rec["wall_s"], trainer.global_step)

    def on_train_end(self, trainer, pl_module) -> None:
        self.prefill.stop()
        if self.prefill.record is not None and "prefill" not in self.record:
            self.record["prefill"] = self.prefill.record

    def on_exception(self, trainer, pl_module, exception) -> None:
        self.prefill.stop()


"""The training process's CPU per step besides the network: ``python -m benchmarks.step_overhead``.

Where the GPU waits for the training process (a step that queues its kernels slower than the GPU runs them, as on
run 9's H200 machine in docs/results.md), every millisecond of Python per step is a millisecond of step time. This
times ``PoseModule`` steps under a Lightning ``Trainer`` on the CPU with a network so small (width 0.125, 2 stages,
16x16 input, batch 1) that its own compute is a few milliseconds, fed from memory, with one torch thread, in three
ways: the module as it is, the same with ``self.log`` made a no-op (what posekit's logging costs), and the same
module's step without Lightning (forward, loss, backward, L1 subgradient, AdamW). Each is run ``--repeats`` times,
interleaved; it prints the median over runs of the median ms per step.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from types import SimpleNamespace

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback

from posekit.train.callbacks import ThroughputMeter
from posekit.train.module import PoseModule

ARCH = dict(stages=2, num_heatmaps=3, num_pafs=2, width=0.125)
OPTIM = dict(name="adamw", lr=1e-3, weight_decay=0.0, schedule="cosine", warmup=0.05, min_lr=1e-6,
             stagewise_lr=False, l1_kernel_reg=1e-4, l1_bn_gamma=1e-4, l1_ramp=0.0)


def batch() -> dict[str, torch.Tensor]:
    """One batch of the shapes a 16x16 input makes (targets at stride 8)."""
    return {"image": torch.zeros(1, 3, 16, 16, dtype=torch.uint8), "heatmaps": torch.zeros(1, 3, 2, 2),
            "pafs": torch.zeros(1, 2, 2, 2), "mask": torch.ones(1, 1, 2, 2)}


class Replay(torch.utils.data.IterableDataset):
    def __init__(self, steps: int):
        self.steps = steps

    def __iter__(self):
        b = {k: v[0] for k, v in batch().items()}
        return (b for _ in range(self.steps))


class StepClock(Callback):
    """Wall time between consecutive ``on_train_batch_end`` calls, in ms."""

    def __init__(self) -> None:
        self.ms: list[float] = []
        self._t: float | None = None

    def on_train_batch_end(self, *args) -> None:
        t = time.perf_counter()
        if self._t is not None:
            self.ms.append((t - self._t) * 1e3)
        self._t = t


def lightning_ms(steps: int, log_every: int, logging_on: bool) -> float:
    torch.manual_seed(0)
    module = PoseModule(ARCH, OPTIM, head_init="kaiming")
    if not logging_on:
        module.log = module.log_dict = lambda *a, **k: None
    clock = StepClock()
    with tempfile.TemporaryDirectory() as logs:  # a CSV logger, as the train stage has
        trainer = pl.Trainer(max_steps=steps, accelerator="cpu", logger=pl.loggers.CSVLogger(logs),
                             enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                             log_every_n_steps=log_every, callbacks=[ThroughputMeter(), clock])
        trainer.fit(module, torch.utils.data.DataLoader(Replay(steps), batch_size=1))
    return statistics.median(clock.ms[10:])


def bare_ms(steps: int) -> float:
    """The same step without Lightning: forward, loss, backward, the L1 subgradient, AdamW."""
    torch.manual_seed(0)
    module = PoseModule(ARCH, OPTIM, head_init="kaiming")
    module.log = module.log_dict = lambda *a, **k: None
    module.trainer = SimpleNamespace(_logger_connector=SimpleNamespace(should_update_logs=False))  # no logging
    opt = torch.optim.AdamW(module.parameters(), lr=1e-3)
    b, times = batch(), []
    for _ in range(steps):
        t = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss, _ = module._loss(b)
        loss.backward()
        module.on_before_optimizer_step(opt)
        opt.step()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times[10:])


def main(argv: list[str] | None = None) -> dict[str, float]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--log-every", type=int, default=50, help="trainer.log_every_n_steps (the GPU preset's 50)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    runs: dict[str, list[float]] = {"lightning, posekit's logging": [], "lightning, no logging": [],
                                    "no lightning": []}
    for _ in range(args.repeats):
        runs["lightning, posekit's logging"].append(lightning_ms(args.steps, args.log_every, True))
        runs["lightning, no logging"].append(lightning_ms(args.steps, args.log_every, False))
        runs["no lightning"].append(bare_ms(args.steps))
    out = {k: statistics.median(v) for k, v in runs.items()}
    print(f"ms per step, median of {args.repeats} runs x {args.steps} steps (log_every_n_steps={args.log_every}):")
    for k, v in out.items():
        print(f"  {k:30s} {v:6.2f}   (runs: {', '.join(f'{x:.2f}' for x in runs[k])})")
    return out


if __name__ == "__main__":
    main()

"""The step guard: gradient-norm clipping, skipped updates for non-finite or exploding steps, and a per-step record.

Every optimizer step, after the backward pass and before the update (``PoseModule.on_before_optimizer_step``):

1. the global L2 norm of the loss gradient is computed (one fused ``_foreach_norm``) and read on the host together
   with the step's loss: one device sync per step, the price of deciding before the update is applied;
2. a step whose gradient norm is not finite, or larger than ``spike_factor`` x the running median of the last
   ``window`` accepted norms, is **skipped**: every gradient is set to None, so the optimizer leaves the weights
   *and its own state* untouched (AdamW's moments would otherwise carry the bad step for thousands of steps).
   A spike skips at most ``spike_patience`` steps in a row: a skipped step leaves the weights where they were, so a
   large norm that persists over that many *different* batches comes from the weights, not from a batch, and
   skipping can never end it (measured: docs/training.md, "A spike that persists"). The next such step is
   applied, clipped as in 3, and its norm joins the running median, which then follows the new level;
3. otherwise the gradient is clipped (``torch.nn.utils.clip_grads_with_norm_``, no second norm) to the smaller of
   ``clip`` (an absolute norm) and ``clip_factor`` x the running median. The relative bound needs no knowledge of
   the loss's scale, which grows with the output grid (TAO's loss is a sum over cells), so one default serves every
   resolution and width; the absolute one is there for recipes that want a fixed number.

More than ``max_consecutive`` non-finite steps in a row stop the run with :class:`TrainingDiverged` (a
:class:`~posekit.errors.UserError`: one line, what to change). The decision uses the gradient norm only: under DDP
the gradients are already all-reduced, so every rank decides the same way (the losses differ per rank).

The record (``steps``: loss, pre-clip norm, skipped, per step) goes into the checkpoint, so a resumed run's
summary covers the whole run, and gives ``summary()``'s spike figures: the largest step loss over its running
median after the warm-up (the robust-training acceptance reads it; docs/training.md, "The step guard").
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from dataclasses import dataclass
from typing import Any

from posekit.errors import UserError


class TrainingDiverged(UserError):
    """Too many consecutive optimizer steps were non-finite or exploding."""


@dataclass
class Verdict:
    skip: bool
    reason: str  # "" | "non-finite" | "spike"
    norm: float
    median: float | None
    max_norm: float | None = None  # kept steps: clip the gradient to this norm (None: no clipping)


class RunningMedian:
    """Median of the last ``size`` values: a sorted list beside a FIFO (O(size) per update, size ~ 200)."""

    def __init__(self, size: int):
        self.size = int(size)
        self._fifo: deque[float] = deque()
        self._sorted: list[float] = []

    def __len__(self) -> int:
        return len(self._fifo)

    def add(self, value: float) -> None:
        self._fifo.append(value)
        bisect.insort(self._sorted, value)
        if len(self._fifo) > self.size:
            old = self._fifo.popleft()
            del self._sorted[bisect.bisect_left(self._sorted, old)]

    @property
    def median(self) -> float | None:
        n = len(self._sorted)
        if n == 0:
            return None
        mid = n // 2
        return self._sorted[mid] if n % 2 else 0.5 * (self._sorted[mid - 1] + self._sorted[mid])

    def values(self) -> list[float]:
        return list(self._fifo)


class StepGuard:
    """Decides, per optimizer step, whether the update is applied; keeps the per-step record.

    Args:
        clip: max global gradient L2 norm (None or <= 0: no absolute bound).
        clip_factor: clip to this x the running median of accepted norms (<= 0: no relative bound).
        spike_factor: skip a step whose norm exceeds this x the running median of accepted norms (<= 0: only
            non-finite steps are skipped).
        window: running-median window, in steps.
        min_history: accepted steps needed before a spike can be called (the median means little before).
        spike_patience: at most this many spike steps in a row are skipped; the next is applied, clipped.
        max_consecutive: more non-finite steps than this in a row raise :class:`TrainingDiverged`.
        warmup_steps: steps excluded from the loss-spike figure (the loss falls fastest there).
    """

    def __init__(
        self,
        *,
        clip: float | None = None,
        clip_factor: float,
        spike_factor: float,
        window: int,
        min_history: int,
        max_consecutive: int,
        spike_patience: int,
        warmup_steps: int = 0,
    ):  # no defaults for the guard's knobs: they are defined once, in posekit.config.GuardConfig
        self.clip = float(clip) if clip is not None and clip > 0 else None
        self.clip_factor = float(clip_factor)
        self.spike_factor = float(spike_factor)
        self.window = int(window)
        self.min_history = int(min_history)
        self.max_consecutive = int(max_consecutive)
        self.spike_patience = int(spike_patience)
        self.warmup_steps = int(warmup_steps)
        self.norms = RunningMedian(self.window)
        self.consecutive = 0  # non-finite steps in a row
        self.spike_run = 0  # spike steps in a row (skipped or applied)
        self.persistent = 0  # spike steps applied because the spike outlasted spike_patience
        self.steps: list[list[float]] = []  # [step, loss, pre-clip norm, skipped (0/1), clip bound (0: none)]

    # ------------------------------------------------------------------ decision
    def check(self, step: int, loss: float, norm: float) -> Verdict:
        """Record the step and decide; raises :class:`TrainingDiverged` after too many non-finite steps in a row."""
        median = self.norms.median
        finite = math.isfinite(norm) and math.isfinite(loss)
        spike = (
            finite
            and self.spike_factor > 0
            and len(self.norms) >= self.min_history
            and median is not None
            and norm > self.spike_factor * median
        )
        self.spike_run = self.spike_run + 1 if spike else 0
        if not finite:
            verdict = Verdict(True, "non-finite", norm, median)
        elif spike and self.spike_run <= self.spike_patience:
            verdict = Verdict(True, "spike", norm, median)
        else:
            # a persistent spike is applied like any kept step: clipped to the bound of the median before it
            verdict = Verdict(False, "persistent spike" if spike else "", norm, median, self.max_norm(median))
            self.persistent += bool(spike)
            self.norms.add(norm)
        bound = verdict.max_norm if verdict.max_norm is not None else 0.0
        self.steps.append([int(step), float(loss), float(norm), 1.0 if verdict.skip else 0.0, float(bound)])
        self.consecutive = self.consecutive + 1 if not finite else 0
        if self.consecutive > self.max_consecutive:
            raise TrainingDiverged(
                f"training diverged at step {step}: {self.consecutive} optimizer steps in a row were skipped as "
                f"{verdict.reason} (gradient norm {norm:.4g}, running median {median if median is None else f'{median:.4g}'}, "
                f"loss {loss:.4g}). Nothing was written to model.pt; last.ckpt holds the last good state. Lower "
                "optim.lr or raise optim.warmup, check the data for NaN or Inf, or raise "
                "optim.guard.max_consecutive (docs/training.md, 'The step guard')."
            )
        return verdict

    def max_norm(self, median: float | None) -> float | None:
        """The clipping bound for a step, given the running median before it (None: no bound yet)."""
        bounds = [self.clip] if self.clip is not None else []
        if self.clip_factor > 0 and median is not None and len(self.norms) >= self.min_history:
            bounds.append(self.clip_factor * median)
        return min(bounds) if bounds else None

    # ------------------------------------------------------------------ figures
    @property
    def skipped(self) -> int:
        return int(sum(r[3] for r in self.steps))

    def summary(self, spike_ratio: float = 3.0) -> dict[str, Any]:
        """Figures for summary.json.

        ``skipped_steps`` (and the first 20 as ``[step, loss, norm]``), ``clipped_steps``,
        ``grad_norm_median``, and the loss-spike check: over the steps after ``warmup_steps``, each step's loss
        against the median of the previous ``window`` steps' losses; ``max_loss_ratio`` is the largest such ratio
        and ``loss_spikes`` counts the steps above ``spike_ratio``.
        """
        norms = sorted(r[2] for r in self.steps if math.isfinite(r[2]))
        running = RunningMedian(self.window)
        worst, worst_step, spikes = 0.0, None, 0
        for step, loss, *_ in self.steps:
            if not math.isfinite(loss):
                continue
            med = running.median
            if step >= self.warmup_steps and med is not None and len(running) >= self.min_history and med > 0:
                ratio = loss / med
                if ratio > worst:
                    worst, worst_step = ratio, int(step)
                spikes += ratio > spike_ratio
            running.add(loss)
        clipped = sum(1 for r in self.steps if len(r) > 4 and not r[3] and r[4] > 0 and r[2] > r[4])
        return {
            "skipped_steps": self.skipped,
            "skipped": [[int(r[0]), r[1], r[2]] for r in self.steps if r[3]][:20],
            "clipped_steps": clipped,
            "persistent_spike_steps": self.persistent,
            "grad_norm_median": norms[len(norms) // 2] if norms else None,
            "max_loss_ratio": round(worst, 4) if worst_step is not None else None,
            "max_loss_ratio_step": worst_step,
            "loss_spikes": int(spikes),
            "loss_spike_ratio": spike_ratio,
            "loss_ratio_after_step": self.warmup_steps,
        }

    # ------------------------------------------------------------------ checkpoint
    def state_dict(self) -> dict[str, Any]:
        return {"steps": [list(r) for r in self.steps], "norms": self.norms.values(), "consecutive": self.consecutive,
                "spike_run": self.spike_run, "persistent": self.persistent}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps = [[float(v) for v in r] for r in state.get("steps", [])]
        self.norms = RunningMedian(self.window)
        for v in state.get("norms", []):
            self.norms.add(float(v))
        self.consecutive = int(state.get("consecutive", 0))
        self.spike_run = int(state.get("spike_run", 0))
        self.persistent = int(state.get("persistent", 0))

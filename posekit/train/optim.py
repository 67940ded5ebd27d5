"""Optimizer recipes and per-step learning-rate schedules.

Two recipes (``conf/optim/``):

* ``adamw_cosine``: AdamW, linear warm-up over ``warmup`` of all steps, cosine decay to ``min_lr``.
  Weight decay on conv kernels only (biases and BN parameters are not decayed).
* ``tao_sgd``: TAO's ``WeightedMomentumOptimizer`` (SGD, momentum 0.9, no Nesterov) with stage-wise
  learning-rate multipliers and the soft-start annealing schedule; L1 on kernels comes from the loss.

TAO's stage-wise multipliers (``bpnet_lite_model.get_lr_multipiers``) scale each conv's gradient, which for
SGD is the same as scaling its learning rate:

    =====================================  ======  ====
    parameters                              kernel  bias
    =====================================  ======  ====
    backbone, channel reduction, stage 1      1       2
    refinement stages 2.. (final outputs)     4       8
    batch norm (not in TAO's table)           1       1
    =====================================  ======  ====

Every parameter group carries its multiplier as ``group["lr_mult"]``; the schedules below return a factor that
``LambdaLR`` multiplies into each group's initial learning rate, so the multipliers hold at every step.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

# (kernel, bias) multipliers of TAO's get_lr_multipiers; BN parameters are not convs there and keep 1.
STAGE1_MULT = (1.0, 2.0)
REFINEMENT_MULT = (4.0, 8.0)
BACKBONE_MULT = (1.0, 2.0)
BN_MULT = 1.0


def _classify(net: nn.Module) -> dict[str, tuple[str, float]]:
    """Map each parameter name to (role, TAO multiplier); role is ``kernel``, ``bias`` or ``bn``."""
    roles: dict[str, tuple[str, float]] = {}
    for mod_name, m in net.named_modules():
        prefix = f"{mod_name}." if mod_name else ""
        if isinstance(m, nn.Conv2d):
            parts = mod_name.split(".")
            if parts[0] == "stages" and len(parts) > 1:
                kernel_mult, bias_mult = STAGE1_MULT if int(parts[1]) == 0 else REFINEMENT_MULT
            else:
                kernel_mult, bias_mult = BACKBONE_MULT
            roles[prefix + "weight"] = ("kernel", kernel_mult)
            if m.bias is not None:
                roles[prefix + "bias"] = ("bias", bias_mult)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            for pname, _ in m.named_parameters(recurse=False):
                roles[prefix + pname] = ("bn", BN_MULT)
    return roles


def param_groups(net: nn.Module, lr: float, weight_decay: float, stagewise_lr: bool) -> list[dict[str, Any]]:
    """Parameter groups with TAO's stage-wise multipliers (if ``stagewise_lr``) and kernel-only weight decay.

    Returns a list of dicts ``{"name", "params", "lr" (= lr * lr_mult), "lr_mult", "weight_decay"}``, one per
    distinct (role, multiplier). Raises ``ValueError`` if the net has a trainable parameter that is neither a
    conv nor a BN parameter (it would silently miss its multiplier).
    """
    roles = _classify(net)
    groups: dict[tuple[str, float], dict[str, Any]] = {}
    for name, p in net.named_parameters():
        if not p.requires_grad:
            continue
        if name not in roles:
            raise ValueError(f"parameter {name!r} is neither a Conv2d nor a BatchNorm parameter")
        role, mult = roles[name]
        mult = mult if stagewise_lr else 1.0
        key = (role, mult)
        if key not in groups:
            groups[key] = {
                "name": f"{role}x{mult:g}",
                "params": [],
                "lr": lr * mult,
                "lr_mult": mult,
                "weight_decay": weight_decay if role == "kernel" else 0.0,
            }
        groups[key]["params"].append(p)
    return list(groups.values())


# --------------------------------------------------------------------------------------------- schedules
def cosine_factor(total_steps: int, warmup: float, min_ratio: float) -> Callable[[int], float]:
    """Linear warm-up over ``warmup * total_steps`` steps, then cosine from 1 down to ``min_ratio``.

    Returns ``f(step) -> factor`` of the base learning rate (a plain function, so ``LambdaLR`` does not save it
    into the checkpoint and a resumed run with more epochs gets the new total).
    """
    total = max(1, int(total_steps))
    warm = int(round(warmup * total))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        p = min(1.0, (step - warm) / max(1, total - warm))
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * p))

    return factor


def softstart_annealing_factor(
    total_steps: int, soft_start: float, annealing: float, base_lr: float, min_lr: float
) -> Callable[[int], float]:
    """TAO's ``SoftstartAnnealingLearningRateSchedule`` as a factor of ``base_lr``.

    With ``p = step / total``: ``t = p / soft_start`` while ``p < soft_start``, ``t = (1 - p) / (1 - annealing)``
    once ``p > annealing``, else 1; ``lr = exp(ln(min_lr) + t * (ln(base_lr) - ln(min_lr)))``. So the rate rises
    geometrically from ``min_lr`` to ``base_lr``, holds, and decays geometrically back to ``min_lr``.
    """
    if not 0 < min_lr <= base_lr:
        raise ValueError(f"softstart_annealing needs 0 < min_lr <= lr (got min_lr={min_lr}, lr={base_lr})")
    if not 0 <= soft_start <= annealing <= 1:
        raise ValueError(f"softstart_annealing needs 0 <= warmup <= annealing <= 1 ({soft_start}, {annealing})")
    total = max(1, int(total_steps))
    log_min, log_base = math.log(min_lr), math.log(base_lr)

    def factor(step: int) -> float:
        p = min(1.0, step / total)
        if p < soft_start:
            t = p / soft_start
        elif p > annealing:
            t = (1.0 - p) / (1.0 - annealing)
        else:
            t = 1.0
        return math.exp(log_min + t * (log_base - log_min)) / base_lr

    return factor


def build_optimizer(
    net: nn.Module,
    optim: Mapping[str, Any],
    total_steps: int,
    lr_scale: float = 1.0,
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """Optimizer + per-step scheduler from an ``optim`` config mapping (``OptimConfig`` as a plain dict).

    ``lr_scale`` multiplies ``lr`` and ``min_lr`` (retrain's ``retrain.lr_scale``). The schedule is a function of
    the optimizer step and ``total_steps`` alone, so the seed and the config determine it: a slower machine, a
    time cap or a kill and resume never change the rate at step k.
    """
    lr = float(optim["lr"]) * lr_scale
    min_lr = float(optim["min_lr"]) * lr_scale
    groups = param_groups(net, lr, float(optim["weight_decay"]), bool(optim["stagewise_lr"]))
    name = optim["name"]
    if name == "adamw":
        # fused: one CUDA kernel per step for all parameters instead of a few per tensor (GPU only)
        on_gpu = all(p.is_cuda for g in groups for p in g["params"])
        opt: torch.optim.Optimizer = torch.optim.AdamW(
            groups, lr=lr, weight_decay=float(optim["weight_decay"]), fused=True if on_gpu else None
        )
    elif name == "sgd":
        opt = torch.optim.SGD(groups, lr=lr, momentum=float(optim["momentum"]), nesterov=False)
    else:
        raise ValueError(f"optim.name={name!r}: allowed values are ['adamw', 'sgd']")

    schedule = optim["schedule"]
    if schedule == "cosine":
        factor = cosine_factor(total_steps, float(optim["warmup"]), min_lr / lr if lr > 0 else 0.0)
    elif schedule == "softstart_annealing":
        factor = softstart_annealing_factor(total_steps, float(optim["warmup"]), float(optim["annealing"]), lr, min_lr)
    else:
        raise ValueError(f"optim.schedule={schedule!r}: allowed values are ['cosine', 'softstart_annealing']")
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)

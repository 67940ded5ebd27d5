"""TAO's threshold ("min_weight") filter pruning, decided on Torch-Pruning's dependency graph.

TAO (``nvidia_tao_tf1/core/pruning``), per conv layer, on the *unpruned* weights:

    norm_f = ||W[f]||_2 over (C_in, kh, kw)            (bias and BN gamma ignored; L1 selectable here;
                                                        prune.fold_bn=true: of the BN-folded kernel, posekit's)
    stat   = norm / max(norm)                          (normalizer 'max'; 'L2': norm / ||norm||_2 * len(norm))
    keep   = #{f : stat_f > pth}, at least min(min_filters, C_out), rounded UP to a multiple of the
             granularity (capped at C_out); the top-``keep`` filters by stat are retained.

Layers whose outputs must keep identical channels (residual adds, multiplies, a depthwise conv and its
producer) are merged first: the per-layer normalized stats of the coupled producers are reduced with the
``equalization`` criterion (union = max, intersection = min, arithmetic_mean, geometric_mean) and one index set
is chosen for all of them. Concat inputs each keep their own indices. Torch-Pruning finds those couplings
(``DependencyGraph.get_all_groups``) and carries every slice through: BN, the next conv's input channels, concat
offsets. Torch-Pruning itself has no threshold pruner and its ``round_to`` rounds the kept count *down*, hence
this module.

All decisions are made on the unpruned network before anything is cut (TAO's explore-then-prune order), so the
result does not depend on the order in which groups are pruned.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from posekit.config import ConfigError, PruneConfig
from posekit.prune.compensate import fold_into_consumers, removed_channel_output
from posekit.prune.history import dependency_graph, following_bn
from posekit.prune.report import pruning_report

NORMS = ("l2", "l1")
NORMALIZERS = ("max", "L2")
EQUALIZATIONS = ("union", "intersection", "arithmetic_mean", "geometric_mean")


# --------------------------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class PruneSettings:
    """The ``prune`` config section, validated (see ``posekit.config.PruneConfig`` for the keys)."""

    pth: float
    norm: str = "l2"
    normalizer: str = "max"
    equalization: str = "union"
    fold_bn: bool = False
    compensate: bool = False
    granularity: int = 8
    min_filters: int = 16
    excluded_layers: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        object.__setattr__(self, "excluded_layers", _names(self.excluded_layers))

    @classmethod
    def from_config(cls, cfg: PruneConfig | PruneSettings) -> PruneSettings:
        """From the ``prune`` section (:class:`posekit.config.PruneConfig`, checked by ``posekit.config.validate``)."""
        if isinstance(cfg, PruneSettings):
            return cfg
        return cls(
            pth=float(cfg.pth),
            norm=str(cfg.norm),
            normalizer=str(cfg.normalizer),
            equalization=str(cfg.equalization),
            fold_bn=bool(cfg.fold_bn),
            compensate=bool(cfg.compensate),
            granularity=int(cfg.granularity),
            min_filters=int(cfg.min_filters),
            excluded_layers=cfg.excluded_layers,  # normalized by __post_init__
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "pth": self.pth,
            "norm": self.norm,
            "normalizer": self.normalizer,
            "equalization": self.equalization,
            "fold_bn": self.fold_bn,
            "compensate": self.compensate,
            "granularity": self.granularity,
            "min_filters": self.min_filters,
            "excluded_layers": list(self.excluded_layers),
        }


def _names(value: Any) -> tuple[str, ...]:
    """``excluded_layers`` as a tuple of names (a single string is one name, not its characters)."""
    if value is None:
        return ()
    return (value,) if isinstance(value, str) else tuple(str(n) for n in value)


def _semantic_convs(model: nn.Module) -> list[nn.Conv2d]:
    """The convs whose output channels are semantic and so never pruned: the model's own ``output_convs()``
    (``BpNetLite``'s heatmap/PAF outputs, the one place they are listed); none for a model without one."""
    heads = getattr(model, "output_convs", None)
    return list(heads()) if callable(heads) else []


def prunable_layer_names(model: nn.Module) -> list[str]:
    """Names (as in ``named_modules()``) of the convs threshold pruning may shrink: all but the output convs."""
    heads = set(map(id, _semantic_convs(model)))
    return [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and id(m) not in heads]


def check_excluded_layers(model: nn.Module, names: Sequence[str]) -> None:
    """Raise :class:`ConfigError` listing the valid names if ``names`` has one that is not a conv of ``model``."""
    convs = {n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    unknown = [n for n in names if n not in convs]
    if unknown:
        raise ConfigError(
            f"prune.excluded_layers: unknown layer(s) {unknown}. Name conv modules as in model.named_modules(), "
            f"e.g. prune.excluded_layers=[backbone.block_1a.conv]. Prunable layers: {prunable_layer_names(model)}"
        )


# --------------------------------------------------------------------------------------------- statistics
def filter_norms(weight: torch.Tensor, norm: str = "l2") -> torch.Tensor:
    """``weight`` (C_out, C_in / groups, kh, kw) -> (C_out,) float64 L2 (or L1) norm of each output filter."""
    w = weight.detach().flatten(1).double()
    return w.abs().sum(1) if norm == "l1" else w.square().sum(1).sqrt()


def bn_fold_scale(bn: nn.BatchNorm2d) -> torch.Tensor:
    """(C,) float64 ``|gamma| / sqrt(running_var + eps)``: what folding ``bn`` into the conv before it multiplies
    each output filter by (the kernel the exported, BN-folded network runs is ``W[f] * gamma_f / sigma_f``)."""
    var = bn.running_var.detach().double() if bn.running_var is not None else torch.ones(bn.num_features).double()
    gamma = bn.weight.detach().double().abs() if bn.weight is not None else torch.ones_like(var)
    return gamma / (var + bn.eps).sqrt()


def layer_stat(graph: Any, conv: nn.Conv2d, settings: PruneSettings) -> torch.Tensor:
    """(C_out,) per-layer normalized filter statistic of ``conv``.

    TAO's (``fold_bn=False``): the raw kernel's norm, BN ignored. After a conv comes BatchNorm, which undoes any
    scaling of the kernel, so that norm says little about what a filter contributes: a filter whose BN scale is ~0
    (switched off, e.g. by ``optim.l1_bn_gamma``) can look as strong as any. ``fold_bn=True`` measures the kernel
    as the deployed network runs it, BN folded in.
    """
    stat = filter_norms(conv.weight, settings.norm)
    if settings.fold_bn:
        bn = following_bn(graph, conv)
        if bn is not None:
            stat = stat * bn_fold_scale(bn)
    return normalize(stat, settings.normalizer)


def normalize(stat: torch.Tensor, normalizer: str = "max") -> torch.Tensor:
    """Per-layer normalization of a (C,) stat: ``stat / max`` or ``stat / ||stat||_2 * C`` (TAO's 'L2').

    An all-zero layer stays all zero (TAO would divide by zero and get NaNs, which keep only the minimum).
    """
    denom = stat.max() if normalizer == "max" else stat.norm() / stat.numel()
    return stat / denom if denom > 0 else torch.zeros_like(stat)


def merge(stats: torch.Tensor, equalization: str = "union") -> torch.Tensor:
    """(L, C) normalized stats of L coupled layers -> (C,) with TAO's equalization criterion."""
    if equalization == "union":
        return stats.amax(0)
    if equalization == "intersection":
        return stats.amin(0)
    if equalization == "arithmetic_mean":
        return stats.mean(0)
    if equalization == "geometric_mean":
        return stats.log().mean(0).exp()  # log(0) = -inf -> exp -> 0, like TAO's numpy
    raise ValueError(f"unknown equalization {equalization!r}; allowed: {list(EQUALIZATIONS)}")


def retained_count(stat: torch.Tensor, settings: PruneSettings) -> int:
    """How many of the (C,) merged stat's channels to keep (TAO ``_get_retained_idx``; ``pth = 0`` keeps all)."""
    n = stat.numel()
    if settings.pth == 0:
        # TAO's strict ``>`` would drop exactly-zero kernels at pth 0; their bias still feeds the next layer,
        # so we make pth 0 mean "no pruning" (outputs identical).
        return n
    keep = max(int((stat > settings.pth).sum()), min(settings.min_filters, n))
    keep += -keep % settings.granularity  # round UP to the granularity (Torch-Pruning's round_to rounds down)
    return min(keep, n)


def floor_count(channels: int, settings: PruneSettings) -> int:
    """The fewest channels a group of ``channels`` can keep: ``min_filters`` rounded up to the granularity."""
    keep = min(settings.min_filters, channels)
    return min(keep + -keep % settings.granularity, channels)


def groups_at_floor(groups: Sequence[dict[str, Any]], settings: PruneSettings) -> tuple[int, int]:
    """``(at floor, cuttable)``: of the report's ``groups`` (``{"channels", "kept"}``) larger than their floor,
    how many were cut down to it. Equal counts mean the threshold removed everything it could."""
    cuttable = [g for g in groups if g["channels"] > floor_count(g["channels"], settings)]
    return sum(1 for g in cuttable if g["kept"] == floor_count(g["channels"], settings)), len(cuttable)


def retained_indices(stat: torch.Tensor, settings: PruneSettings) -> torch.Tensor:
    """Sorted indices of the top-``retained_count`` channels by stat (ties: lower index first)."""
    order = torch.argsort(stat, descending=True, stable=True)
    return order[: retained_count(stat, settings)].sort().values


# --------------------------------------------------------------------------------------------- planning
@dataclass
class GroupDecision:
    """The decision for one Torch-Pruning group (one set of output channels that must be pruned together).

    ``members``: the coupled convs whose *output* channels are pruned (root first; more than one for residual
    adds, multiplies and depthwise convs). ``layer_stats`` (len(members), C) are their per-layer normalized
    stats in the root's channel order, ``merged`` (C,) the equalized stat and ``kept`` the sorted root channel
    indices retained.
    """

    root: str
    members: tuple[str, ...]
    layer_stats: torch.Tensor
    merged: torch.Tensor
    kept: torch.Tensor

    @property
    def channels(self) -> int:
        return self.merged.numel()

    @property
    def pruned(self) -> list[int]:
        mask = torch.ones(self.channels, dtype=torch.bool)
        mask[self.kept] = False
        return mask.nonzero().flatten().tolist()


def plan_pruning(model: nn.Module, settings: PruneSettings, graph: Any = None) -> list[GroupDecision]:
    """Decide, on ``model``'s current weights, which channels of every prunable group to keep.

    Groups containing an output conv or an excluded layer are left whole (as TAO skips equalization groups
    with an excluded member). ``graph``: a Torch-Pruning ``DependencyGraph`` of ``model`` (built if None).
    """
    graph = graph if graph is not None else dependency_graph(model)
    names = {m: n for n, m in model.named_modules()}
    excluded_names = set(settings.excluded_layers)
    excluded = [m for n, m in model.named_modules() if n in excluded_names]
    decisions = []
    for group in graph.get_all_groups(ignored_layers=_semantic_convs(model) + excluded, root_module_types=[nn.Conv2d]):
        root = group[0].dep.target.module
        n = root.out_channels
        members: dict[str, torch.Tensor] = {}
        for item in group:
            conv = item.dep.target.module
            if not (isinstance(conv, nn.Conv2d) and graph.is_out_channel_pruning_fn(item.dep.handler)):
                continue  # BN, ops, and convs whose *input* channels follow this group
            if names[conv] in members:
                continue
            if sorted(item.root_idxs) != list(range(n)):
                raise NotImplementedError(
                    f"{names[conv]} is coupled to {names[root]} through a channel remapping (split/slice); "
                    "threshold pruning supports residual adds, multiplies, depthwise convs and concats"
                )
            per_filter = layer_stat(graph, conv, settings)
            stat = torch.empty(n, dtype=per_filter.dtype)
            stat[torch.as_tensor(item.root_idxs)] = per_filter[torch.as_tensor(item.idxs)]
            members[names[conv]] = stat
        if not members:
            continue
        layer_stats = torch.stack(list(members.values()))
        merged = merge(layer_stats, settings.equalization)
        decisions.append(
            GroupDecision(names[root], tuple(members), layer_stats, merged, retained_indices(merged, settings))
        )
    order = {n: i for i, n in enumerate(names.values())}  # Torch-Pruning yields groups in graph order
    return sorted(decisions, key=lambda d: order[d.root])


def _notes(model: nn.Module, settings: PruneSettings, decisions: Sequence[GroupDecision]) -> dict[str, str]:
    """The report's per-conv note: why its output channels were left alone, or which coupled group it is in."""
    notes = {n: "output head" for n, m in model.named_modules() if any(m is h for h in _semantic_convs(model))}
    notes.update({n: "excluded" for n in settings.excluded_layers if n not in notes})
    decided = {m for d in decisions for m in d.members}
    for n in prunable_layer_names(model):
        if n not in decided and n not in notes:
            notes[n] = "coupled to excluded"
    for d in decisions:
        if len(d.members) > 1:
            verb = "pruned" if d.pruned else "kept"
            notes.update({m: f"{verb}, coupled group of {d.root}" for m in d.members})
    return notes


# --------------------------------------------------------------------------------------------- entry point
def prune_model(
    model: nn.Module, prune_cfg: PruneConfig | PruneSettings, input_hw: Sequence[int]
) -> tuple[nn.Module, list[list], dict[str, Any]]:
    """Threshold-prune a copy of ``model`` (``model`` itself is not modified).

    Args:
        model: a ``BpNetLite`` (or any conv net taking ``(N, 3, H, W)``; its ``output_convs()``, if defined,
            are never pruned).
        prune_cfg: the ``prune`` config section (:class:`posekit.config.PruneConfig`) or a ``PruneSettings``.
        input_hw: resolution for the FLOPs report, e.g. ``cfg.model.input_shape``.

    Returns:
        ``(pruned_model, history, report)``: the pruned copy (same train/eval mode), Torch-Pruning's pruning
        history as plain lists ``[[module_name, is_out_channels, [idxs]], ...]`` (for ``save_model``), and
        the report of ``posekit.prune.report.pruning_report`` plus ``"groups"``: one entry per pruning group
        ``{"members", "channels", "kept"}``.
    """
    settings = PruneSettings.from_config(prune_cfg)
    check_excluded_layers(model, settings.excluded_layers)
    pruned = copy.deepcopy(model)
    graph = dependency_graph(pruned)
    decisions = plan_pruning(pruned, settings, graph)
    modules = dict(pruned.named_modules())
    for d in decisions:
        if not d.pruned:
            continue
        root = modules[d.root]
        group = graph.get_pruning_group(root, graph.get_pruner_of_module(root).prune_out_channels, d.pruned)
        if not graph.check_pruning_group(group):  # cannot happen: at least one channel is always kept
            raise RuntimeError(f"Torch-Pruning refused to prune {d.root} to {d.kept.numel()} channels")
        if settings.compensate and len(d.members) == 1:  # (coupled producers would sum their constants)
            constants = removed_channel_output(graph, root)
            if constants is not None:
                fold_into_consumers(graph, group, constants)
        group.prune()
    history = [[str(n), bool(out), [int(i) for i in idxs]] for n, out, idxs in graph.pruning_history()]
    report = pruning_report(model, pruned, input_hw, _notes(model, settings, decisions), settings.as_dict())
    report["groups"] = [{"members": list(d.members), "channels": d.channels, "kept": d.kept.numel()} for d in decisions]
    return pruned, history, report

"""Torch-Pruning dependency graphs for posekit models, and replaying a saved pruning history.

A pruned model file stores the unpruned architecture (``arch``), the state dict of the pruned network and
Torch-Pruning's history ``[[module_name, is_out_channels, [idxs]], ...]``: the root pruning call of every group
that was pruned, in order. Replaying it on a freshly built unpruned ``BpNetLite`` reproduces the pruned layer
shapes exactly (Torch-Pruning re-derives every coupled slice: BN, next conv's input channels, concat offsets), so
the file loads with ``torch.load(weights_only=True)``: no pickled modules.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

# The graph only records which channels couple; the spatial size is irrelevant as long as every stride-8 map
# is at least 1x1 and 7x7 convs see a valid padded input. 64x64 keeps the trace to a few milliseconds.
TRACE_HW = (64, 64)


@contextlib.contextmanager
def _tracing_mode(model: nn.Module) -> Iterator[None]:
    """Autograd on (tracing follows ``grad_fn``s, even under a caller's ``no_grad``) and train/eval flags
    restored afterwards (Torch-Pruning puts the model in eval mode and leaves it there)."""
    modes = {m: m.training for m in model.modules()}
    try:
        with torch.inference_mode(False), torch.enable_grad():
            yield
    finally:
        for m, training in modes.items():
            m.training = training


def dependency_graph(model: nn.Module, input_hw: Sequence[int] = TRACE_HW) -> tp.DependencyGraph:
    """Trace ``model`` (any module taking an ``(N, 3, H, W)`` image batch) into a Torch-Pruning graph.

    The forward pass runs in eval mode, so BN running statistics are untouched. The input requires grad so that
    every op gets a ``grad_fn`` even when the parameters are frozen.
    """
    param = next(model.parameters())
    x = torch.zeros(1, 3, *input_hw, dtype=param.dtype, device=param.device, requires_grad=True)
    with _tracing_mode(model):
        return tp.DependencyGraph().build_dependency(model, example_inputs=x, verbose=False)


def _check_history(model: nn.Module, history: Sequence) -> None:
    names = {name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    for i, entry in enumerate(history):
        if not (isinstance(entry, (list, tuple)) and len(entry) == 3):
            raise ValueError(f"pruning history entry {i} is {entry!r}; expected [module_name, is_out_channels, [idxs]]")
        name = entry[0]
        if name not in names:
            raise ValueError(
                f"pruning history entry {i} names module {name!r}, which {type(model).__name__} does not have as a "
                "conv layer; the file was written for a different architecture"
            )


def apply_pruning_history(model: nn.Module, history: Sequence) -> nn.Module:
    """Prune ``model`` (freshly built, unpruned) in place by replaying ``history``; returns it.

    ``history`` is Torch-Pruning's ``DependencyGraph.pruning_history()`` or its plain-list form from
    ``posekit.model.io.save_model``. After this, ``model.load_state_dict(pruned_state_dict)`` fits exactly.
    Raises ``ValueError`` for a history that does not fit the model.
    """
    if not history:
        return model
    _check_history(model, history)
    history = [[str(name), bool(is_out), [int(i) for i in idxs]] for name, is_out, idxs in history]
    graph = dependency_graph(model)
    with _tracing_mode(model):
        try:
            graph.load_pruning_history(history)
        except (IndexError, RuntimeError) as e:
            raise ValueError(
                f"the pruning history does not fit this model ({e}); was it saved for another architecture?"
            ) from e
    return model


def history_for_kept(model: nn.Module, kept: Mapping[str, int]) -> list[list]:
    """A pruning history that leaves conv ``name`` of ``model`` with its first ``kept[name]`` output filters.

    For architecture-only uses (latency does not depend on which filters survive, only on how many): e.g.
    rebuilding the shape of a model pruned elsewhere from its prune report. Replay it with
    :func:`apply_pruning_history`. Raises ``ValueError`` for an unknown layer or a count outside [1, filters].
    """
    convs = {name: m for name, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    history = []
    for name, k in kept.items():
        if name not in convs:
            raise ValueError(f"{name!r} is not a Conv2d of this model")
        n = convs[name].out_channels
        if not 1 <= int(k) <= n:
            raise ValueError(f"{name}: cannot keep {k} of {n} filters")
        if int(k) < n:
            history.append([name, True, list(range(int(k), n))])
    return history


def following_bn(graph: Any, conv: nn.Conv2d) -> nn.BatchNorm2d | None:
    """The BatchNorm that directly consumes ``conv``'s output in Torch-Pruning's graph, if it is the only consumer."""
    node = graph.module2node.get(conv)
    outs = [] if node is None else [o.module for o in node.outputs]
    return outs[0] if len(outs) == 1 and isinstance(outs[0], nn.modules.batchnorm._BatchNorm) else None

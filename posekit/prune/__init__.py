"""TAO threshold pruning on Torch-Pruning's dependency graph (docs/pruning.md).

    pruned, history, report = prune_model(model, cfg.prune, cfg.model.input_shape)
    save_model(path, pruned, pruning_history=history)      # load_model replays the history (history.py)
"""

from posekit.prune.history import apply_pruning_history, dependency_graph
from posekit.prune.report import conv_layers, format_table, pruning_report
from posekit.prune.threshold import (
    GroupDecision,
    PruneSettings,
    check_excluded_layers,
    plan_pruning,
    prunable_layer_names,
    prune_model,
)

__all__ = [
    "GroupDecision",
    "PruneSettings",
    "apply_pruning_history",
    "check_excluded_layers",
    "conv_layers",
    "dependency_graph",
    "format_table",
    "plan_pruning",
    "prunable_layer_names",
    "prune_model",
    "pruning_report",
]

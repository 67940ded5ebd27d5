"""``python launch.py stage=prune prune.pth=0.2``: TAO threshold pruning of the trained model (docs/pruning.md).

Reads ``prune.model`` or ``<experiment>/train/model.pt``; writes ``<experiment>/prune/model.pruned-<pth>.pt``
(a posekit model file carrying the pruning history, loadable with ``weights_only=True``), ``summary.json`` and
its per-threshold copy ``summary-<pth>.json`` (per-layer channels, parameters, FLOPs), and prints the table.
"""

from __future__ import annotations

import logging
from typing import Any

from omegaconf import DictConfig

from posekit import io
from posekit.experiment import Experiment, pth_tag
from posekit.export.artifacts import WRITTEN, Artifact
from posekit.model import save_model
from posekit.model.io import load_model_for_stage
from posekit.prune import PruneSettings, check_excluded_layers, format_table, prune_model
from posekit.prune.threshold import groups_at_floor

log = logging.getLogger("posekit")

MAIN_METRIC = "params_ratio"  # pruned / unpruned trainable parameters (lower = smaller model)


def run(cfg: DictConfig) -> dict[str, Any]:
    settings = PruneSettings.from_config(cfg.prune)
    exp = Experiment(cfg)
    source = exp.resolve(
        cfg.prune.model,
        exp.default_model("prune")[0],
        "model to prune",
        f"Run `python launch.py stage=train experiment.name={cfg.experiment.name}` first, "
        "or pass prune.model=PATH (a posekit .pt model file or a Lightning .ckpt).",
    )
    model, info = load_model_for_stage(source, "prune.model")
    check_excluded_layers(model, settings.excluded_layers)
    input_hw = [int(v) for v in cfg.model.input_shape]

    log.info("pruning %s at pth=%s (%s, %s normalizer, %s)", source, settings.pth, settings.norm,
             settings.normalizer, settings.equalization)
    pruned, history, report = prune_model(model, settings, input_hw)
    print(format_table(report), flush=True)
    warnings = []
    floor, cuttable = groups_at_floor(report["groups"], settings)
    if settings.pth > 0 and cuttable and floor == cuttable:
        warnings.append(
            f"prune.pth={settings.pth}: every one of the {floor} prunable layer groups was cut to its minimum "
            f"(prune.min_filters={settings.min_filters}); the threshold removes everything it can. TAO documents "
            "0.05..3.0 and the normalized norms are at most 1: lower prune.pth to keep the model's accuracy."
        )
    for w in warnings:
        log.warning("%s", w)

    # A model that was pruned before (prune -> retrain -> prune) keeps its earlier history: the file is
    # rebuilt from the unpruned arch on load, so the saved history must replay every round in order.
    history = list(info.get("pruning_history") or []) + history
    out = exp.pruned_model()
    meta = {
        **info.get("meta", {}),
        "stage": "prune",
        "source": str(source),
        "prune": settings.as_dict(),
        "input_shape": input_hw,
    }
    save_model(out, pruned, pruning_history=history, **meta)

    totals = report["totals"]
    metrics = {
        "params_ratio": totals["params"]["ratio"],
        "flops_ratio": totals["flops"]["ratio"],
        "params_before": totals["params"]["before"],
        "params_after": totals["params"]["after"],
        "keras_params_before": totals["keras_params"]["before"],
        "keras_params_after": totals["keras_params"]["after"],
        "gflops_before": totals["flops"]["before"] / 1e9,
        "gflops_after": totals["flops"]["after"] / 1e9,
    }
    folder = exp.dir("prune")
    summary = exp.write_summary(
        folder, "prune", artifacts={"model": out, "source": source}, metrics=metrics, report=report,
        warnings=warnings,
    )
    io.write_json(folder / f"summary-{pth_tag(settings.pth)}.json", io.read_json(summary))
    log.info("wrote %s (%.1f %% of the parameters)", out, 100 * metrics["params_ratio"])
    print(f"pruned model: {out}", flush=True)
    return {**metrics, WRITTEN: [Artifact.torch_model(out, f"pruned-{exp.pth}").to_record()]}

"""Model files that load with ``torch.load(weights_only=True)``: plain containers, never pickled modules.

A posekit model file (``*.pt``; pruned ones are named like TAO's ``model.pruned-0.2.pt``) holds::

    {"format": "posekit-model/1",
     "arch": {"stages", "num_heatmaps", "num_pafs", "width"},   # rebuilds the unpruned graph
     "pruning_history": [...] | None,                            # Torch-Pruning history, replayed on load
     "state_dict": {...},
     "meta": {...}}                                               # free-form: skeleton name, input shape, ...

``load_model`` also reads Lightning checkpoints written by the train/retrain stages (``*.ckpt``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from posekit import io
from posekit.model.bpnet import BpNetLite, build_model

FORMAT = "posekit-model/1"


def save_model(path: str | os.PathLike, model: BpNetLite, pruning_history: list | None = None, **meta: Any) -> Path:
    """Atomically write ``model`` (its ``arch`` + state dict + optional pruning history) to ``path``."""
    blob = {
        "format": FORMAT,
        "arch": dict(model.arch),
        "pruning_history": _plain_history(pruning_history),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "meta": meta,
    }
    return io.torch_save(blob, path)


def load_model(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> tuple[BpNetLite, dict]:
    """Load a model file or a Lightning checkpoint; returns ``(model in eval mode, info)``.

    ``info`` has ``arch``, ``pruning_history``, ``meta`` and ``source``. Raises ``FileNotFoundError`` with a hint
    when the file is missing.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"model file not found: {path}. Run the stage that produces it first (train/prune/retrain) "
            "or point the stage at an existing file (e.g. eval.artifact=PATH, prune.model=PATH, export.model=PATH)."
        )
    blob = torch.load(path, map_location=map_location, weights_only=True)
    if blob.get("format") == FORMAT:
        arch, history, sd, meta = blob["arch"], blob.get("pruning_history"), blob["state_dict"], blob.get("meta", {})
    elif "state_dict" in blob and "hyper_parameters" in blob:  # Lightning checkpoint
        hp = blob["hyper_parameters"]
        arch, history, meta = hp["arch"], hp.get("pruning_history"), hp.get("meta", {})
        sd = {k[len("net.") :]: v for k, v in blob["state_dict"].items() if k.startswith("net.")}
    else:
        raise ValueError(f"{path} is neither a posekit model file nor a posekit Lightning checkpoint")
    model = build_model(arch)
    if history:
        from posekit.prune.history import apply_pruning_history

        apply_pruning_history(model, history)
    model.load_state_dict(sd)
    model.eval()
    return model, {"arch": dict(arch), "pruning_history": history, "meta": dict(meta), "source": str(path)}


def _plain_history(history: list | None) -> list | None:
    """Torch-Pruning's history as plain lists of (module name, is_out_channels, [idxs])."""
    if history is None:
        return None
    return [[str(name), bool(is_out), [int(i) for i in idxs]] for name, is_out, idxs in history]

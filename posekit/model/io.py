"""Model files that load with ``torch.load(weights_only=True)``: plain containers, never pickled modules.

A posekit model file (``*.pt``; pruned ones are named like TAO's ``model.pruned-0.2.pt``) holds::

    {"format": "posekit-model/1",
     "arch": {"stages", "num_heatmaps", "num_pafs", "width"},   # rebuilds the unpruned graph
     "pruning_history": [...] | None,                            # Torch-Pruning history, replayed on load
     "state_dict": {...},
     "meta": {...}}                                               # free-form: skeleton name, input shape, ...

``load_model`` also reads Lightning checkpoints written by the train/retrain stages (``*.ckpt``).

Every read goes through :func:`read_torch_file`: ``weights_only=True`` always, and each way a file can be bad
(missing, empty, truncated, not PyTorch, holding code) is a :class:`~posekit.errors.UserError` that names the
file and what to do; it never relays torch's advice to load untrusted files with ``weights_only=False``. A model
whose weights are not finite (a diverged training) is refused too: pruning, exporting or evaluating it would
only produce garbage.
"""

from __future__ import annotations

import os
import pickle
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from posekit import io
from posekit.errors import MissingArtifactError, UserError
from posekit.model.bpnet import BpNetLite, build_model

WHERE = ("Point the stage at a good file (prune.model=, retrain.model=, export.model=, eval.artifact=, "
         "infer.artifact=) or re-run the stage that writes it.")


class NonFiniteWeights(UserError):
    """A model or checkpoint with NaN/Inf weights: the training that wrote it diverged."""


def read_torch_file(path: str | os.PathLike, what: str = "model file", map_location: Any = "cpu",
                    hint: str = WHERE) -> Any:
    """``torch.load(path, weights_only=True)``; every failure is a :class:`UserError` naming ``path`` + ``hint``."""
    path = Path(path)
    if not path.is_file():
        raise MissingArtifactError(f"{what} not found: {path}. {hint}")
    size = path.stat().st_size
    if size == 0:
        raise UserError(f"{what} {path} is empty (0 bytes: a run killed while writing it, or a full disk). {hint}")
    zipped = zipfile.is_zipfile(path)
    try:
        with warnings.catch_warnings():  # torch's notes on pickle protocols are not the user's concern
            warnings.simplefilter("ignore", UserWarning)
            # mmap: tensors are read from the file when touched
            return torch.load(path, map_location=map_location, weights_only=True, mmap=zipped)
    except pickle.UnpicklingError as e:
        # torch's weights-only unpickler refused it. Its message advises weights_only=False: never relayed.
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        with open(path, "rb") as f:
            pickled = f.read(1) == b"\x80"  # a pickle's protocol marker
        if found or pickled:
            objects = f" ({found.group(1)})" if found else ""
            raise UserError(
                f"{what} {path} was refused: it holds pickled Python objects{objects} other than tensors and plain "
                f"containers, which posekit never loads because unpickling them can run code. Use a file written "
                f"by posekit. {hint}"
            ) from None
        raise UserError(f"{what} {path} is not a PyTorch file ({size} bytes of something else). {hint}") from None
    except (RuntimeError, EOFError, ValueError, OSError, zipfile.BadZipFile) as e:
        why = "truncated or corrupt" if zipped or "zip archive" in str(e) else "not a PyTorch file, or corrupt"
        raise UserError(
            f"{what} {path} cannot be read: {why} ({size} bytes; a run killed while writing it, a full disk or "
            f"an incomplete copy). {hint}"
        ) from None


def check_finite(state_dict: dict[str, Any], path: str | os.PathLike, what: str = "model") -> None:
    """Raise :class:`NonFiniteWeights` if a floating-point tensor of ``state_dict`` has a NaN or an Inf."""
    bad = [k for k, v in state_dict.items()
           if torch.is_tensor(v) and v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise NonFiniteWeights(
            f"{what} {path} has non-finite weights (NaN/Inf in {len(bad)} tensor(s), e.g. {bad[0]}): the training "
            "that wrote it diverged, so pruning, exporting or evaluating it is meaningless. Re-train it (lower "
            "optim.lr, check the data: non-finite annotations are dropped at load) or use an earlier model."
        )


def read_checkpoint(path: str | os.PathLike, hint: str) -> dict:
    """A Lightning checkpoint to resume from, checked: readable, a checkpoint, finite weights."""
    blob = read_torch_file(path, "checkpoint", hint=hint)
    if not isinstance(blob, dict) or "state_dict" not in blob:
        raise UserError(f"checkpoint {path} is not a Lightning checkpoint (no state_dict). {hint}")
    check_finite(blob["state_dict"], path, "checkpoint")
    return blob

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

    ``info`` has ``arch``, ``pruning_history``, ``meta`` and ``source``. A missing, unreadable, foreign or
    non-finite file raises a :class:`UserError` (``MissingArtifactError``, a ``FileNotFoundError``, when missing).
    """
    path = Path(path)
    blob = read_torch_file(path, "model file", map_location=map_location)
    try:
        if not isinstance(blob, dict):
            raise KeyError("not a dict")
        if blob.get("format") == FORMAT:
            arch, history, sd = blob["arch"], blob.get("pruning_history"), blob["state_dict"]
            meta = blob.get("meta", {})
        elif "state_dict" in blob and "hyper_parameters" in blob:  # Lightning checkpoint
            hp = blob["hyper_parameters"]
            arch, history, meta = hp["arch"], hp.get("pruning_history"), hp.get("meta", {})
            sd = {k[len("net.") :]: v for k, v in blob["state_dict"].items() if k.startswith("net.")}
        else:
            raise KeyError("no posekit format tag")
    except (KeyError, TypeError, AttributeError):
        raise UserError(
            f"{path} is neither a posekit model file nor a posekit Lightning checkpoint (a PyTorch file of another "
            f"kind). {WHERE}"
        ) from None
    check_finite(sd, path)
    try:
        model = build_model(arch)
        if history:
            from posekit.prune.history import apply_pruning_history

            apply_pruning_history(model, history)
        model.load_state_dict(sd)
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as e:
        reason = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        raise UserError(f"{path}: its weights do not fit its recorded architecture ({reason}). {WHERE}") from e
    model.eval()
    return model, {"arch": dict(arch), "pruning_history": history, "meta": dict(meta), "source": str(path)}


def _plain_history(history: list | None) -> list | None:
    """Torch-Pruning's history as plain lists of (module name, is_out_channels, [idxs])."""
    if history is None:
        return None
    return [[str(name), bool(is_out), [int(i) for i in idxs]] for name, is_out, idxs in history]


def load_model_for_stage(path: str | os.PathLike, option: str) -> tuple[BpNetLite, dict]:
    """:func:`load_model` for a stage's input given by ``option`` (``prune.model``, ``export.model``): returns
    ``(model in eval mode, info)``; a missing file raises :class:`MissingArtifactError`, any other failure to read it
    a :class:`UserError` that names the option to fix."""
    try:
        return load_model(path)
    except FileNotFoundError as e:
        raise MissingArtifactError(str(e)) from e
    except (ValueError, KeyError, AttributeError, RuntimeError, OSError, EOFError, pickle.UnpicklingError) as e:
        reason = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        raise UserError(f"cannot load {path} as a posekit model ({reason}); pass {option}=PATH to a model file "
                        "(train/model.pt, prune/model.pruned-<pth>.pt, retrain/.../model.pt) or a Lightning "
                        ".ckpt") from e

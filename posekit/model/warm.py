"""Warm a network up on a device: forward and backward passes at the training batch shape, memory format and
autocast dtype on random images, optionally compiled. The device warm-up (posekit/train/warmup.py) runs them in a
thread; the compile prefill (posekit/train/compile_prefill.py) in a separate process,
``python -m posekit.model.warm SPEC``, which is why this module imports neither Lightning nor posekit.train (their
imports would cost that process seconds before it starts compiling)."""

from __future__ import annotations

import copy
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn


def uncompiled(net: nn.Module) -> nn.Module:
    """``net`` without ``nn.Module.compile()``'s mark, so it runs eager (in place; returns it). A deep copy shares the
    original's compiled call, which would run the original's forward: a copy must drop it and compile its own."""
    net.__dict__.pop("_compiled_call_impl", None)
    return net


def write_spec(folder: Path, net: nn.Module, *, pruning_history: list | None, batch_shape: tuple[int, ...],
               device: torch.device | str, autocast_dtype: torch.dtype | None, channels_last: bool, backend: str,
               cudnn_benchmark: bool | None) -> Path:
    """Write ``net`` (a posekit model file) and the spec :func:`main` reads into ``folder``; returns the spec's path."""
    from posekit.model.io import save_model

    model = save_model(folder / "model.pt", net, pruning_history=pruning_history)
    spec = folder / "spec.json"
    spec.write_text(json.dumps({
        "model": str(model), "batch_shape": list(batch_shape), "device": str(device),
        "autocast_dtype": str(autocast_dtype).removeprefix("torch.") if autocast_dtype is not None else None,
        "channels_last": bool(channels_last), "backend": backend, "cudnn_benchmark": cudnn_benchmark,
    }))
    return spec


def tensors(out: Any) -> list[torch.Tensor]:
    """Every tensor in a network output (tensors, lists and tuples of them, nested)."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in tensors(o)]
    return []


def warm_passes(
    net: nn.Module,
    batch_shape: tuple[int, int, int, int],
    device: torch.device | str,
    *,
    autocast_dtype: torch.dtype | None = None,
    channels_last: bool = False,
    compile: bool = False,
    compile_backend: str = "inductor",
    passes: int = 2,
    seed: int = 0,
    copy_net: bool = True,
    cudnn_benchmark: bool | None = None,
) -> dict[str, Any]:
    """Run ``passes`` forward and backward passes of a copy of ``net`` on random uint8 images.

    Args:
        net: the network as training will run it (its weights are copied, never written).
        batch_shape: (B, 3, H, W) of a training batch.
        device: where the copy runs (the training device).
        autocast_dtype: the autocast dtype of the training step (bf16-mixed: torch.bfloat16), None for fp32.
        channels_last: the training memory format.
        compile: ``torch.compile`` the copy as ``train.compile`` compiles the real network.
        compile_backend: ``torch.compile``'s backend (the prefill process's tests use a cheap one).
        passes: forward + backward passes (the first tunes and compiles; the second checks it is done).
        seed: the random images' own generator.
        copy_net: False when ``net`` is already a private copy (:class:`DeviceWarmup` takes it in the caller's
            thread); it is then moved and its gradients filled.
        cudnn_benchmark: ``trainer.benchmark``, set here before the first pass (None: left as it is). The Trainer
            sets the same flag when it is built, but the thread may reach its first convolution before that, and
            a pass without it would tune nothing.

    Returns:
        ``{"passes", "seconds": [per pass], "device"}``.
    """
    from posekit.data.images import normalize_tensor

    device = torch.device(device)
    if cudnn_benchmark is not None:
        torch.backends.cudnn.benchmark = bool(cudnn_benchmark)
    work = uncompiled(copy.deepcopy(net) if copy_net else net)  # the copy compiles its own (below)
    work.to(device)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    work.to(memory_format=memory_format)
    work.train()
    if compile:
        work.compile(backend=compile_backend)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    images = torch.randint(0, 256, batch_shape, generator=gen, dtype=torch.uint8).to(device)
    seconds = []
    for _ in range(passes):
        t = time.perf_counter()
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            out = work(normalize_tensor(images).contiguous(memory_format=memory_format))
            loss = sum(o.float().square().mean() for o in tensors(out))
        loss.backward()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds.append(round(time.perf_counter() - t, 3))
    del work, images, out, loss
    if device.type == "cuda":
        torch.cuda.empty_cache()  # hand the copy's memory back before training allocates its own
    return {"passes": passes, "seconds": seconds, "device": str(device)}


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a Lightning precision string (``bf16-mixed`` -> bfloat16, ``16-mixed`` -> float16)."""
    if precision.startswith("bf16"):
        return torch.bfloat16
    if precision.startswith("16"):
        return torch.float16
    return None


def main(argv: list[str] | None = None) -> int:
    """``python -m posekit.model.warm SPEC``: load the spec's model file, compile it with the spec's backend and run
    one forward and backward pass (the compile prefill's process); print ``{"seconds": [...]}`` as the last line.

    SPEC is a JSON file: ``model`` (a model file), ``batch_shape``, ``device``, ``autocast_dtype`` (``bfloat16``,
    ``float16`` or null), ``channels_last``, ``backend``, ``cudnn_benchmark``."""
    from posekit.model.io import load_model

    spec = json.loads(Path((sys.argv[1:] if argv is None else argv)[0]).read_text())
    net, _ = load_model(spec["model"])
    dtype = spec.get("autocast_dtype")
    rec = warm_passes(
        net, tuple(spec["batch_shape"]), spec["device"],
        autocast_dtype=getattr(torch, dtype) if dtype else None,
        channels_last=bool(spec["channels_last"]),
        compile=True, compile_backend=spec["backend"], passes=1, copy_net=False,
        cudnn_benchmark=spec.get("cudnn_benchmark"),
    )
    print(json.dumps({"seconds": rec["seconds"]}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

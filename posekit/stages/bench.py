"""``stage=bench``: latency and throughput of artifacts, network-only and end-to-end, like trtexec's summary.

    python launch.py stage=bench                                   # the experiment's exported models
    python launch.py stage=bench bench.artifacts=[a.onnx,b.onnx] bench.batch_sizes=[1,8] runtime.ort_threads=2

For each artifact x batch size:
  * **network**: ``warmup`` calls, then ``iters`` timed calls of the backend on a fixed normalized batch
    (host array in, host arrays out: trtexec's "Latency"). On a CUDA torch/TensorRT backend the input already
    lives on the GPU and CUDA events time the device work (trtexec's "GPU Compute Time").
  * **end-to-end**: the :class:`~posekit.runtime.Predictor` on ``batch`` real images (preprocess + network +
    decode, original-image coordinates), same warm-up and iteration counts.
Reported per row: median and p90 latency (ms per call), throughput (images/s at the median).

Writes ``<experiment>/bench/{bench.json, bench.md, summary.json}`` and prints the table. Timings depend on
what else runs on the machine: benchmark on an otherwise idle one.
"""

from __future__ import annotations

import logging
import os
import platform
import statistics
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from posekit import io
from posekit.errors import UserError
from posekit.experiment import Experiment
from posekit.runtime.timing import summarize, time_calls
from posekit.table import Column, markdown_table, num

log = logging.getLogger("posekit.bench")

MAIN_METRIC = "latency_ms"  # median network latency of the first artifact at the first batch size

ARTIFACT_PATTERNS = ("model.*.onnx", "model.*.engine")


# ------------------------------------------------------------------------------------------------ inputs
def default_artifacts(exp: Experiment) -> list[Path]:
    """The experiment's exported models that a finished export recorded (deployable ONNX excluded: it is
    DeepStream's; a killed export's leftovers excluded), else its latest model."""
    from posekit.export.artifacts import is_runnable, recorded_artifacts

    found, partial = [], []
    for folder in sorted(p for p in exp.root.glob("export/*") if p.is_dir()):
        complete = recorded_artifacts(folder)
        for p in sorted(q for pattern in ARTIFACT_PATTERNS for q in folder.glob(pattern) if is_runnable(q)):
            (found if p.name in complete else partial).append(p)
    if partial:
        log.warning("bench: skipping %d file(s) of unfinished exports (not in their summary*.json): %s",
                    len(partial), ", ".join(str(p) for p in partial))
    if found:
        return sorted(found)
    path, _ = exp.latest_model()
    return [path]


def bench_images(cfg: DictConfig, count: int) -> list[np.ndarray]:
    """``count`` RGB images for end-to-end timing (repeated if fewer exist): ``bench.images`` or the val set."""
    from posekit.data.images import CorruptImageError, read_image_rgb
    from posekit.export.calibration import read_image_list

    if cfg.bench.images:
        paths = read_image_list(cfg.bench.images)
    else:
        from posekit.data.annotations import load_coco
        from posekit.data.paths import resolve_data

        data = resolve_data(cfg, splits=("val",))
        entries = sorted(load_coco(data.val_ann).dataset["images"], key=lambda im: im["id"])
        paths = [Path(data.val_images) / im["file_name"] for im in entries]
    images = []
    for p in paths:
        try:
            images.append(read_image_rgb(p))
        except CorruptImageError as e:
            log.warning("bench: skipping %s", e)
        if len(images) == count:
            break
    if not images:
        raise UserError("bench: no readable image for end-to-end timing; set bench.images=PATH or "
                        "bench.end_to_end=false")
    return [images[i % len(images)] for i in range(count)]


def _on_cuda(backend: Any) -> bool:
    return str(getattr(backend, "device", "cpu")).startswith("cuda") and backend.name in ("torch", "tensorrt")


def bench_artifact(cfg: DictConfig, path: Path, skeleton: Any, images: list[np.ndarray] | None,
                   label: str | None = None) -> list[dict]:
    """All batch sizes of one artifact; one row per batch size (``label`` names it in the table)."""
    from posekit.runtime import Predictor, load_backend

    backend = load_backend(path, cfg.runtime)
    hw = tuple(backend.input_hw or (int(v) for v in cfg.model.input_shape))
    cuda = _on_cuda(backend)
    rows = []
    for bs in (int(b) for b in cfg.bench.batch_sizes):
        batch = np.random.default_rng(0).uniform(-0.5, 0.5, size=(bs, 3, *hw)).astype(np.float32)
        row: dict[str, Any] = {
            "artifact": str(path), "name": label or path.name, "backend": backend.name,
            "precision": backend.meta.get("precision", "fp32"), "device": str(getattr(backend, "device", "cpu")),
            "input_hw": list(hw), "batch": bs, "static_batch": getattr(backend, "batch", None),
        }
        if cuda:
            import torch

            x = torch.from_numpy(batch).to(backend.device)
            row["network_timer"] = "cuda-events (device input)"
            row["network"] = summarize(time_calls(lambda: backend.run(x), cfg.bench.warmup, cfg.bench.iters, True), bs)
        else:
            row["network_timer"] = "wall (host in/out)"
            row["network"] = summarize(time_calls(lambda: backend(batch), cfg.bench.warmup, cfg.bench.iters), bs)
        if images is not None:
            runtime = OmegaConf.merge(cfg.runtime, {"batch_size": bs, "mode": "strict", "scales": [1.0]})
            predictor = Predictor(backend, skeleton, cfg.codec, runtime, hw)
            frames = images[:bs]
            parts: dict[str, list[float]] = {"preprocess_ms": [], "network_ms": [], "decode_ms": []}

            def e2e() -> None:
                predictor.predict_many(frames)
                for k in parts:
                    parts[k].append(predictor.last_timings[k])

            samples = time_calls(e2e, cfg.bench.warmup, cfg.bench.iters)
            row["end_to_end"] = summarize(samples, bs)
            row["end_to_end"]["breakdown_median_ms"] = {
                k: round(statistics.median(v[-cfg.bench.iters:]), 3) for k, v in parts.items()
            }
        rows.append(row)
        log.info("bench %s batch %d: network %.2f ms", path.name, bs, row["network"]["median_ms"])
    return rows


# ------------------------------------------------------------------------------------------------ report
BENCH_COLUMNS = [
    Column("name", "artifact"),
    Column("backend", "backend"),
    Column("precision", "precision"),
    Column("device", "device"),
    Column("input", "input"),
    Column("batch", "batch", numeric=True),
    num("net_median_ms", "net median ms", ".2f"),
    num("net_p90_ms", "net p90 ms", ".2f"),
    num("net_ips", "net img/s", ".1f"),
    num("e2e_median_ms", "e2e median ms", ".2f"),
    num("e2e_p90_ms", "e2e p90 ms", ".2f"),
    num("e2e_ips", "e2e img/s", ".1f"),
    Column("split", "e2e pre / net / decode ms"),
]


def format_table(rows: list[dict]) -> str:
    """Markdown table, one line per artifact x batch size. The last column splits the end-to-end median into its
    parts (each part's own median: preprocess, network with its host transfers, decode), so a slow stream shows
    where its time goes without opening bench.json."""
    flat = []
    for r in rows:
        n, e = r["network"], r.get("end_to_end") or {}
        parts = e.get("breakdown_median_ms")
        flat.append({
            "name": r["name"], "backend": r["backend"], "precision": r["precision"], "device": r["device"],
            "input": f"{r['input_hw'][0]}x{r['input_hw'][1]}", "batch": r["batch"],
            "net_median_ms": n["median_ms"], "net_p90_ms": n["p90_ms"], "net_ips": n["throughput_ips"],
            "e2e_median_ms": e.get("median_ms"), "e2e_p90_ms": e.get("p90_ms"), "e2e_ips": e.get("throughput_ips"),
            "split": " / ".join(f"{parts[k]:.2f}" for k in ("preprocess_ms", "network_ms", "decode_ms"))
            if parts else None,
        })
    return markdown_table(flat, BENCH_COLUMNS)


def machine() -> dict[str, Any]:
    from posekit.runtime.host import cpu_flags, cpu_name

    info: dict[str, Any] = {"platform": platform.platform(), "processor": cpu_name(), "cpu_flags": cpu_flags(),
                            "cpu_count": os.cpu_count()}
    try:
        import onnxruntime as ort
        import torch

        info.update(torch=torch.__version__, onnxruntime=ort.__version__, cuda=torch.cuda.is_available())
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return info


def artifact_label(path: Path, exp: Experiment) -> str:
    """A short name for a table row that tells artifacts apart: relative to the experiment's export folder, else to
    the experiment, else the file with its folder (a sweep's shared models are all called ``model.pt``)."""
    for base in (exp.root / "export", exp.root):
        if path.is_relative_to(base):
            return str(path.relative_to(base))
    return str(Path(path.parent.name) / path.name)


def run(cfg: DictConfig) -> dict[str, Any]:
    from posekit.skeleton import Skeleton

    exp = Experiment(cfg)
    artifacts = [Path(os.path.expanduser(str(a))).resolve() for a in cfg.bench.artifacts] or default_artifacts(exp)
    from posekit.export.artifacts import check_complete_export

    for path in artifacts:
        check_complete_export(path, exp.root / "export")
    skeleton = Skeleton.from_cfg(OmegaConf.to_container(cfg.keypoints, resolve=True))
    images = bench_images(cfg, max(int(b) for b in cfg.bench.batch_sizes)) if cfg.bench.end_to_end else None
    rows, skipped = [], {}
    for path in artifacts:
        try:
            rows.extend(bench_artifact(cfg, path, skeleton, images, artifact_label(path, exp)))
        except UserError as e:  # e.g. an engine on a machine without TensorRT: the other artifacts still run
            if len(artifacts) == 1:
                raise
            log.warning("bench: skipping %s: %s", path.name, e)
            skipped[str(path)] = str(e)
    if not rows:
        raise UserError(f"bench: none of the artifacts could run: {skipped}")
    out = exp.dir("bench")
    table = format_table(rows)
    host = machine()
    io.write_json(out / "bench.json", {"machine": host, "warmup": cfg.bench.warmup, "iters": cfg.bench.iters,
                                       "rows": rows, "skipped": skipped})
    io.write_text(out / "bench.md", f"Machine: {host['processor']}, {host['cpu_count']} CPUs"
                  f"{', GPU ' + host['gpu'] if host.get('gpu') else ''}; ORT threads: "
                  f"{cfg.runtime.ort_threads or 'default'}; {cfg.bench.warmup} warm-up + {cfg.bench.iters} timed "
                  f"calls.\n\n{table}\n")
    metrics = {"latency_ms": rows[0]["network"]["median_ms"], "throughput_ips": rows[0]["network"]["throughput_ips"],
               "rows": len(rows)}
    exp.write_summary(out, "bench", artifacts={"bench_json": out / "bench.json", "bench_md": out / "bench.md"},
                      metrics=metrics, machine=host, skipped=skipped)
    print(table, flush=True)
    # the rows go back to the caller too: the pipeline pairs them with its artifacts without re-reading bench.json
    return {**metrics, "timings": {"rows": rows, "skipped": skipped}}

"""The GPU run behind docs/results.md: the whole life cycle of the default model on one H100/H200.

    python -m benchmarks.gpu_pipeline --phase train  --out DIR  # data, loader vs memory at 256x256, training
    python -m benchmarks.gpu_pipeline --phase models --out DIR  # eval; prune at 3 pth; eval; retrain; eval
    python -m benchmarks.gpu_pipeline --phase deploy --out DIR  # pth 0.2: export fp32/fp16/int8, eval, bench;
                                                                # bench + eval on 20-person frames; then the
                                                                # pth x shape sweep (map)
    python -m benchmarks.gpu_pipeline --phase ddp    --out DIR  # 1 vs 2 GPUs (trainer=ddp), 256x256
    python -m benchmarks.gpu_pipeline --phase all    --out DIR  # the whole run in one process: train (with
                                                                # --candidate twice: two recipes at once,
                                                                # --max-kept/--min-ap pick one); prune + retrain at
                                                                # pth 0.2 and --pths at once; the pth 0.2
                                                                # pipeline (export, eval, bench); the pth x
                                                                # shape map; the loader phase if 4 min remain
                                                                # (--budget cuts)
    python -m benchmarks.gpu_pipeline --phase loader --out DIR  # loader alone / bare loop from memory /
                                                                # train stage at 6, 10, 14 workers, with and
                                                                # without L1, each --loader-variants (targets
                                                                # on the GPU, niced workers, compiled net),
                                                                # and fed from memory
    python -m benchmarks.gpu_pipeline --phase crowd --out DIR   # train + eval if not done; bench + eval on
                                                                # 20-person frames (end to end, decode in)
    python -m benchmarks.gpu_pipeline --phase compact --out DIR # short: train 3.5 min, prune 3 pth, retrain
                                                                # pth 0.2; ships the small models to DIR

Run the phases in this order on one machine (artifacts stay in ./experiments; every step is idempotent, so a phase
that ran out of time is finished by running it again). ``--phase all`` is meant to run detached (``setsid``)
while short commands collect DIR, since the whole run is longer than one 10-minute device command. Everything is plain
``python launch.py ...`` with the run's recipe (:func:`recipe_for`: ``--preset``, ``--override``, the chosen
``--candidate``), passed to every step; this script only sequences the commands and gathers each stage's
summary.json into DIR/<phase>.json. The models go to the shared folder of the ``pth_shape``
sweep, so the sweep of the deploy phase reuses them (one training, one retraining per pth). It also exercises
the GPU-only code paths CI cannot run: bf16-mixed training, channels_last, the torch backend with CUDA graphs
(eval of the .pt models), and DDP.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXP = ROOT / "experiments"
SHARED = EXP / "sweeps" / "pth_shape" / "shared"
PTHS = (0.05, 0.2, 0.5)


def recipe_for(preset: str = "gpu", overrides: Sequence[str] = ()) -> list[str]:
    """What every command of a run shares (and so what the deploy phase's sweep must share to reuse the models):
    the preset (which holds the recipe itself: time boxes, L1), the sweep's shared folder (not part of point
    names), and the caller's overrides."""
    return [f"preset={preset}", f"sweep.shared_dir={SHARED}", *overrides]


def cpu_description() -> dict:
    """The machine's CPUs as Linux reports them: model, logical CPUs, and threads per physical core (2 when the
    logical CPUs are SMT siblings, so a busy loader worker can share a core with the training process)."""
    from posekit.runtime.host import cpu_name

    out: dict = {"logical": os.cpu_count(), "model": cpu_name()}
    try:
        siblings = Path("/sys/devices/system/cpu/cpu0/topology/thread_siblings_list").read_text().strip()
        out["threads_per_core"] = sum(1 + (int(b) - int(a) if "-" in r else 0)
                                      for r in siblings.split(",") for a, _, b in [r.partition("-")])
    except (OSError, ValueError):
        pass
    return out


def command(recipe: Sequence[str], *overrides: str) -> list[str]:
    return [sys.executable, str(ROOT / "launch.py"), *recipe, *overrides]


def _wait(proc: subprocess.Popen, cmd: list[str], t0: float, log: list, deadline: float | None) -> int:
    """Exit code of ``proc`` (124 if killed at ``deadline``, a ``time.perf_counter()`` value); recorded in ``log``."""
    try:
        rc = proc.wait(timeout=None if deadline is None else max(deadline - time.perf_counter(), 1.0))
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        rc = 124
    log.append({"cmd": " ".join(cmd[2:]), "rc": rc, "wall_s": round(time.perf_counter() - t0, 1)})
    return rc


def launch(recipe: Sequence[str], *overrides: str, log: list, deadline: float | None = None) -> int:
    """``python launch.py recipe overrides``, its output in this process's, killed at ``deadline`` if given."""
    cmd = command(recipe, *overrides)
    print("\n$", " ".join(cmd[1:]), flush=True)
    return _wait(subprocess.Popen(cmd, cwd=ROOT), cmd, time.perf_counter(), log, deadline)


def launch_together(recipe: Sequence[str], runs: list[list[str]], log: list, deadline: float | None = None,
                    logs: list[str] | None = None) -> list[int]:
    """Several ``launch.py`` commands at once (one GPU; the CPU cores split between their loaders through
    ``data.num_workers``); each one's output goes to ``experiments/<logs[i] or its experiment name>.log``. Returns
    their exit codes, in order."""
    workers = max(2, (os.cpu_count() or 16) // len(runs) - 1)
    procs = []
    t0 = time.perf_counter()
    for i, overrides in enumerate(runs):
        cmd = command(recipe, *overrides, f"data.num_workers={workers}")
        name = logs[i] if logs else next((o.split("=", 1)[1] for o in overrides if o.startswith("experiment.name=")),
                                         str(i))
        print("\n$ (background)", " ".join(cmd[1:]), f"> {name}.log", flush=True)
        with open(EXP / f"{name}.log", "w") as out:  # the child keeps its own copy of the file descriptor
            procs.append((subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT), cmd))
    return [_wait(proc, cmd, t0, log, deadline) for proc, cmd in procs]


def pipeline_summary(name: str) -> dict:
    """Experiment ``name``'s pipeline summary.json ({} if its pipeline never wrote one, e.g. it crashed)."""
    path = EXP / name / "pipeline" / "summary.json"
    return json.loads(path.read_text()) if path.exists() else {}


def candidate_figures(name: str, pth: float = 0.2) -> dict:
    """Trained AP and the share of parameters pruning at ``pth`` keeps, from experiment ``name``'s pipeline."""
    rows = pipeline_summary(name).get("rows", [])
    by_label = {r.get("label"): r for r in rows if r.get("kind") == "model"}
    trained, pruned = by_label.get("trained", {}), by_label.get(f"pruned-{pth:g}", {})
    kept = pruned["params"] / trained["params"] if trained.get("params") and pruned.get("params") else None
    return {"name": name, "trained_AP": trained.get("AP"), "pruned_AP": pruned.get("AP"), "kept": kept}


def choose(figures: list[dict], max_kept: float | None = None, min_ap: float | None = None) -> int:
    """Index of the candidate to carry on with: the caller's bounds first (pruning at pth 0.2 keeps at most
    ``max_kept`` of the parameters, and the trained AP is at least ``min_ap``; None: no bound), then the ``max_kept``
    bound alone, then the trained AP. A candidate without figures (it crashed) meets no bound that is set."""

    def score(f: dict) -> tuple:
        ap = f["trained_AP"] if f["trained_AP"] is not None else -1.0
        small = max_kept is None or (f["kept"] is not None and f["kept"] <= max_kept)
        accurate = min_ap is None or (f["trained_AP"] is not None and ap >= min_ap)
        return (small and accurate, small, ap)

    return max(range(len(figures)), key=lambda i: score(figures[i]))


def phase_candidates(recipe: Sequence[str], result: dict, candidates: list[list[str]], log: list,
                     deadline: float | None = None, max_kept: float | None = None,
                     min_ap: float | None = None) -> tuple[str, list[str]]:
    """Train one model per candidate recipe at once, evaluate it and prune it at pth 0.2; keep the one
    :func:`choose` picks. Returns its experiment name and its overrides (which the rest of the run adds to
    ``recipe``)."""
    runs = [["stage=pipeline", "pipeline.steps=[train,eval,prune,eval]", "prune.pth=0.2", f"experiment.name=gpu-c{i}",
             *c] for i, c in enumerate(candidates)]
    launch_together(recipe, runs, log, deadline=deadline)
    figures = [dict(candidate_figures(f"gpu-c{i}"), overrides=c) for i, c in enumerate(candidates)]
    best = choose(figures, max_kept=max_kept, min_ap=min_ap)
    result["candidates"], result["chosen"] = figures, best
    print("candidates:", json.dumps(figures, indent=1), "\nchosen:", best, flush=True)
    trained = pipeline_summary(f"gpu-c{best}").get("artifacts", {}).get("trained")
    if trained:  # the same model pruned by TAO's criterion (raw kernel norms), for comparison with fold_bn
        launch(recipe, *candidates[best], "stage=prune", "sweep.shared_dir=null", f"prune.model={trained}",
               "prune.pth=0.2", "prune.fold_bn=false", "experiment.name=tao-criterion", log=log, deadline=deadline)
    return f"gpu-c{best}", candidates[best]


def phase_retrains(recipe: Sequence[str], log: list, pths: tuple[float, ...], name: str,
                   deadline: float | None = None) -> None:
    """Prune and retrain at every pth at once (the GPU is loader-bound, so the retrains share it at little cost):
    each pth's pipeline up to its retrained model's evaluation, with the CPU cores split between the loaders."""
    launch_together(recipe, [["stage=pipeline", "pipeline.steps=[train,eval,prune,eval,retrain,eval]",
                              f"prune.pth={p:g}", f"experiment.name={name}"] for p in pths], log, deadline=deadline,
                    logs=[f"{name}-retrain-{p:g}" for p in pths])


def summaries(root: Path) -> dict:
    """Every stage's summary.json under ``root`` (without the config), and the prune stage's per-threshold copies
    ``summary-<pth>.json`` (several pth prune into one folder, so summary.json holds only the last)."""
    out = {}
    for p in sorted(root.rglob("summary*.json")):
        try:
            s = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        s.pop("config", None)
        s.pop("layers", None)
        out[str(p.relative_to(EXP))] = s
    return out


def loader_throughput(recipe: Sequence[str], resolution: str = "256x256", seconds: float = 20.0) -> dict:
    """Images/s the training DataLoader delivers to the GPU on its own (no training step), preset=gpu workers."""
    import torch

    from posekit.config import compose
    from posekit.data.datamodule import PoseDataModule

    cfg = compose([*recipe, f"resolution={resolution}"])
    dm = PoseDataModule(cfg)
    dm.prepare_data()  # generates the synthetic set on first use
    dm.setup("fit")
    loader = dm.train_dataloader()
    it = iter(loader)
    for _ in range(3 * int(cfg.data.num_workers)):  # workers started, prefetch queues filled
        next(it)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        try:
            batch = next(it)
        except StopIteration:
            it = iter(loader)
            continue
        for v in batch.values():
            if torch.is_tensor(v):
                v.cuda(non_blocking=True)
        n += int(batch["image"].shape[0])
    torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    return {"input": resolution, "workers": int(cfg.data.num_workers), "batch": int(cfg.data.batch_size),
            "img_s": n / dt, "cpus": os.cpu_count()}


def ddp_scaling(recipe: Sequence[str], log: list, seconds: int) -> None:
    """The train stage at 256x256 with the real data pipeline on 1 and on 2 GPUs (images/s in each summary)."""
    for n in (1, 2):
        launch(recipe, "stage=train", f"experiment.name=ddp{n}", "resolution=256x256", "train.resume=false",
               "trainer=ddp", f"trainer.devices={n}", "trainer.strategy=" + ("ddp" if n > 1 else "auto"),
               f"trainer.max_time=00:00:00:{seconds:02d}", "trainer.sync_batchnorm=" + str(n > 1).lower(),
               "sweep.shared_dir=null", log=log)


def speed_baselines(recipe: Sequence[str], result: dict) -> None:
    """The two references for the real pipeline's speed at 256x256: the loader alone and the training step fed
    from memory."""
    from benchmarks.gpu_speed import training_from_memory

    result["loader_only_256"] = loader_throughput(recipe, "256x256")
    print("loader alone:", result["loader_only_256"], flush=True)
    result["train_from_memory_256"] = training_from_memory((256, 256), batch=32)
    print("train from memory:", result["train_from_memory_256"], flush=True)


def phase_train(recipe: Sequence[str], result: dict, log: list) -> None:
    import torch

    if not torch.cuda.is_available():  # a CPU dry run of the phases: only the commands
        launch(recipe, "stage=pipeline", "pipeline.steps=[train]", "experiment.name=gpu", log=log)
        return
    speed_baselines(recipe, result)
    launch(recipe, "stage=train", "experiment.name=loader256", "resolution=256x256", "train.resume=false",
           "trainer.max_time=00:00:00:30", "sweep.shared_dir=null", log=log)
    launch(recipe, "stage=pipeline", "pipeline.steps=[train]", "experiment.name=gpu", log=log)


LOADER_CONFIGS = ((14, 1e-3), (10, 1e-3), (6, 1e-3), (10, 0.0))  # (data.num_workers, optim.l1_kernel_reg)


def parse_loader_configs(text: str | None) -> tuple[tuple[int, float], ...]:
    """``"14:1e-3,8:0"`` -> ``((14, 0.001), (8, 0.0))``; None -> :data:`LOADER_CONFIGS`."""
    if not text:
        return LOADER_CONFIGS
    return tuple((int(w), float(l1)) for w, l1 in (c.split(":") for c in text.split(",")))


# The loader phase's variants of the train stage: name -> (extra overrides, extra seconds of time box). The
# references (fed from memory, profiled) run for the first worker configuration only.
LOADER_VARIANTS: dict[str, tuple[list[str], int]] = {
    "plain": ([], 0),
    "targets": (["data.targets_on_device=true"], 0),  # workers ship keypoints, the GPU renders the targets
    # workers ship sources and draws, the GPU warps, jitters and renders (docs/data.md, "The device data path")
    "device": (["data.targets_on_device=true", "data.augment_on_device=true"], 0),
    # ... and JPEG bytes, decoded by the GPU (nvJPEG; needs torchvision, else the workers decode, with a warning)
    "device-decode": (["data.targets_on_device=true", "data.augment_on_device=true", "data.decode_on_device=true"], 0),
    "nice": (["debug.worker_nice=10"], 0),  # workers below the training process's priority
    "compile": (["train.compile=true"], 150),  # torch.compile of the network; the box also holds the compilation
    "memory": (["debug.memory_batches=16"], 0),  # the same Lightning step without the data pipeline
    "memory-compile": (["debug.memory_batches=16", "train.compile=true"], 150),  # the reference for "compile"
    "profiled": (["debug.profiler=simple"], 0),  # Lightning's per-hook wall times, printed into the log
}
REFERENCE_VARIANTS = ("memory", "memory-compile", "profiled")


def loader_runs(configs, variants: tuple[str, ...]) -> list[tuple[int, float, str]]:
    """(workers, l1, variant) of each train run of the loader phase, in order: every variant for the first
    configuration, in the order given, then the lever variants (not the references) for each other one."""
    unknown = [v for v in variants if v not in LOADER_VARIANTS]
    if unknown:
        raise SystemExit(f"--loader-variants: unknown {unknown}; choose from {list(LOADER_VARIANTS)}")
    levers = [v for v in variants if v not in REFERENCE_VARIANTS]
    return [(w, l1, v) for i, (w, l1) in enumerate(configs) for v in (variants if i == 0 else levers)]


def phase_loader(recipe: Sequence[str], result: dict, log: list, deadline: float | None = None,
                 configs=LOADER_CONFIGS, seconds: int = 30,
                 variants: tuple[str, ...] = ("plain", "targets", "memory")) -> None:
    """Where the gap between the real pipeline and memory-fed training comes from (256x256, ``seconds`` each):
    the worker count (CPU left to the main thread), the L1 term (per-step work beside the network), and the
    :data:`LOADER_VARIANTS` (``targets``: the GPU renders the targets, less CPU per sample; ``nice``: workers at a
    lower priority than the training process; ``compile``: fewer kernel launches per step). ``memory`` (the
    reference the real pipeline is measured against: the same Lightning step, loss, L1 and logging, fed from
    memory) runs for the first configuration; the bare loop of ``gpu_speed.training_from_memory`` (no Lightning,
    no L1) bounds it from above. ``profiled`` runs the first configuration under Lightning's simple profiler (wall
    time per hook: fetching the batch, training_step, backward, optimizer step, callbacks), its report printed into
    the log."""
    speed_baselines(recipe, result)
    for workers, l1, variant in loader_runs(configs, variants):
        extra, more_s = LOADER_VARIANTS[variant]
        suffix = "" if variant == "plain" else f"-{variant}"
        box = seconds + more_s
        launch(recipe, "stage=train", f"experiment.name=loader-w{workers}-l1{l1:g}{suffix}",
               "resolution=256x256", "train.resume=false", f"trainer.max_time=00:00:{box // 60:02d}:{box % 60:02d}",
               "sweep.shared_dir=null", f"data.num_workers={workers}", f"optim.l1_kernel_reg={l1}", *extra,
               log=log, deadline=deadline)


def phase_models(recipe: Sequence[str], result: dict, log: list, pths=PTHS, deadline: float | None = None,
                 name: str = "gpu") -> None:
    for pth in pths:  # the eval of the trained model runs once (later calls find its record)
        launch(recipe, "stage=pipeline", f"experiment.name={name}", f"prune.pth={pth}",
               "pipeline.steps=[train,eval,prune,eval,retrain,eval]", log=log, deadline=deadline)


def deploy_pipeline(recipe: Sequence[str], log: list, deadline: float | None = None, name: str = "gpu") -> None:
    """pth 0.2 through the whole life cycle: the pipeline table of docs/results.md."""
    launch(recipe, "stage=pipeline", f"experiment.name={name}", "prune.pth=0.2",
           "pipeline.steps=[train,eval,prune,eval,retrain,eval,export,eval,bench]",
           "pipeline.precisions=[fp32,fp16,int8]", log=log, deadline=deadline)


def crowd_bench(recipe: Sequence[str], log: list, deadline: float | None = None, name: str = "gpu",
                pth: float = 0.2) -> None:
    """End to end, single stream, 20 people: the bench stage on ``+scene=crowd20`` frames (50 synthetic
    images with 20 annotated people each) for the trained and the retrained torch models of experiment ``name``'s
    pipeline (fp16 + CUDA graphs on a GPU), and the retrained model's AP on the same frames. It runs in its own
    experiment, ``<name>-crowd20``: the scene changes the data config, which the pipeline's cached steps depend on."""
    models = pipeline_summary(name).get("artifacts", {})
    torch_models = [models[k] for k in ("trained", f"retrained-{pth:g}") if k in models]
    if not torch_models:
        print(f"crowd bench: experiment {name} has no trained model yet, skipped", flush=True)
        return
    common = ("+scene=crowd20", f"experiment.name={name}-crowd20")
    quoted = [f"'{p}'" for p in torch_models]  # Hydra's quoted strings: a path may hold '=' or ','
    launch(recipe, "stage=bench", *common, f"bench.artifacts=[{','.join(quoted)}]", log=log, deadline=deadline)
    launch(recipe, "stage=eval", *common, f"eval.artifact={quoted[-1]}", log=log, deadline=deadline)


def accuracy_latency_map(recipe: Sequence[str], result: dict, log: list, out: Path, deadline: float | None = None,
                         pths: tuple[float, ...] | None = None) -> None:
    """The pth x shape sweep over the models already made (docs/results.md's map), its report shipped to ``out``.
    ``pths``: the thresholds to map (default: the sweep's own, 0.05, 0.2, 0.5)."""
    grid = [f"prune.pth={','.join(f'{p:g}' for p in pths)}"] if pths else []
    rc = launch(recipe, "+sweep=pth_shape", "eval.max_images=100", *grid, log=log, deadline=deadline)
    if rc != 0:  # cut off by the deadline (or a job crashed the sweep): report what finished, unfinished as rows
        subprocess.run([sys.executable, "-m", "posekit.sweep.report", str(EXP / "sweeps" / "pth_shape")], cwd=ROOT)
    report = EXP / "sweeps" / "pth_shape" / "report"
    for name in ("sweep.md", "sweep.csv"):
        if (report / name).exists():
            result[name] = (report / name).read_text()
    if (report / "pareto.png").exists():
        (out / "pareto.png").write_bytes((report / "pareto.png").read_bytes())


COMPACT = ("trainer.max_time=00:00:03:30", "retrain.max_time=00:00:01:00")


def phase_compact(recipe: Sequence[str], result: dict, log: list, deadline: float | None = None) -> None:
    """A shorter run for what is left of a device budget: train 3.5 min, prune at 3 pth, retrain pth 0.2 for
    1 min, evaluate every model. Each command is a fresh process."""
    launch(recipe, "stage=pipeline", "pipeline.steps=[train]", "experiment.name=gpu", *COMPACT, log=log,
           deadline=deadline)
    launch(recipe, "stage=pipeline", "experiment.name=gpu", "prune.pth=0.2",
           "pipeline.steps=[train,eval,prune,eval,retrain,eval]", *COMPACT, log=log, deadline=deadline)
    for pth in (0.5, 0.05):
        launch(recipe, "stage=pipeline", "experiment.name=gpu", f"prune.pth={pth}",
               "pipeline.steps=[train,prune,eval]", *COMPACT, log=log, deadline=deadline)


# The compact phase runs on a lent GPU machine whose disk is gone when the session ends; the only way back is the
# device tool's $OUT folder, which returns at most 8 files of at most 16 MiB each, 64 MiB in all, and drops
# larger files. So the models travel in parts of 15.5 MiB, in at most 5 files and 52 MiB, leaving room for the
# phase's JSON and logs. (The 3-stage model at width 1 has 16.8 M parameters, 67 MB in fp32: even a model pruned
# to a third of that needs fp16 or parts.)
SHIP_MAX_FILES, SHIP_MAX_BYTES, SHIP_PART_BYTES = 5, 52 * 2**20, int(15.5 * 2**20)


def ship_models(out: Path, max_files: int = SHIP_MAX_FILES, max_bytes: int = SHIP_MAX_BYTES,
                part: int = SHIP_PART_BYTES) -> list:
    """Copy the run's small models to ``out`` for another machine: retrained-0.2, pruned-0.5, pruned-0.05, as
    posekit model files, floating tensors in fp16 when the fp32 file would not fit one part, split into parts
    ``<name>.<dtype>.pt.part<k>`` (``cat`` them back), skipping a model that would pass ``max_files`` or
    ``max_bytes``. Returns what was written."""
    import torch

    wanted = [("retrained-0.2", "retrain/pth-0.2/model.pt"), ("pruned-0.5", "prune/model.pruned-0.5.pt"),
              ("pruned-0.05", "prune/model.pruned-0.05.pt")]
    written, files, total = [], 0, 0
    for name, rel in wanted:
        found = sorted(SHARED.glob(f"*/{rel}"))
        if not found:
            continue
        blob = found[0].read_bytes()
        dtype = "fp32"
        if len(blob) > part:
            obj = torch.load(found[0], map_location="cpu", weights_only=True)
            half = {k: (v.half() if torch.is_tensor(v) and v.is_floating_point() else v)
                    for k, v in obj["state_dict"].items()}
            tmp = out / f"{name}.tmp"
            torch.save(dict(obj, state_dict=half), tmp)
            blob, dtype = tmp.read_bytes(), "fp16"
            tmp.unlink()
        parts = [blob[i:i + part] for i in range(0, len(blob), part)]
        if files + len(parts) > max_files or total + len(blob) > max_bytes:
            continue
        for k, chunk in enumerate(parts):
            (out / f"{name}.{dtype}.pt.part{k}").write_bytes(chunk)
        files, total = files + len(parts), total + len(blob)
        written.append({"name": name, "dtype": dtype, "bytes": len(blob), "parts": len(parts), "source": str(found[0])})
    return written


def finish(result: dict, log: list, out: Path, name: str, start: float, experiment: str = "gpu") -> None:
    result["commands"] = log
    result["summaries"] = summaries(EXP)
    pipe = EXP / experiment / "pipeline" / "pipeline.md"
    if pipe.exists():
        result["pipeline_md"] = pipe.read_text()
        print(pipe.read_text())
    result["wall_s"] = round(time.perf_counter() - start, 1)
    out.mkdir(parents=True, exist_ok=True)
    for side_log in EXP.glob("*.log"):  # launch_together's per-command logs (the driver's own output has the rest)
        (out / "logs").mkdir(exist_ok=True)
        (out / "logs" / side_log.name).write_bytes(side_log.read_bytes())
    tmp = out / f".{name}.json"
    tmp.write_text(json.dumps(result, indent=2, default=str))
    tmp.replace(out / f"{name}.json")
    print(json.dumps(log, indent=1))
    print(f"phase {name}: {result['wall_s']:.0f} s", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--phase", required=True,
                    choices=["all", "train", "models", "deploy", "ddp", "compact", "loader", "crowd"])
    ap.add_argument("--out", default=".")
    ap.add_argument("--ddp-seconds", type=int, default=30)
    ap.add_argument("--preset", default="gpu", help="another preset (e.g. tiny) to dry-run the phases on a CPU")
    ap.add_argument("--override", action="append", default=[], help="extra override for every command")
    default_configs = ",".join(f"{w}:{l1:g}" for w, l1 in LOADER_CONFIGS)
    ap.add_argument("--loader-configs", default=None,
                    help=f"loader phase: WORKERS:L1,... (default {default_configs})")
    ap.add_argument("--loader-seconds", type=int, default=30, help="loader phase: time box of each train run")
    ap.add_argument("--loader-variants", default="plain,targets,memory",
                    help=f"loader phase: which of {','.join(LOADER_VARIANTS)} to run (the references, memory* and "
                         "profiled: first configuration only)")
    ap.add_argument("--candidate", action="append", default=[],
                    help="all: a recipe to try (space-separated overrides); with two or more, their models train at "
                         "once on the GPU and the run carries on with the one --max-kept and --min-ap pick")
    ap.add_argument("--max-kept", type=float, default=None,
                    help="all, two or more --candidate: prefer a candidate whose pth 0.2 pruning keeps at most this "
                         "share of the parameters (default: no bound)")
    ap.add_argument("--min-ap", type=float, default=None,
                    help="all, two or more --candidate: prefer a candidate whose trained AP is at least this "
                         "(default: no bound; without bounds the best trained AP carries on)")
    ap.add_argument("--pths", default=None,
                    help="all: the thresholds besides 0.2 that get a retrained model and a row of the map, e.g. 0.5 "
                         "(default 0.5,0.05); models: the thresholds to prune and retrain (default 0.05,0.2,0.5)")
    ap.add_argument("--budget", type=float, default=None,
                    help="seconds the phase may use (models: the next pth; deploy: the sweep is cut off)")
    args = ap.parse_args()
    loader_configs, loader_variants = parse_loader_configs(args.loader_configs), tuple(args.loader_variants.split(","))
    loader_runs(loader_configs, loader_variants)  # fails early on an unknown variant
    os.environ.setdefault("POSEKIT_CACHE", str(ROOT / ".cache"))
    candidates = [c.split() for c in args.candidate]
    # One candidate is simply part of the recipe; of several, the train phase picks one and the recipe grows then.
    recipe = recipe_for(args.preset, [*args.override, *(candidates[0] if len(candidates) == 1 else [])])
    import torch

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    deadline = None if args.budget is None else start + args.budget
    base = {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
            "gpus": torch.cuda.device_count(), "cpus": cpu_description()}
    phases = ["train", "retrain", "pth0.2", "map", "loader"] if args.phase == "all" else [args.phase]
    experiment = "gpu"
    extra_pths = tuple(float(p) for p in args.pths.split(",")) if args.pths else (0.5, 0.05)
    for name in phases:  # "all": one process for the whole run, each part's JSON written when it ends
        t0 = time.perf_counter()
        result, log = dict(base, phase=name, recipe=list(recipe)), []
        if deadline is not None and time.perf_counter() > deadline:
            print(f"phase {name}: skipped, the budget is spent", flush=True)
            continue
        if name == "train" and len(candidates) > 1:
            experiment, chosen = phase_candidates(recipe, result, candidates, log, deadline=deadline,
                                                  max_kept=args.max_kept, min_ap=args.min_ap)
            recipe = [*recipe, *chosen]
        elif name == "train":
            if args.phase == "all":  # the speed baselines are --phase train/loader's; "all" saves their minutes
                launch(recipe, "stage=pipeline", "pipeline.steps=[train]", "experiment.name=gpu", log=log,
                       deadline=deadline)
            else:
                phase_train(recipe, result, log)
        elif name == "retrain":
            phase_retrains(recipe, log, (0.2, *extra_pths), experiment, deadline=deadline)
        elif name == "pth0.2":
            deploy_pipeline(recipe, log, deadline=deadline, name=experiment)
            crowd_bench(recipe, log, deadline=deadline, name=experiment)
        elif name == "models":
            pths = extra_pths if args.phase == "all" or args.pths else PTHS
            phase_models(recipe, result, log, pths=pths, deadline=deadline, name=experiment)
        elif name == "deploy":
            deploy_pipeline(recipe, log, deadline=deadline)
            crowd_bench(recipe, log, deadline=deadline)
            accuracy_latency_map(recipe, result, log, out, deadline=deadline)
        elif name == "map":
            accuracy_latency_map(recipe, result, log, out, deadline=deadline,
                                 pths=tuple(sorted({0.2, *extra_pths})) if args.pths else None)
        elif name == "loader":
            if not torch.cuda.is_available():  # its baselines feed a GPU
                print("phase loader: skipped, no GPU", flush=True)
                continue
            if args.phase == "all" and deadline is not None and deadline - time.perf_counter() < 240:
                print("phase loader: skipped, less than 4 minutes of the budget left", flush=True)
                continue
            phase_loader(recipe, result, log, deadline=deadline, configs=loader_configs, seconds=args.loader_seconds,
                         variants=loader_variants)
        elif name == "crowd":
            launch(recipe, "stage=pipeline", "pipeline.steps=[train,eval]", f"experiment.name={experiment}", log=log,
                   deadline=deadline)
            crowd_bench(recipe, log, deadline=deadline, name=experiment)
        elif name == "compact":
            phase_compact(recipe, result, log, deadline=deadline)
            result["shipped"] = ship_models(out)
        else:
            ddp_scaling(recipe, log, seconds=args.ddp_seconds)
        finish(result, log, out, name, t0, experiment)
    print(f"total: {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()

"""Run a chain of stages so that each step runs once, even across concurrent jobs: fingerprints, records, locks.

A *step* is one stage call (train; prune at one pth; export of one model at one shape and precision; eval of one
artifact; ...) that writes into one experiment folder. Three files make it idempotent and race-free::

    <folder>/pipeline/steps/<step id>.json    the record: status running|ok|failed, fingerprint, result, artifacts
    <folder>/pipeline/locks/<step id>.lock    held (flock) while the step runs
    <folder>/pipeline/locks/<step id>.owner   who holds it (host, pid, SLURM job), for the "waiting for" message

* **Fingerprint**: a hash of the config sections the step's output depends on plus its input's fingerprint. A change
  upstream re-runs everything below it; a change of ``bench.iters`` re-runs only bench.
* **Record**: written atomically when the step starts (``running``) and again when it ends (``ok``/``failed``). A
  step is *done* when its record says ``ok`` with the same fingerprint and every artifact it lists still exists;
  a done step is skipped, so re-launching a crashed or preempted pipeline or sweep redoes only unfinished work.
  A step whose outputs belong to another fingerprint never resumes from them (``train.resume`` is turned off).
* **Lock**: ``filelock.FileLock`` (``flock``; the kernel releases it when the holder dies, so a killed SLURM job
  never leaves a stale lock). Two sweep jobs that need the same trained model: the first trains, the second waits
  on the lock, then reads the record and skips.

``ChainLayout`` says where steps write: in a sweep the model steps (train, prune, retrain) go to a folder shared by
every point with the same upstream config (``<sweep>/shared/<key>/``), the rest to the point's own folder.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as _dt
import hashlib
import json
import logging
import os
import re
import socket
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout
from omegaconf import DictConfig, OmegaConf

from posekit import io
from posekit.experiment import Experiment

log = logging.getLogger("posekit.chain")

# Config sections each kind of step depends on. Paths of the step's input (prune.model, export.model...) are not
# part of a fingerprint: the input enters through its own fingerprint (``upstream``).
TRAIN_SECTIONS = ("seed", "keypoints", "model", "data", "codec", "trainer", "optim", "train", "debug")
PRUNE_SECTIONS = ("prune",)
RETRAIN_SECTIONS = ("retrain", "trainer", "optim", "data", "train", "codec", "debug")
EXPORT_SECTIONS = ("export", "precision", "model.input_shape", "data", "keypoints")
CALIBRATE_SECTIONS = ("precision.calibration", "model.input_shape", "data", "keypoints")
EVAL_SECTIONS = ("eval", "codec", "runtime", "data", "keypoints", "model.input_shape")
BENCH_SECTIONS = ("bench", "runtime", "model.input_shape")
INFER_SECTIONS = ("infer", "codec", "runtime", "keypoints", "model.input_shape")

# Keys that change how a run looks, not what it produces.
COSMETIC_KEYS = (
    "trainer.enable_progress_bar",
    "trainer.log_every_n_steps",
    "debug.profiler",
    "data.num_workers",
    # where the training augmentation runs (the workers or the device), not what it computes (docs/data.md)
    "data.augment_on_device",
    "data.decode_on_device",
    "data.synthetic.cache_dir",
    "train.resume",
)
INPUT_KEYS = ("prune.model", "retrain.model", "export.model", "eval.artifact", "eval.tag", "bench.artifacts",
              "infer.artifact")


# --------------------------------------------------------------------------------------------- fingerprints
def _plain(node: Any) -> Any:
    if OmegaConf.is_config(node):
        return OmegaConf.to_container(node, resolve=True, enum_to_str=True)
    return getattr(node, "value", node)  # enums -> their value


def _drop(tree: dict, dotted: str) -> None:
    *parents, leaf = dotted.split(".")
    for p in parents:
        tree = tree.get(p) if isinstance(tree, dict) else None
        if tree is None:
            return
    if isinstance(tree, dict):
        tree.pop(leaf, None)


def config_subset(cfg: DictConfig, sections: Iterable[str], exclude: Iterable[str] = ()) -> dict[str, Any]:
    """``{section: plain value}`` for dotted ``sections`` of ``cfg``, with dotted ``exclude`` keys removed."""
    tree: dict[str, Any] = {}
    for key in sections:
        tree[key] = _plain(OmegaConf.select(cfg, key, throw_on_missing=False))
    for dotted in (*COSMETIC_KEYS, *INPUT_KEYS, *exclude):
        for key in tree:
            if dotted == key:
                tree[key] = None
            elif dotted.startswith(key + ".") and isinstance(tree[key], dict):
                _drop(tree[key], dotted[len(key) + 1 :])
    return tree


def digest(obj: Any, n: int = 16) -> str:
    """A short stable hash of a JSON-able object."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:n]


def fingerprint(
    cfg: DictConfig, sections: Iterable[str], *, upstream: Iterable[str] = (), exclude: Iterable[str] = ()
) -> str:
    """Hash of the ``sections`` of ``cfg`` a step depends on plus the fingerprints of its inputs."""
    return digest({"config": config_subset(cfg, sections, exclude), "upstream": list(upstream)})


def file_fingerprint(path: str | os.PathLike) -> str:
    """For an input the chain did not produce (a user's model file): its path, size and modification time."""
    p = Path(path)
    st = p.stat() if p.exists() else None
    return digest({"path": str(p.resolve()), "size": st and st.st_size, "mtime": st and st.st_mtime_ns})


def artifact_fingerprint(path: str | os.PathLike, folder: str | os.PathLike) -> str:
    """The fingerprint of the recorded step in ``folder`` that wrote ``path`` (so a chain that starts from an
    existing model still skips what was done from it), else :func:`file_fingerprint`."""
    target = str(Path(path).resolve())
    for rec_path in sorted((Path(folder) / "pipeline" / "steps").glob("*.json")):
        rec = read_record(rec_path) or {}
        if rec.get("status") == "ok" and target in (str(Path(a).resolve()) for a in rec.get("artifacts", [])):
            return rec["fingerprint"]
    return file_fingerprint(path)


# --------------------------------------------------------------------------------------------- derived configs
def derive(cfg: DictConfig, updates: Mapping[str, Any]) -> DictConfig:
    """A deep copy of ``cfg`` with dotted ``updates`` applied. Struct mode and the schema's types are kept, so a
    misspelled key or a wrong type fails here rather than deep inside a stage."""
    out = copy.deepcopy(cfg)
    for key, value in updates.items():
        OmegaConf.update(out, key, value, merge=False)
    return out


def model_config(cfg: DictConfig) -> DictConfig:
    """The config the model steps (train, prune, retrain) run with: ``model.input_shape = sweep.train_shape``
    when set, so one trained model serves every export shape (the network is fully convolutional)."""
    shape = cfg.sweep.train_shape
    return derive(cfg, {"model.input_shape": list(shape)}) if shape is not None else cfg


def model_key(cfg: DictConfig) -> str:
    """Readable name of the shared model folder: what a point's train/prune/retrain depend on, except the pth
    (which has its own file names inside the folder), e.g. ``s3-w1-288x384-1f0c2d9ab4e3``."""
    mcfg = model_config(cfg)
    h = fingerprint(mcfg, TRAIN_SECTIONS + PRUNE_SECTIONS + RETRAIN_SECTIONS, exclude=("prune.pth",))[:12]
    hh, ww = (int(v) for v in mcfg.model.input_shape)
    return f"s{int(mcfg.model.stages)}-w{float(mcfg.model.width):g}-{hh}x{ww}-{h}"


# --------------------------------------------------------------------------------------------- layout
@dataclass(frozen=True)
class ChainLayout:
    """Where a chain writes. ``models``: experiment folder of train/prune/retrain; ``outputs``: experiment folder of
    export/calibrate/eval/bench/infer and of the pipeline's own summary. Both are the experiment folder for a
    single pipeline; in a sweep ``models`` is shared by all points with the same upstream config."""

    models: Path
    outputs: Path
    sweep_dir: Path | None = None

    @property
    def shared(self) -> bool:
        return self.models != self.outputs

    @classmethod
    def for_config(cls, cfg: DictConfig) -> ChainLayout:
        hc = hydra_runtime()
        explicit = Path(os.path.expanduser(cfg.sweep.shared_dir)).resolve() if cfg.sweep.shared_dir else None
        if hc is not None and hc["multirun"]:
            sweep_dir = Path(hc["sweep_dir"]).resolve()
            shared = explicit or sweep_dir / "shared"
            return cls(models=shared / model_key(cfg), outputs=Path(hc["output_dir"]).resolve(), sweep_dir=sweep_dir)
        outputs = Experiment(cfg).root
        if explicit:  # a single run can reuse (and feed) a sweep's shared models
            return cls(models=explicit / model_key(cfg), outputs=outputs)
        return cls(models=outputs, outputs=outputs)


def hydra_runtime() -> dict[str, Any] | None:
    """The parts of Hydra's runtime config the chain needs, or None outside a Hydra job (tests, notebooks)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None
    hc = HydraConfig.get()
    return {
        "multirun": hc.mode == RunMode.MULTIRUN,
        "sweep_dir": str(hc.sweep.dir),
        "output_dir": str(hc.runtime.output_dir),
        "job_num": hc.job.get("num"),
        "overrides": list(hc.overrides.task),
    }


# --------------------------------------------------------------------------------------------- steps
@dataclass
class Step:
    """One stage call. ``outputs(result)`` names the files the step produced (from what the stage returned): a
    recorded step whose files are gone is not done."""

    id: str
    stage: str
    cfg: DictConfig
    folder: Path
    fingerprint: str
    outputs: Callable[[dict], Iterable[str | os.PathLike]] = lambda result: ()
    title: str = ""

    def __post_init__(self) -> None:
        self.id = re.sub(r"[^A-Za-z0-9._-]+", "_", self.id)
        self.folder = Path(self.folder)

    @property
    def record_path(self) -> Path:
        return self.folder / "pipeline" / "steps" / f"{self.id}.json"

    @property
    def lock_path(self) -> Path:
        return self.folder / "pipeline" / "locks" / f"{self.id}.lock"


@dataclass
class Outcome:
    """What happened to a step. ``status``: ``ran`` (now, successfully), ``cached`` (done earlier: skipped),
    ``skipped`` (not needed: ``prune.pth=0`` has nothing to prune or retrain), ``failed``, or ``blocked`` (not run:
    an input it needs failed)."""

    step_id: str
    stage: str
    status: str
    result: dict = field(default_factory=dict)
    artifacts: list[str] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0
    folder: str = ""
    title: str = ""

    @property
    def ok(self) -> bool:
        return self.status in ("ran", "cached", "skipped")

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.step_id,
            "stage": self.stage,
            "title": self.title,
            "status": self.status,
            "seconds": round(self.seconds, 2),
            "folder": self.folder,
            "artifacts": self.artifacts,
            "error": self.error,
        }


def read_record(path: Path) -> dict | None:
    try:
        return io.read_json(path)
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def rebuilt_sidecar(path: str | os.PathLike) -> Path:
    """``<file>.rebuilt.json``: present when the file at ``path`` is a stand-in with random weights, which
    ``--bench --rebuild`` writes where a file is not on the machine (posekit/sweep/rebuild.py)."""
    path = Path(path)
    return path.with_name(path.name + ".rebuilt.json")


def is_done(record: dict | None, fp: str) -> bool:
    """The record says ``ok`` with this fingerprint and its artifacts exist, none of them a rebuild with random
    weights (:func:`rebuilt_sidecar`), which a relaunch must replace rather than evaluate."""
    return bool(
        record
        and record.get("status") == "ok"
        and record.get("fingerprint") == fp
        and all(Path(p).exists() and not rebuilt_sidecar(p).exists() for p in record.get("artifacts", []))
    )


def _whoami() -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(), "slurm_job_id": os.environ.get("SLURM_JOB_ID")}


def _now() -> str:
    return _dt.datetime.now().isoformat(timespec="seconds")


def _jsonable(obj: Any) -> Any:
    """Round-trip through JSON so a stage's result (numpy scalars, Paths, odd objects) can be recorded."""

    def default(o: Any) -> Any:
        try:
            return io._json_default(o)
        except TypeError:
            return repr(o)

    return json.loads(json.dumps(obj, default=default))


def one_line(message: str) -> str:
    """A message for a table cell: its first line, plus its last when they differ (a DataLoader worker's error
    reads "Caught UserError in DataLoader worker process 0." ... "posekit.errors.UserError: <what happened>")."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    if len(lines) <= 1:
        return lines[0] if lines else message
    return f"{lines[0]} ... {lines[-1]}"


def _is_job_control(e: BaseException) -> bool:
    """Exceptions that end the job rather than the step: submitit raises them from its signal handler (pre-emption,
    time-out) wherever the job happens to be. SystemExit and KeyboardInterrupt are not caught at all."""
    return type(e).__module__.split(".")[0] == "submitit"


@contextlib.contextmanager
def step_lock(path: Path, what: str) -> Iterator[None]:
    """Hold ``path`` (an flock) for the duration; says who holds it when we have to wait."""
    path.parent.mkdir(parents=True, exist_ok=True)
    owner = path.with_suffix(".owner")
    lock = FileLock(str(path))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        held_by = read_record(owner) or {}
        holder = ", ".join(f"{k}={v}" for k, v in held_by.items())
        log.info("%s: waiting for the job that is running it (%s)", what, holder)
        lock.acquire()
    try:
        io.write_json(owner, {**_whoami(), "since": _now()})
        yield
    finally:
        owner.unlink(missing_ok=True)
        lock.release()


class StepRunner:
    """Runs steps with records and locks. ``stage_runner(stage, cfg) -> dict`` runs one stage: the pipeline stage
    passes its own (this module sits below the stages and imports none of them), tests pass fakes."""

    def __init__(self, stage_runner: Callable[[str, DictConfig], dict], force: bool = False):
        self.stage_runner = stage_runner
        self.force = force

    def run(self, step: Step) -> Outcome:
        what = f"{step.title or step.id}"
        record = read_record(step.record_path)
        if not self.force and is_done(record, step.fingerprint):  # fast path: no lock for finished steps
            return self._cached(step, record)
        with step_lock(step.lock_path, what):
            record = read_record(step.record_path)  # another job may have finished it while we waited
            if not self.force and is_done(record, step.fingerprint):
                return self._cached(step, record)
            return self._execute(step, record)

    def _cached(self, step: Step, record: dict) -> Outcome:
        log.info("%s: done earlier (%s), skipped", step.title or step.id, record.get("finished"))
        return Outcome(
            step.id, step.stage, "cached", record.get("result", {}), record.get("artifacts", []),
            folder=str(step.folder), title=step.title,
        )

    def _execute(self, step: Step, previous: dict | None) -> Outcome:
        cfg = step.cfg
        stale = previous is not None and previous.get("fingerprint") != step.fingerprint
        if stale and step.stage in ("train", "retrain"):
            # the checkpoints in this folder belong to another config: start over instead of resuming from them
            log.info("%s: config changed since the last run, not resuming its checkpoints", step.title or step.id)
            cfg = derive(cfg, {"train.resume": False})
        base = {"id": step.id, "stage": step.stage, "fingerprint": step.fingerprint, "started": _now(), **_whoami()}
        io.write_json(step.record_path, {**base, "status": "running"})
        log.info("%s: running", step.title or step.id)
        t0 = time.perf_counter()
        try:
            result = self.stage_runner(step.stage, cfg) or {}
            artifacts = [str(Path(p)) for p in step.outputs(result)]
            missing = [p for p in artifacts if not Path(p).exists()]
            if missing:
                raise RuntimeError(f"stage {step.stage} returned without writing {missing}")
        except Exception as e:
            if _is_job_control(e):
                raise  # submitit's pre-emption/time-out handler ends the job through here: let it
            seconds = time.perf_counter() - t0
            error = f"{type(e).__name__}: {e}"
            log.error("%s: failed after %.1fs: %s", step.title or step.id, seconds, error, exc_info=True)
            io.write_json(step.record_path, {**base, "status": "failed", "error": error, "finished": _now(),
                                             "seconds": seconds, "traceback": traceback.format_exc()})
            return Outcome(step.id, step.stage, "failed", error=one_line(error), seconds=seconds,
                           folder=str(step.folder), title=step.title)
        seconds = time.perf_counter() - t0
        result = _jsonable(result)
        for p in artifacts:  # the stage wrote the real file over a rebuild: it no longer stands in for it
            rebuilt_sidecar(p).unlink(missing_ok=True)
        io.write_json(step.record_path, {**base, "status": "ok", "finished": _now(), "seconds": seconds,
                                         "artifacts": artifacts, "result": result})
        log.info("%s: done in %.1fs", step.title or step.id, seconds)
        return Outcome(step.id, step.stage, "ran", result, artifacts, seconds=seconds, folder=str(step.folder),
                       title=step.title)


__all__ = [
    "ChainLayout",
    "Outcome",
    "Step",
    "StepRunner",
    "artifact_fingerprint",
    "config_subset",
    "derive",
    "digest",
    "file_fingerprint",
    "fingerprint",
    "rebuilt_sidecar",
    "hydra_runtime",
    "is_done",
    "model_config",
    "model_key",
    "one_line",
    "read_record",
    "step_lock",
]

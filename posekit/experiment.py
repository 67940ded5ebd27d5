"""The experiment folder: one per experiment (like TAO's ``$USER_EXPERIMENT_DIR``).

Each stage reads the previous stage's artifact from a predictable place under it (overridable by an explicit
path) and writes its own output plus a ``summary.json``::

    <experiment.dir>/
      train/        checkpoints/{last,best}.ckpt  model.pt  summary.json  csv/ tensorboard/
      prune/        model.pruned-<pth>.pt  summary.json (+ summary-<pth>.json)
      retrain/pth-<pth>/   checkpoints/  model.pt  summary.json
      export/<source>/     model.<H>.<W>.<precision>[.<variant>].onnx  *.engine  cal.<H>.<W>.bin  summary.json
      eval/<artifact>/     metrics.json  detections.json  summary.json
      infer/<input>/       overlays, detections.json, summary.json
      bench/               bench.json  bench.md  summary.json
      logs/<stage>/<time>/ Hydra's own record of the composed config

``<source>`` names what was exported: ``trained``, ``pruned-<pth>`` or ``retrained-<pth>``.
"""

from __future__ import annotations

import datetime as _dt
import os
import socket
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from posekit import io
from posekit.errors import MissingArtifactError


def pth_tag(pth: float) -> str:
    """``0.2 -> '0.2'``, ``0.05 -> '0.05'``, ``1.0 -> '1.0'`` (TAO's ``model.pruned-0.2``)."""
    return repr(float(pth))


class Experiment:
    def __init__(self, cfg: DictConfig):
        self.cfg = cfg
        self.root = Path(os.path.expanduser(str(cfg.experiment.dir))).resolve()

    # ------------------------------------------------------------------ stage folders
    def dir(self, *parts: str) -> Path:
        p = self.root.joinpath(*parts)
        p.mkdir(parents=True, exist_ok=True)
        return p

    @property
    def pth(self) -> str:
        return pth_tag(self.cfg.prune.pth)

    @property
    def train_dir(self) -> Path:
        return self.root / "train"

    @property
    def trained_model(self) -> Path:
        return self.train_dir / "model.pt"

    def pruned_model(self, pth: float | None = None) -> Path:
        tag = self.pth if pth is None else pth_tag(pth)
        return self.root / "prune" / f"model.pruned-{tag}.pt"

    def retrain_dir(self, pth: float | None = None) -> Path:
        tag = self.pth if pth is None else pth_tag(pth)
        return self.root / "retrain" / f"pth-{tag}"

    def retrained_model(self, pth: float | None = None) -> Path:
        return self.retrain_dir(pth) / "model.pt"

    # ------------------------------------------------------------------ resolution of inputs
    def latest_model(self) -> tuple[Path, str]:
        """The newest model of the chain for the configured pth: retrained > pruned > trained.

        Returns ``(path, source tag)`` with tag ``retrained-<pth>``, ``pruned-<pth>`` or ``trained``.
        """
        for path, tag in (
            (self.retrained_model(), f"retrained-{self.pth}"),
            (self.pruned_model(), f"pruned-{self.pth}"),
            (self.trained_model, "trained"),
        ):
            if path.is_file():
                return path, tag
        raise MissingArtifactError(
            f"no model in experiment {self.root} (looked for {self.retrained_model()}, {self.pruned_model()}, "
            f"{self.trained_model}). Run `python launch.py stage=train experiment.name={self.cfg.experiment.name}` "
            "first, or pass an explicit path (e.g. export.model=PATH / eval.artifact=PATH)."
        )

    def default_model(self, stage: str) -> tuple[Path, str]:
        """The one rule for the model a stage reads when none is given: prune reads the trained model, retrain the
        pruned one, every other stage the latest (:meth:`latest_model`). Returns ``(path, model name)``; the
        trained and pruned paths are returned whether or not they exist yet."""
        if stage == "prune":
            return self.trained_model, "trained"
        if stage == "retrain":
            return self.pruned_model(), f"pruned-{self.pth}"
        return self.latest_model()

    def model_name(self, path: Path) -> str:
        """The short name of a PyTorch model file (:attr:`posekit.export.artifacts.Artifact.model`): ``trained``,
        ``pruned-<pth>`` or ``retrained-<pth>`` for this experiment's own, else the file's stem without ``model.``
        (its folder's name for a ``model.pt``)."""
        path = Path(path).resolve()
        known = {self.trained_model.resolve(): "trained", self.pruned_model().resolve(): f"pruned-{self.pth}",
                 self.retrained_model().resolve(): f"retrained-{self.pth}"}
        if path in known:
            return known[path]
        stem = path.stem.removeprefix("model.")
        return path.parent.name if stem == "model" else stem

    def artifact_and_tag(self, explicit: str | None) -> tuple[Path, str]:
        """The artifact the eval and infer stages run (``explicit`` if given, else :meth:`latest_model`) and a
        folder-safe tag for their output: the model name, else the path inside the experiment with ``/`` -> ``-``
        (``export-trained-model.288.384.int8``), else the file's stem."""
        if not explicit:
            return self.latest_model()
        path = Path(os.path.expanduser(explicit)).resolve()
        if not path.exists():
            raise MissingArtifactError(f"artifact not found: {path}. Check the path given on the command line.")
        from posekit.export.artifacts import check_complete_export

        check_complete_export(path, self.root / "export")  # never a killed export's leftover
        try:
            rel = path.relative_to(self.root)
            tag = "-".join((*rel.parent.parts, rel.stem))
        except ValueError:
            tag = path.stem
        return path, tag

    def resolve(self, explicit: str | None, default: Path, what: str, hint: str) -> Path:
        """An explicit path if given (must exist), else ``default`` (must exist); errors say what to run."""
        if explicit:
            p = Path(os.path.expanduser(explicit)).resolve()
            if not p.exists():
                raise MissingArtifactError(f"{what} not found: {p}. Check the path given on the command line.")
            return p
        if not default.exists():
            raise MissingArtifactError(f"{what} not found at {default}. {hint}")
        return default

    # ------------------------------------------------------------------ results of one setting
    def result_folder(self, stage: str, tag: str, sections: tuple[str, ...], exclude: tuple[str, ...] = ()
                      ) -> tuple[Path, str]:
        """``(<experiment>/<stage>/<tag>, tag)``, unless that folder holds a result of another setting (its
        ``summary.json`` config differs in ``sections``): then ``<tag>-<setting hash>``, so an earlier result is
        never overwritten by one of another input shape, dataset or runtime. Says so when it moves."""
        import logging

        from posekit.chain import config_subset, digest, fingerprint

        folder = self.root / stage / tag
        try:
            previous = io.read_json(folder / "summary.json").get("config")
        except (OSError, ValueError, AttributeError):
            previous = None
        if not isinstance(previous, dict):
            return folder, tag
        mine = config_subset(self.cfg, sections, exclude)
        theirs = config_subset(OmegaConf.create(previous), sections, exclude)
        if digest(mine) == digest(theirs):
            return folder, tag
        from posekit.inherit import flatten

        a, b = flatten(mine), flatten(theirs)
        differ = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
        new_tag = f"{tag}-{fingerprint(self.cfg, sections, exclude=exclude)[:8]}"
        logging.getLogger("posekit").warning(
            "%s/%s holds a result of another setting (%s differ%s); this one goes to %s/%s", stage, tag,
            ", ".join(differ[:4]), " ..." if len(differ) > 4 else "", stage, new_tag)
        return self.root / stage / new_tag, new_tag

    # ------------------------------------------------------------------ summaries
    def write_summary(
        self,
        folder: Path,
        stage: str,
        artifacts: dict[str, Any] | None = None,
        metrics: dict[str, Any] | None = None,
        name: str = "summary.json",
        **extra: Any,
    ) -> Path:
        """Atomically write ``folder/<name>`` (``summary.json``): stage, resolved config, artifact paths, main
        figures. Stages write it last: its presence says the stage finished."""
        summary = {
            "stage": stage,
            "time": _dt.datetime.now().isoformat(timespec="seconds"),
            "host": socket.gethostname(),
            "experiment": str(self.root),
            "artifacts": {k: str(v) if isinstance(v, Path) else v for k, v in (artifacts or {}).items()},
            "metrics": metrics or {},
            **extra,
            "config": OmegaConf.to_container(self.cfg, resolve=True, throw_on_missing=False),
        }
        return io.write_json(Path(folder) / name, summary)

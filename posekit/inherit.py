"""The experiment remembers its config: a later stage uses the settings the model was trained with.

``python launch.py preset=cpu_demo stage=pipeline`` and then a plain ``python launch.py stage=eval`` used to run
eval at the default 288x384 on a newly generated default dataset, and overwrite the pipeline's eval files. Now
every stage after training (:data:`STAGES`) takes :data:`INHERITED` (the model's input shape, keypoints and data
settings) from ``<experiment>/train/summary.json``, which records the config the model was trained with, except
the keys the command line sets (directly, or through a config group such as ``resolution=`` or ``preset=``).
It prints what it took, records the source in ``experiment.inherited_from``, and ``experiment.inherit=false``
turns it off. Results of another setting are never overwritten: see :meth:`Experiment.result_folder`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from posekit.schema import config_groups

log = logging.getLogger("posekit")

INHERITED = ("model.input_shape", "keypoints", "data")
STAGES = ("prune", "retrain", "export", "eval", "infer", "bench", "calibrate")
# the inputs a stage may be pointed at; one outside the experiment folder was not trained with its record
LOADER_KNOBS = ("batch_size", "num_workers", "targets_on_device", "augment_on_device", "decode_on_device")
INPUT_KEYS = ("prune.model", "retrain.model", "export.model", "eval.artifact", "infer.artifact")


def training_record(root: Path) -> tuple[Path, dict] | None:
    """``(path, config)`` of the experiment's ``train/summary.json``, or None if there is none (or it is bad)."""
    path = Path(root) / "train" / "summary.json"
    try:
        config = json.loads(path.read_text()).get("config")
    except FileNotFoundError:
        return None
    except (OSError, ValueError, AttributeError) as e:
        log.warning("ignoring %s (%s): settings are not taken from it", path, e)
        return None
    return (path, config) if isinstance(config, dict) else None


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a.b": leaf}`` of nested dicts (lists are leaves)."""
    if not isinstance(tree, dict):
        return {prefix.rstrip("."): tree}
    out: dict[str, Any] = {}
    for k, v in tree.items():
        out.update(flatten(v, f"{prefix}{k}."))
    return out


def _sections(tree: dict) -> dict[str, Any]:
    out = {}
    for key in INHERITED:
        node: Any = tree
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is not None:
            out.update(flatten(node, key + ".") if isinstance(node, dict) else {key: node})
    return out


# --------------------------------------------------------------------------------------------- what the user set
def _group_file(group: str, option: str) -> Path | None:
    from posekit.schema import CONFIG_DIRS

    for base in CONFIG_DIRS:
        path = base / group / f"{option}.yaml"
        if path.is_file():
            return path
    return None


def group_keys(group: str, option: str, _seen: frozenset = frozenset()) -> set[str]:
    """The dotted config keys that choosing ``option`` of config group ``group`` sets (its defaults included)."""
    path = _group_file(group, option)
    if path is None or (group, option) in _seen:
        return set()
    seen = _seen | {(group, option)}
    text = path.read_text()
    node = OmegaConf.to_container(OmegaConf.load(path)) or {}
    keys: set[str] = set()
    for entry in node.pop("defaults", []) if isinstance(node, dict) else []:
        if isinstance(entry, dict):
            for k, v in entry.items():
                sub = k.replace("override", "").strip().lstrip("/")
                keys |= group_keys(sub, str(v), seen)
        elif isinstance(entry, str) and entry != "_self_":
            keys |= group_keys(group, entry, seen)  # a sibling file of the same group (sweeps' common)
    prefix = "" if "@package _global_" in text else group.replace("/", ".") + "."
    keys |= {f"{prefix}{k}" for k in flatten(node)} if isinstance(node, dict) else set()
    return keys


def command_line_keys(overrides: Iterable[str]) -> set[str]:
    """Every dotted key the Hydra ``overrides`` set, config groups expanded to the keys their files set."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except Exception:
        return set()
    groups = config_groups()
    keys: set[str] = set()
    for o in parsed:
        key = o.key_or_group
        if key in groups and "." not in key:
            value = o.value()
            options = [str(v) for v in o.sweep_string_iterator()] if o.is_sweep_override() else [str(value)]
            for option in options:
                keys |= group_keys(key, option)
        else:
            keys.add(key)
    return keys


def _covered(key: str, set_keys: set[str]) -> bool:
    return any(key == s or key.startswith(s + ".") or s.startswith(key + ".") for s in set_keys)


def hydra_overrides() -> list[str] | None:
    """The command line's overrides of this Hydra job, or None outside Hydra (nothing can be told apart)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    return list(HydraConfig.get().overrides.task)


def _outside(cfg: DictConfig, root: Path) -> str | None:
    for key in INPUT_KEYS:
        value = OmegaConf.select(cfg, key, default=None)
        if value and not Path(str(value)).expanduser().resolve().is_relative_to(root):
            return f"{key}={value}"
    for value in OmegaConf.select(cfg, "bench.artifacts", default=None) or []:
        if not Path(str(value)).expanduser().resolve().is_relative_to(root):
            return f"bench.artifacts[{value}]"
    return None


def _show(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


# --------------------------------------------------------------------------------------------- the step
def inherit(cfg: DictConfig, stage: str, root: Path, overrides: list[str] | None) -> DictConfig:
    """``cfg`` with :data:`INHERITED` keys taken from the experiment's training record where the command line
    (``overrides``) does not set them. Prints what it took; returns ``cfg`` itself when there is nothing to do."""
    if stage not in STAGES or overrides is None or not bool(cfg.experiment.get("inherit", True)):
        return cfg
    record = training_record(root)
    if record is None:
        return cfg
    path, recorded_cfg = record
    outside = _outside(cfg, root)
    if outside:
        log.info("%s: %s is outside experiment %s: its training record (%s) is not used", stage, outside, root, path)
        return cfg
    recorded = _sections(recorded_cfg)
    current = _sections(OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False, enum_to_str=True))
    set_keys = command_line_keys(overrides)
    taken: dict[str, Any] = {}
    for key, value in recorded.items():
        if key not in current or current[key] == value or value == "???":
            continue
        if _covered(key, set_keys):
            log.warning("%s: %s=%s from the command line; the model was trained with %s", stage, key,
                        _show(current[key]), _show(value))
            continue
        taken[key] = value
    from posekit.chain import derive

    out = derive(cfg, {**taken, "experiment.inherited_from": str(path)})
    if taken:
        # what tells the setting apart first; the loader's knobs last
        order = sorted(taken, key=lambda k: (k.split(".")[-1] in LOADER_KNOBS, k != "model.input_shape"))
        shown = ", ".join(f"{k}={_show(taken[k])}" for k in order[:6])
        more = f" and {len(taken) - 6} more" if len(taken) > 6 else ""
        print(f"{stage}: using the settings the model was trained with ({path}): {shown}{more}. Set them on the "
              "command line to use others (or experiment.inherit=false).", flush=True)
    else:
        log.info("%s: input shape, keypoints and data as the model was trained (%s)", stage, path)
    return out

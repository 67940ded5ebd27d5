"""One writer per experiment stage.

Two runs of the same stage on the same experiment folder would resume from each other's live checkpoint and
overwrite each other's ``last.ckpt``, ``model.pt`` and ``summary.json``. ``stage_lock`` holds
``<experiment>/locks/<stage>.lock`` (``filelock``: an ``flock``, which the kernel releases when its holder dies,
so the lock of a killed run is free at once) while the stage runs, next to ``<stage>.owner.json`` (PID, host,
start time, command) for the message a second run gets. An owner record found on a free lock was left by a run
that died holding it: the new run says so and takes the lock over.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

from filelock import FileLock, Timeout

from posekit import io
from posekit.errors import UserError

log = logging.getLogger("posekit")

LOCK_DIR = "locks"


class StageBusy(UserError):
    """Another process is running this stage on this experiment."""


def _owner(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _describe(owner: dict) -> str:
    if not owner:
        return "another process (it has not recorded itself yet)"
    return f"PID {owner.get('pid')} on host {owner.get('host')}, started {owner.get('started')}"


def is_primary_process() -> bool:
    """False in the extra processes of a multi-process (DDP) job: rank 0 holds the lock and writes."""
    return all(int(os.environ.get(k, "0") or 0) == 0 for k in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"))


@contextlib.contextmanager
def stage_lock(root: str | os.PathLike, name: str, wait: bool = False) -> Iterator[Path]:
    """Hold the experiment's lock for stage ``name`` (e.g. ``train``, ``retrain-pth-0.2``).

    ``wait=False`` (a command a user started): raise :class:`StageBusy` naming the holder at once.
    ``wait=True`` (a pipeline step): wait for the holder to finish.
    """
    folder = Path(root) / LOCK_DIR
    folder.mkdir(parents=True, exist_ok=True)
    path, owner_path = folder / f"{name}.lock", folder / f"{name}.owner.json"
    lock = FileLock(str(path))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        holder = _describe(_owner(owner_path))
        if not wait:
            raise StageBusy(
                f"stage {name} is already running on experiment {root}: held by {holder}. Wait for it to finish "
                f"(or stop it), or run this one under another experiment.name."
            ) from None
        log.info("stage %s on %s: waiting for %s", name, root, holder)
        lock.acquire()
    try:
        left = _owner(owner_path)
        if left:
            log.warning("stage %s on %s: taking over the lock left by %s, which ended without releasing it "
                        "(killed?)", name, root, _describe(left))
        io.write_json(owner_path, {
            "pid": os.getpid(), "host": socket.gethostname(),
            "started": _dt.datetime.now().isoformat(timespec="seconds"),
            "stage": name, "command": " ".join(sys.argv),
        })
        yield path
    finally:
        with contextlib.suppress(OSError):
            owner_path.unlink()
        lock.release()

"""Atomic artifact writing: every file posekit produces is written to a temporary name in the same folder and
renamed into place, so a killed run never leaves a half-written checkpoint, ONNX model, engine or JSON.

A killed run does leave its temporary file (a hidden ``.<name>.tmp-<pid>-<host id>-<random><suffix>``, possibly
full-size); the name says which process wrote it, so :func:`remove_stale_temp` (run by every stage on its
experiment folder) deletes those whose writer is gone and never one that a running process is still writing.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is fsynced and renamed onto ``path``.

    Use for writers that want a file name (``torch.onnx.export``, ``onnx.save``, ``cv2.imwrite``...). The
    temporary name keeps the suffix so suffix-sniffing writers behave.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.tmp-{os.getpid()}-{HOST_ID}-", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        # mkstemp creates 0600 files; give the artifact the permissions a plain open() would (umask).
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


log = logging.getLogger(__name__)

HOST_ID = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]  # which machine wrote a temporary file
_TEMP = r"\..*\.tmp-(\d+)-([0-9a-f]{8})-[^/]*"  # atomic_path's temporary names
_LEGACY_TEMP = r"\..*\.[A-Za-z0-9_]{8}\.tmp(\.[^.]+)?"  # names of posekit versions before the pid
FOREIGN_AGE_S = 24 * 3600  # a temporary file of another machine (shared disk) is stale after a day untouched


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def stale_temp_files(root: str | os.PathLike) -> list[Path]:
    """Temporary files under ``root`` left by killed writers: this machine's whose process is gone, another
    machine's (or an older posekit's) untouched for :data:`FOREIGN_AGE_S`."""
    stale = []
    now = time.time()
    for folder, _, files in os.walk(root):
        for name in files:
            if not name.startswith("."):
                continue
            m = re.fullmatch(_TEMP, name)
            if m is None and not re.fullmatch(_LEGACY_TEMP, name):
                continue
            path = Path(folder) / name
            if m is not None and m.group(2) == HOST_ID:
                if not _alive(int(m.group(1))):
                    stale.append(path)
                continue
            with contextlib.suppress(OSError):
                if now - path.stat().st_mtime > FOREIGN_AGE_S:
                    stale.append(path)
    return stale


def remove_stale_temp(root: str | os.PathLike) -> list[Path]:
    """Delete :func:`stale_temp_files` under ``root`` (a killed run's hidden, maybe full-size leftovers)."""
    removed = []
    for path in stale_temp_files(root):
        with contextlib.suppress(FileNotFoundError):
            size = path.stat().st_size
            path.unlink()
            removed.append(path)
            log.info("removed %s (%.1f MB), left by a killed run", path, size / 1e6)
    return removed


def ensure_writable(folder: str | os.PathLike, what: str = "the output folder") -> Path:
    """Create ``folder`` if needed and prove it takes a file, before any work is done whose result would be lost.

    Raises :class:`~posekit.errors.UserError` naming the folder and the fix (read-only, full or forbidden)."""
    from posekit.errors import UserError, write_failure

    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".posekit-write-test.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        why = write_failure(e) or e.strerror or str(e)
        raise UserError(
            f"{what} {folder} is not writable ({why}); nothing was run. Set experiment.root=PATH (or the stage's "
            "output path) to a writable folder, or fix its permissions."
        ) from e
    return folder


def writable_or_temp(path: str) -> str:
    """``path`` if it can be created (its nearest existing folder takes writes), else a folder under the system's
    temporary directory. Hydra's log folder (``hydra.run.dir``) goes through it, so a read-only experiment folder
    reaches posekit's own check (one line, exit 2) instead of failing inside Hydra's start-up."""
    p = Path(path).expanduser().absolute()
    existing = next((a for a in (p, *p.parents) if a.exists()), Path("/"))
    if os.access(existing, os.W_OK | os.X_OK):
        return str(p)
    return str(Path(tempfile.gettempdir()) / "posekit-logs" / str(p).strip("/").replace("/", "_"))


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    return write_bytes(path, text.encode())


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text())


def torch_save(obj: Any, path: str | os.PathLike) -> Path:
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)


def sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")

"""Errors a user can fix, and the one place they are reported.

A :class:`UserError` names the input and says what to do. ``posekit.stages.run_stage`` (and ``launch.py`` for a
bad command line) reports it with :func:`report`: one line on stderr, exit status 2, no traceback unless
``POSEKIT_DEBUG=1`` or ``hydra.verbose`` asks for one. Environmental failures a user fixes the same way (a
read-only or full disk) are turned into user errors by :func:`from_os_error`. docs/errors.md lists every case.
"""

from __future__ import annotations

import errno
import logging
import os
import sys
import traceback

EXIT_CODE = 2

log = logging.getLogger("posekit")


class UserError(Exception):
    """Bad input: a wrong path, a corrupt file, a bad override. The message says what to do."""


class MissingArtifactError(UserError, FileNotFoundError):
    """An upstream stage's artifact is missing (e.g. eval before train)."""


def one_line(message: str) -> str:
    """``message`` on one line (its lines joined), so a log grep or a table cell holds all of it."""
    return " ".join(line.strip() for line in str(message).splitlines() if line.strip())


def debug_enabled(verbose: object = None) -> bool:
    """Tracebacks wanted: ``POSEKIT_DEBUG=1`` in the environment, or Hydra's ``hydra.verbose`` set."""
    return os.environ.get("POSEKIT_DEBUG", "").strip().lower() not in ("", "0", "false", "no") or bool(verbose)


def report(error: BaseException, verbose: object = None, raised: BaseException | None = None) -> None:
    """Print ``posekit: error: <one line>`` on stderr; with debugging on, first the traceback of ``raised`` (the
    exception as raised, when ``error`` is its user-facing translation) or of ``error``."""
    message = one_line(str(error)) or type(error).__name__
    if logging.getLogger().hasHandlers():  # under Hydra: the job's log file keeps it too
        log.error("%s", message)
    if debug_enabled(verbose):
        shown = raised or error
        traceback.print_exception(type(shown), shown, shown.__traceback__, file=sys.stderr)
    print(f"posekit: error: {message}", file=sys.stderr, flush=True)


# errno values that mean "the place you asked me to write to cannot be written": fixed by the user, not the code
_WRITE_ERRNOS = {errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
                 errno.EPERM: "permission denied", errno.ENOSPC: "no space left on the device",
                 errno.EDQUOT: "disk quota exceeded"}


def write_failure(error: OSError) -> str | None:
    """Why a write failed in words, when it is the place's fault (read-only, full, forbidden), else None."""
    return _WRITE_ERRNOS.get(getattr(error, "errno", None) or -1)


def from_os_error(error: OSError) -> UserError | None:
    """A :class:`UserError` for an ``OSError`` the user fixes (read-only, full or forbidden folder), else None."""
    why = write_failure(error)
    if why is None:
        return None
    where = f" {error.filename}" if error.filename else ""
    return UserError(
        f"cannot write{where}: {why}. Point experiment.root (or the stage's output, e.g. infer.output) at a "
        "writable folder with free space, or fix the folder's permissions."
    )

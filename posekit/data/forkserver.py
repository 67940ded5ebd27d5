"""The process's one forkserver, shared by the synthetic-data generator and the DataLoader workers.

multiprocessing starts a single forkserver per process, at its first use, and the preload list set before that
moment is the one it keeps. The generator used to start it first (cold runs generate the data set before the
loader starts), with its own module alone, so every loader worker then imported torch, OpenCV and albumentations
itself: on the 2-core development VM the first batch of a 2-worker loader took 2-3.5 s longer after a generation
in the same process (6.4 and 8.6 s against 4.4 and 5.1 s). Each user therefore asks for its modules with
:func:`want`, and :func:`context` sets the union of every request so far, whoever starts the server.
"""

from __future__ import annotations

import multiprocessing as mp
from multiprocessing.context import BaseContext

# What a training process's loader workers need preloaded (posekit.data.datamodule imports torch, OpenCV,
# albumentations and the dataset); "__main__" is the entry script (launch.py), as multiprocessing's default.
LOADER_MODULES = ("__main__", "posekit.data.datamodule")

_wanted: list[str] = []


def want(*modules: str) -> None:
    """Ask the forkserver to preload ``modules`` (import names), if it has not started yet."""
    for m in modules:
        if m not in _wanted:
            _wanted.append(m)


def context() -> BaseContext:
    """The forkserver context with every module asked for so far preloaded (where the platform has a forkserver,
    Linux; else spawn, which has no server to preload)."""
    if "forkserver" not in mp.get_all_start_methods():
        return _usable_by_children(mp.get_context("spawn"))
    mp.set_forkserver_preload(list(_wanted))
    return _usable_by_children(mp.get_context("forkserver"))


def _usable_by_children(ctx: BaseContext) -> BaseContext:
    """Make ``ctx``'s start method the process's global one when the global one is not multiprocessing's own.

    A spawned or forkserver child sets the parent's global start method before it runs anything. Inside a joblib
    loky worker (``hydra/launcher=parallel`` runs sweep points there) that method is ``loky``, which the child's
    multiprocessing does not know: every loader worker and generator process would die at start ("cannot find
    context for 'loky'")."""
    if mp.get_start_method(allow_none=True) not in (None, *mp.get_all_start_methods()):
        mp.set_start_method(ctx.get_start_method(), force=True)
    return ctx


def only(*modules: str) -> None:
    """Replace every request with ``modules`` (benchmarks/loader_startup.py measures a server without preloads)."""
    _wanted[:] = list(modules)


def start() -> None:
    """Start the forkserver now, with what was asked for so far preloaded: it imports those modules in its own
    process while this one goes on (posekit.data.early). No-op where there is no forkserver or it runs already."""
    if "forkserver" not in mp.get_all_start_methods():
        return
    from multiprocessing import forkserver as server

    mp.set_forkserver_preload(list(_wanted))
    server.ensure_running()

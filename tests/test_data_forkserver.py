"""posekit.data.forkserver inside a joblib loky worker, where ``hydra/launcher=parallel`` runs sweep points: the
loader's worker processes must start there too (the loky worker's global start method is ``loky``, which a child
process copies and cannot find)."""

from __future__ import annotations

import multiprocessing as mp

import pytest


def _exit_code_of_a_child() -> tuple[str | None, int | None]:
    from posekit.data import forkserver

    before = mp.get_start_method(allow_none=True)
    child = forkserver.context().Process(target=abs, args=(-1,))  # a builtin: nothing to import in the child
    child.start()
    child.join(60)
    return before, child.exitcode


def test_loader_processes_start_inside_a_loky_worker():
    joblib = pytest.importorskip("joblib")
    # two jobs on two workers: with one job joblib runs it in this process, not in a loky worker
    results = joblib.Parallel(n_jobs=2, backend="loky")(joblib.delayed(_exit_code_of_a_child)() for _ in range(2))
    assert [before for before, _ in results] == ["loky", "loky"]  # what made the children die before the fix
    assert [code for _, code in results] == [0, 0]

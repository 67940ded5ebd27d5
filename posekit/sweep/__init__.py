"""Multirun sweeps over the model chain (docs/sweeps.md).

The step chain every pipeline runs through (fingerprints, step records, locks, the shared-model layout of a
sweep) is :mod:`posekit.chain`.

    collect.py  a sweep folder -> rows (per point and latency target) and its wall time
    plot.py     the AP-vs-latency plot of one target (Pareto front, non-overlapping labels)
    report.py   the rows -> ``report/sweep.csv``, ``sweep.md``, ``sweep.json``, one Pareto plot per target;
                ``python -m posekit.sweep.report DIR`` and the ``SweepReportCallback`` sweeps end with
    rebuild.py  a point's network re-made with random weights, to time it where its file is not (--rebuild)
    slurm_single_node.sh   a throw-away single-node SLURM cluster (tests/test_slurm.py; docs/slurm.md)
"""

from typing import Any

_REPORT = ("SweepReportCallback", "collect", "pareto_front", "write_report")


def __getattr__(name: str) -> Any:
    # report.py is imported on first use, so `python -m posekit.sweep.report` does not import it twice
    if name in _REPORT:
        from posekit.sweep import report

        return getattr(report, name)
    raise AttributeError(name)


__all__ = [*_REPORT]

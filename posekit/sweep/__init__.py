"""Multirun sweeps over the model chain (docs/sweeps.md).

    chain.py    steps that run once across jobs: config fingerprints, step records, file locks, the shared-model
                layout of a sweep (``ChainLayout``); the pipeline stage runs every chain through it
    report.py   a sweep folder -> ``report/sweep.csv``, ``sweep.md``, ``pareto.png`` (AP vs latency);
                ``python -m posekit.sweep.report DIR`` and the ``SweepReportCallback`` sweeps end with
    slurm_single_node.sh   a throw-away single-node SLURM cluster (tests/test_slurm.py; docs/slurm.md)
"""

from posekit.sweep.chain import ChainLayout, Outcome, Step, StepRunner, fingerprint, model_key
from posekit.sweep.report import SweepReportCallback, collect, pareto_front, write_report

__all__ = [
    "ChainLayout",
    "Outcome",
    "Step",
    "StepRunner",
    "SweepReportCallback",
    "collect",
    "fingerprint",
    "model_key",
    "pareto_front",
    "write_report",
]

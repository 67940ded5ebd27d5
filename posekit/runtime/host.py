"""What a figure was measured on: the CPU's name and its int8 instruction sets (``/proc/cpuinfo``).

Benchmark records (the bench stage's ``summary.json``, the lab scripts under ``benchmarks/``) name their hardware,
so a latency can be compared only with one from the same machine.
"""

from __future__ import annotations

import platform
from pathlib import Path


def cpu_name() -> str:
    """The processor's model name, e.g. ``"Intel(R) Xeon(R) Platinum 8480+"``."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    """The CPU's VNNI and AMX flags: what makes ONNX Runtime's int8 kernels fast (empty on older CPUs)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = set(next((ln.split(":", 1)[1].split() for ln in text.splitlines() if ln.startswith("flags")), []))
    return sorted(f for f in flags if "vnni" in f or f.startswith("amx"))

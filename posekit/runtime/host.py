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


def int8_products_saturate() -> bool:
    """True on an x86 CPU without VNNI or AMX, where ONNX Runtime's U8S8 int8 kernels multiply pairs of 8-bit
    values into 16-bit sums that saturate (``vpmaddubsw``): a model with 8-bit weights can then give wrong outputs,
    and 7-bit weights (``reduce_range``) avoid it (ORT's advice). On an AVX2-only VM the fused kernel moved a sparse
    ReLU head's peak by 25% with 8-bit weights, and by less than 5% with 7-bit (docs/export.md)."""
    machine = platform.machine().lower()
    if machine not in ("x86_64", "amd64", "i386", "i686", "x86"):
        return False  # ARM's int8 dot products do not saturate this way
    return not cpu_flags()

"""Latency measurement: time repeated calls after a warm-up, then summarize the samples (median, p90, ...).

The bench stage times backends and predictors with these; the lab scripts (``benchmarks/``) can too.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np


def time_calls(fn: Callable[[], Any], warmup: int, iters: int, cuda_events: bool = False,
               clock: Callable[[], float] = time.perf_counter) -> list[float]:
    """Milliseconds per call of ``fn``: ``iters`` samples after ``warmup`` untimed calls (which absorb lazy
    initialization, allocator growth and autotuning). CUDA events time the GPU work when ``cuda_events``;
    otherwise ``clock`` (seconds; injectable so tests can use a fake one) times each call on the host."""
    for _ in range(warmup):
        fn()
    samples = []
    if cuda_events:
        import torch

        for _ in range(iters):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end))
        return samples
    for _ in range(iters):
        t = clock()
        fn()
        samples.append((clock() - t) * 1e3)
    return samples


def summarize(samples_ms: Sequence[float], batch: int) -> dict[str, float]:
    """Median / p90 / mean / min latency (ms per call) of (N,) samples and throughput (images/s at the median
    for ``batch`` images per call). p90 interpolates linearly between samples (numpy's default)."""
    arr = np.asarray(samples_ms, dtype=np.float64)
    median = float(np.median(arr))
    return {
        "median_ms": round(median, 3),
        "p90_ms": round(float(np.percentile(arr, 90)), 3),
        "mean_ms": round(float(arr.mean()), 3),
        "min_ms": round(float(arr.min()), 3),
        "throughput_ips": round(batch * 1e3 / median, 2) if median > 0 else float("inf"),
        "iters": len(samples_ms),
    }

"""Benchmark scripts: `python -m posekit.benchmarks.<name>` prints figures (never timed tests)."""

"""Lab scripts: each imports posekit and prints figures (never timed tests). Run them from the repository root
as ``python -m benchmarks.<name>``. They are not part of the installed package (pyproject.toml packages only
``posekit*``), and nothing in posekit imports them."""

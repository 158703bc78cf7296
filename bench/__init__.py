"""Taskyard's benchmarks: `uv run python -m bench WORKLOAD [options]` (see bench/README.md)."""

"""Benchmark scripts: run as ``python -m copsctl.benchmarks.<name>``; they print figures."""

"""Benchmarks: `make bench`. Results are ratios against baselines measured in the same run."""

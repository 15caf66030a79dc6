"""Distillery's benchmarks: ratios of things measured side by side in one run (`make bench`)."""

"""WORKERS > 1: the supervisor of worker processes and the merging of their metrics."""

"""Datasets for the benchmarks: one module per benchmark, each returning torch Datasets."""

__all__ = ["DataError"]


class DataError(ValueError):
    """A data file is missing, corrupt or cannot be downloaded (a one-line message)."""

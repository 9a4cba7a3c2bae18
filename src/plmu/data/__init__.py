"""Datasets for the benchmarks: one module per benchmark, each returning torch Datasets."""

import os
from pathlib import Path

__all__ = ["DataError", "download_dir"]


def download_dir(name: str) -> Path:
    """Where the data set ``name`` is downloaded when no ``--data-dir`` is given:
    ``$PLMU_DATA_DIR/NAME``, else ``~/.cache/plmu/NAME``."""
    root = os.environ.get("PLMU_DATA_DIR")
    return (Path(root) if root else Path.home() / ".cache" / "plmu") / name


class DataError(ValueError):
    """A data file is missing, corrupt or cannot be downloaded (a one-line message)."""

"""Datasets for the benchmarks: one module per benchmark, each returning torch Datasets."""

import os
from pathlib import Path

__all__ = ["DataError", "download_dir", "not_utf8"]


def download_dir(name: str) -> Path:
    """Where the data set ``name`` is downloaded when no ``--data-dir`` is given:
    ``$PLMU_DATA_DIR/NAME``, else ``~/.cache/plmu/NAME``."""
    root = os.environ.get("PLMU_DATA_DIR")
    return (Path(root) if root else Path.home() / ".cache" / "plmu") / name


class DataError(ValueError):
    """A data file is missing, corrupt or cannot be downloaded (a one-line message)."""


def not_utf8(path: str | Path, error: UnicodeDecodeError | None = None) -> DataError:
    """The error for a text file that is not UTF-8: it names ``path``, the first line (from 1)
    that does not decode and the byte. Without ``error`` the file is read again, in binary, to
    find them; with it (``path`` decoded as one piece) the byte offset is given."""
    if error is not None:
        byte = error.object[error.start]
        return DataError(
            f"{path} is not UTF-8 text (byte {byte:#04x} at offset {error.start}); save it as UTF-8"
        )
    with open(path, "rb") as stream:
        for number, line in enumerate(stream, 1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as bad:
                return DataError(
                    f"{path}: line {number} is not UTF-8 text (byte {line[bad.start]:#04x} at "
                    f"column {bad.start + 1}); save it as UTF-8"
                )
    return DataError(f"{path} is not UTF-8 text; save it as UTF-8")

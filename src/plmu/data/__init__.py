"""Datasets for the benchmarks: one module per benchmark, each returning torch Datasets.

Text classification (IMDB, QQP, SNLI) has one module per job: :mod:`~plmu.data.text_tasks`
(the task table), :mod:`~plmu.data.text_files` (one split file), :mod:`~plmu.data.text_layouts`
(the hub's parquet files and the original distributions), :mod:`~plmu.data.text_splits`
(``load_splits``: local files, else the hub) and :mod:`~plmu.data.text_classification`
(vocabulary, batching and the datamodule).
"""

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

__all__ = ["DataError", "check_text", "download_dir", "download_folder", "not_utf8"]


def download_dir(name: str) -> Path:
    """Where the data set ``name`` is downloaded when no ``--data-dir`` is given:
    ``$PLMU_DATA_DIR/NAME``, else ``~/.cache/plmu/NAME``."""
    root = os.environ.get("PLMU_DATA_DIR")
    return (Path(root) if root else Path.home() / ".cache" / "plmu") / name


@contextlib.contextmanager
def download_folder(path: str | Path) -> Iterator[Path]:
    """Make the folder ``path`` (and its missing parents) for a download into it; when the
    download fails (any exception, Ctrl-C included), remove again the folders made here that are
    still empty, so a mistyped ``--data-dir`` offline leaves nothing behind. A ``path`` that is
    a file, or lies under one, is a :class:`DataError` naming it (not ``[Errno 17] File
    exists`` from ``mkdir``), and so is one this process may not write into (or make)."""
    path = Path(path)
    made = []  # the deepest first
    for folder in (path, *path.parents):
        if folder.exists():
            if not folder.is_dir():
                problem = "is a file" if folder == path else f"cannot be made: {folder} is a file"
                raise DataError(f"data directory {path} {problem}, not a directory (--data-dir)")
            if not os.access(folder, os.W_OK | os.X_OK):  # read-only, another user's
                where = "" if folder == path else f" cannot be made: {folder}"
                raise DataError(
                    f"data directory {path}{where} is not writable, so nothing can be downloaded "
                    f"into it; put the files there, or pass a --data-dir this process can write"
                )
            break
        made.append(folder)
    path.mkdir(parents=True, exist_ok=True)
    try:
        yield path
    except BaseException:
        for folder in made:
            try:
                folder.rmdir()  # only when empty
            except OSError:
                break
        raise


class DataError(ValueError):
    """A data file is missing, corrupt or cannot be downloaded (a one-line message)."""


def check_text(text: str, name: str) -> str:
    """``text``, refused naming ``name`` when it holds a lone surrogate, which no tokenizer
    takes: Python gives a byte of a command-line argument that is not UTF-8 (from a terminal
    in another encoding) as the surrogate ``U+DC80``-``U+DCFF``, and the tokenizers failed on it
    with ``TextEncodeInput must be Union[...]``, naming no argument."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        code = ord(text[error.start])
        what = f"the byte {code - 0xDC00:#04x}" if 0xDC80 <= code <= 0xDCFF else f"U+{code:04X}"
        raise ValueError(
            f"{name} holds {what} (character {error.start + 1}), not UTF-8 text; give it in "
            f"UTF-8 (a terminal set to another encoding passes its bytes as they are)"
        ) from None
    return text


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

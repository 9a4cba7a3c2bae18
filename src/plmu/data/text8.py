"""text8: character-level English (Mahoney's cleaned Wikipedia), 27 symbols, split by position.

The alphabet is the space and ``a``-``z``; symbol ids are positions in :data:`ALPHABET` (space is
0). The standard benchmark split of the 100,000,000 characters is the first 90M for training, the
next 5M for validation and the last 5M for testing; :func:`split` applies the same 90/5/5
proportions by position to a file of any other length (``int(0.9 n)``, ``int(0.05 n)``, rest).

Data sources, looked up in ``data_dir`` in this order:

1. ``text8`` (or ``text8/text8``, unzipped into a folder of its own): the unzipped original,
   or any text in the 27-symbol alphabet (trailing newlines are dropped; any other character
   outside the alphabet is an error; use :func:`to_text8_alphabet` to clean arbitrary text
   first);
2. ``text8.zip``: the original archive (its one member ``text8``);
3. neither: ``text8.zip`` is downloaded from :data:`TEXT8_URL` into ``data_dir`` (kept only
   when it is a zip archive); offline, a one-line :class:`~plmu.data.DataError` says where to
   put the file.

Training uses fixed-length windows (:class:`CharWindows`); evaluation scores every character of
a split exactly once, each with at least ``context`` characters of history (:class:`ScoredWindows`).
"""

from __future__ import annotations

import http.client
import os
import re
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from plmu.data import DataError, download_dir, download_folder

__all__ = [
    "ALPHABET",
    "TEXT8_URL",
    "VOCAB_SIZE",
    "CharWindows",
    "ScoredWindows",
    "decode",
    "default_data_dir",
    "encode",
    "load_text8",
    "locate_text8",
    "split",
    "to_text8_alphabet",
]

ALPHABET = " abcdefghijklmnopqrstuvwxyz"
VOCAB_SIZE = len(ALPHABET)
TEXT8_URL = "http://mattmahoney.net/dc/text8.zip"
SPLIT_FRACTIONS = (0.90, 0.05, 0.05)  # train, valid, test: 90M/5M/5M of the 100M characters

_UNKNOWN = 255
_LOOKUP = np.full(256, _UNKNOWN, dtype=np.uint8)
for _i, _c in enumerate(ALPHABET):
    _LOOKUP[ord(_c)] = _i
_DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def default_data_dir() -> Path:
    """Where ``text8.zip`` goes when no ``--data-dir`` is given: ``$PLMU_DATA_DIR/text8``, else
    ``~/.cache/plmu/text8``."""
    return download_dir("text8")


def encode(text: str, name: str = "text") -> torch.Tensor:
    """Map a string in the alphabet to symbol ids ``(len(text),)`` int64.

    Raises:
        ValueError: naming ``name`` and the characters outside :data:`ALPHABET`.
    """
    if not isinstance(text, str):
        raise TypeError(f"{name} must be a str, got {type(text).__name__}")
    bad = sorted({c for c in text if c not in ALPHABET})
    if bad:
        raise ValueError(
            f"{name} has characters outside the text8 alphabet (a-z and space): {''.join(bad)!r}"
        )
    ids = _LOOKUP[np.frombuffer(text.encode("ascii"), dtype=np.uint8)]
    return torch.from_numpy(ids.astype(np.int64))


def decode(ids: torch.Tensor | np.ndarray | list[int]) -> str:
    """Map symbol ids (any 1-D sequence of ints in ``[0, 27)``) back to a string."""
    return "".join(ALPHABET[int(i)] for i in ids)


def to_text8_alphabet(text: str) -> str:
    """Clean arbitrary text the way text8 was made: lower-case, digits spelled out
    (``"4"`` -> ``" four "``), every other character a space, runs of spaces collapsed.

    Letters with accents and other non-ASCII characters become spaces.
    """
    text = text.lower()
    text = re.sub(r"[0-9]", lambda m: f" {_DIGITS[int(m.group())]} ", text)
    text = re.sub(r"[^a-z]+", " ", text)
    return text


def _ids_from_bytes(data: bytes, source: str) -> np.ndarray:
    data = data.rstrip(b"\r\n")
    ids = _LOOKUP[np.frombuffer(data, dtype=np.uint8)]
    bad = np.flatnonzero(ids == _UNKNOWN)
    if bad.size:
        pos = int(bad[0])
        raise DataError(
            f"{source}: byte {data[pos : pos + 1]!r} at offset {pos} is outside the text8 "
            f"alphabet (a-z and space); clean the text with plmu.data.text8.to_text8_alphabet"
        )
    if ids.size < 2:
        raise DataError(f"{source}: needs at least 2 characters, got {ids.size}")
    return ids


def _download(url: str, target: Path) -> None:
    with download_folder(target.parent):  # removed again when empty and the download fails
        _download_into(url, target)


def _download_into(url: str, target: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=30) as response:
            shutil.copyfileobj(response, out)
        if not zipfile.is_zipfile(tmp):  # e.g. a proxy's or captive portal's HTML page
            raise DataError(
                f"downloading {url} gave something that is not a zip archive (not kept); "
                f"put the file 'text8' or 'text8.zip' in {target.parent} (--data-dir)"
            )
        os.replace(tmp, target)
    except (urllib.error.URLError, OSError, http.client.HTTPException) as err:
        # HTTPException: e.g. IncompleteRead, a connection cut part-way
        reason = getattr(err, "reason", err)
        raise DataError(
            f"text8 not found in {target.parent} and downloading {url} failed ({reason}); "
            f"put the file 'text8' or 'text8.zip' there (--data-dir)"
        ) from None
    finally:  # also after Ctrl-C: no partial file is left in the data directory
        Path(tmp).unlink(missing_ok=True)


def locate_text8(data_dir: str | Path, download: bool = True, url: str = TEXT8_URL) -> Path:
    """The file to read in ``data_dir``: ``text8`` if present, else ``text8.zip``, downloaded
    from ``url`` when absent (see the module docstring).

    Raises:
        DataError: no file and the download failed or ``download=False`` (one line).
    """
    data_dir = Path(data_dir)
    plain, archive = data_dir / "text8", data_dir / "text8.zip"
    if plain.is_file():
        return plain
    if (plain / "text8").is_file():  # unzipped into a folder of its own
        return plain / "text8"
    if not archive.is_file():
        if not download:
            raise DataError(f"neither {plain} nor {archive} exists (--data-dir)")
        _download(url, archive)
    return archive


def load_text8(data_dir: str | Path, download: bool = True, url: str = TEXT8_URL) -> np.ndarray:
    """Read the whole corpus in ``data_dir`` as symbol ids ``(n,)`` uint8.

    Raises:
        DataError: no file and the download failed or ``download=False``; a character
            outside the alphabet (with its offset); a bad archive.
    """
    path = locate_text8(data_dir, download, url)
    if path.suffix != ".zip":
        return _ids_from_bytes(path.read_bytes(), str(path))
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile as err:
        raise DataError(f"{path}: not a zip archive ({err})") from None
    except NotImplementedError as err:  # a damaged header, or a version zipfile lacks
        raise _unreadable_zip(path, err) from None
    with archive as zf:
        names = zf.namelist()
        if "text8" not in names:
            raise DataError(f"{path}: expected a member 'text8', found {names[:5]}")
        try:
            data = zf.read("text8")
        # a bad CRC or a broken stream (a damaged download), or a method zipfile lacks
        except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as err:
            raise _unreadable_zip(path, err) from None
    return _ids_from_bytes(data, f"{path}:text8")


def _unreadable_zip(path: Path, error: Exception) -> DataError:
    return DataError(
        f"{path}: cannot read the zip archive ({error}); delete it to download it again, "
        f"or put the unzipped file 'text8' in {path.parent}"
    )


def split(ids: np.ndarray) -> dict[str, np.ndarray]:
    """Split by position: the first 90% for training, the next 5% for validation, the rest
    for testing (exactly 90M/5M/5M for the 100M-character text8).

    Returns ``{"train", "valid", "test"}`` -> views of ``ids``.
    """
    n = len(ids)
    n_train = int(n * SPLIT_FRACTIONS[0])
    n_valid = int(n * SPLIT_FRACTIONS[1])
    return {
        "train": ids[:n_train],
        "valid": ids[n_train : n_train + n_valid],
        "test": ids[n_train + n_valid :],
    }


def _as_ids(ids: np.ndarray | torch.Tensor, name: str) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(ids))
    if t.dim() != 1:
        raise ValueError(f"{name} must be 1-D symbol ids, got shape {tuple(t.shape)}")
    return t


class CharWindows(Dataset):
    """Non-overlapping training windows of a split.

    Item ``i`` is ``(x, y)``, both ``(seq_len,)`` int64: ``x = ids[s : s + seq_len]`` and the
    next characters ``y = ids[s + 1 : s + seq_len + 1]`` with ``s = i * seq_len``. The tail that
    does not fill a window is dropped.
    """

    def __init__(self, ids: np.ndarray | torch.Tensor, seq_len: int) -> None:
        self.ids = _as_ids(ids, "ids")
        if seq_len < 1:
            raise ValueError(f"seq_len must be >= 1, got {seq_len}")
        if len(self.ids) < seq_len + 1:
            raise ValueError(
                f"a split of {len(self.ids)} characters is too short for seq_len={seq_len} "
                f"(needs seq_len + 1)"
            )
        self.seq_len = seq_len

    def __len__(self) -> int:
        return (len(self.ids) - 1) // self.seq_len

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= i < len(self):
            raise IndexError(i)
        s = i * self.seq_len
        w = self.ids[s : s + self.seq_len + 1].long()
        return w[:-1], w[1:]


class ScoredWindows(Dataset):
    """Evaluation windows that score every prediction of a split exactly once.

    A split of ``n`` characters has ``n - 1`` targets (``ids[t]`` given ``ids[:t]``). Windows of
    ``seq_len`` (shortened to ``n - 1`` for a tiny split) start every ``seq_len - context``
    characters; each scores only its positions past the first ``context`` (the first window
    scores all), so every scored target has at least ``context`` characters of history inside
    its window. The last window is aligned to the end of the split.

    Item ``i`` is ``(x, y, mask)``: ``(seq_len,)`` int64, int64 and bool (the scored targets).
    """

    def __init__(self, ids: np.ndarray | torch.Tensor, seq_len: int, context: int) -> None:
        self.ids = _as_ids(ids, "ids")
        n = len(self.ids)
        if n < 2:
            raise ValueError(f"a split needs at least 2 characters, got {n}")
        if seq_len < 1:
            raise ValueError(f"seq_len must be >= 1, got {seq_len}")
        self.seq_len = min(seq_len, n - 1)
        self.context = min(context, self.seq_len - 1)
        if self.context < 0:
            raise ValueError(f"context must be >= 0, got {context}")
        stride = self.seq_len - self.context
        # window k starts at k * stride and covers targets up to k * stride + seq_len
        self.starts: list[int] = []
        self.first_scored: list[int] = []
        covered = 0  # targets 1..covered are scored
        while covered < n - 1:
            s = min(len(self.starts) * stride, n - 1 - self.seq_len)
            self.starts.append(s)
            self.first_scored.append(covered - s)  # index in y of the first new target
            covered = s + self.seq_len

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if not 0 <= i < len(self):
            raise IndexError(i)
        s = self.starts[i]
        w = self.ids[s : s + self.seq_len + 1].long()
        mask = torch.zeros(self.seq_len, dtype=torch.bool)
        mask[self.first_scored[i] :] = True
        return w[:-1], w[1:], mask

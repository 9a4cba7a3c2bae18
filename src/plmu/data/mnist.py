"""MNIST in the standard IDX format, as permuted pixel sequences (psMNIST).

Files: ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
``t10k-labels-idx1-ubyte`` in a directory (or in its ``MNIST/raw``, torchvision's layout), each
plain or gzipped (``.gz``; gzip is recognised by the content, so a browser's decompressed ``.gz``
reads too); Kaggle's renamings (``train-images.idx3-ubyte``, or each file in a folder of its own
name) are found as well (:func:`idx_candidates`). Missing files are
downloaded there (MD5 checksums verified) when a mirror can be reached; offline a one-line
:class:`~plmu.data.DataError` says what to put where. Any set in this format works (other image
sizes, a few thousand images) whose labels are ``0..9``; another label is an error naming the
labels file (the classifier has 10 outputs).

psMNIST (:func:`psmnist_splits`): pixels scaled to ``[0, 1]``, each image flattened row by row
to a sequence of ``H * W`` steps (784 for MNIST) of one feature, then all sequences reordered by
one fixed permutation, ``torch.randperm(H * W)`` from a ``torch.Generator`` seeded with
``permutation_seed`` (config key, default 0). Validation is the last ``val_size`` training
images (default 10,000: the usual 50k/10k/10k split), test the t10k files.

``torch.randperm``'s values depend on torch's random number generator, which may change between
torch versions, so the permutation itself is what identifies the task: a trained run stores it
in its checkpoint, and evaluating or resuming uses the stored one (``psmnist_splits(order=...)``).
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from plmu.data import DataError, download_dir, download_folder

__all__ = [
    "FILES",
    "MIRRORS",
    "TEST_FILES",
    "TORCHVISION_SUBDIR",
    "PixelSequences",
    "check_permutation",
    "default_data_dir",
    "download_mnist",
    "files_dir",
    "find_idx",
    "load_mnist",
    "load_mnist_test",
    "permutation",
    "psmnist_splits",
    "psmnist_test_set",
    "read_idx",
]

# name -> MD5 of the gzipped file as distributed.
FILES = {
    "train-images-idx3-ubyte": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte": "ec29112dd5afa0611ce80d1b7f02629c",
}
# the test split's two files: all that evaluating a trained model reads
TEST_FILES = ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def default_data_dir() -> Path:
    """``$PLMU_DATA_DIR/mnist``, else ``~/.cache/plmu/mnist``."""
    return download_dir("mnist")


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file into an array of its stored dtype and shape.

    A gzipped file is recognised by its content (its first two bytes), not its name: a browser
    that undoes a server's gzip encoding keeps the ``.gz`` name on plain bytes.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
        if data[:2] == b"\x1f\x8b":
            data = gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as error:  # zlib.error: a corrupted deflate stream
        raise DataError(f"{path}: cannot read the file ({error})") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _DTYPES:
        raise DataError(f"{path}: not an IDX file (bad magic number)")
    dtype, ndim = np.dtype(_DTYPES[data[2]]), data[3]
    header = 4 + 4 * ndim
    if ndim < 1 or len(data) < header:
        raise DataError(f"{path}: truncated IDX header")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(data) != expected:
        raise DataError(
            f"{path}: IDX size mismatch, header says {shape} ({expected} bytes), "
            f"file has {len(data)} bytes"
        )
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)


TORCHVISION_SUBDIR = Path("MNIST") / "raw"  # where torchvision.datasets.MNIST(root) keeps them


def files_dir(data_dir: str | Path, names: Iterable[str] | None = None) -> Path:
    """The directory to read the IDX files ``names`` (default: all four) from: ``data_dir``, or
    torchvision's layout ``data_dir/MNIST/raw`` when that holds them all and ``data_dir`` does
    not (so the ``root`` of an existing ``torchvision.datasets.MNIST`` download works as
    ``--data-dir``)."""
    data_dir = Path(data_dir)
    nested = data_dir / TORCHVISION_SUBDIR
    names = tuple(FILES if names is None else names)
    if not all(find_idx(data_dir, name) for name in names) and all(
        find_idx(nested, name) for name in names
    ):
        return nested
    return data_dir


def idx_candidates(data_dir: Path, name: str) -> list[Path]:
    """Where the IDX file ``name`` may lie in ``data_dir``, in the order looked up: ``name``,
    ``name.gz``, then the common renaming with a dot (``train-images.idx3-ubyte``, as in
    Kaggle's "MNIST Dataset") plain and gzipped, then either name inside a folder of the same
    name (that download's other copy: ``train-images-idx3-ubyte/train-images-idx3-ubyte``)."""
    dotted = name.replace("-idx", ".idx")
    names = [name] if dotted == name else [name, dotted]
    flat = [data_dir / f"{n}{suffix}" for n in names for suffix in ("", ".gz")]
    return flat + [data_dir / n / n for n in names]


def find_idx(data_dir: Path, name: str) -> Path | None:
    """The first of :func:`idx_candidates` that is a file, or None."""
    for candidate in idx_candidates(data_dir, name):
        if candidate.is_file():
            return candidate
    return None


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download_mnist(
    data_dir: str | Path, timeout: float = 30.0, names: Iterable[str] | None = None
) -> None:
    """Download the MNIST files ``names`` (default: all four) missing from ``data_dir``,
    verifying their MD5 checksums."""
    with download_folder(data_dir) as folder:  # removed again when empty and a file fails
        _download_missing(folder, timeout, tuple(FILES if names is None else names))


def _download_missing(data_dir: Path, timeout: float, names: tuple[str, ...]) -> None:
    what = "the four IDX files" if set(names) == set(FILES) else f"{', '.join(names)} (or .gz)"
    for name in names:
        md5 = FILES[name]
        if find_idx(data_dir, name) is not None:
            continue
        target = data_dir / f"{name}.gz"
        errors = []
        for mirror in MIRRORS:
            url = mirror + target.name
            handle, tmp = tempfile.mkstemp(dir=data_dir, prefix=f".{target.name}.")
            tmp_path = Path(tmp)
            try:
                with (
                    os.fdopen(handle, "wb") as out,
                    urllib.request.urlopen(url, timeout=timeout) as r,
                ):
                    shutil.copyfileobj(r, out)
                got = _md5(tmp_path)
                if got != md5:
                    errors.append(f"{url}: checksum {got} != {md5}")
                    continue
                tmp_path.replace(target)
                break
            except (urllib.error.URLError, OSError, http.client.HTTPException) as error:
                # HTTPException: e.g. IncompleteRead, a connection cut part-way
                errors.append(f"{url}: {getattr(error, 'reason', error)}")
            finally:
                tmp_path.unlink(missing_ok=True)
        else:
            raise DataError(
                f"MNIST file {name}[.gz] is not in {data_dir} and could not be downloaded "
                f"({'; '.join(errors)}); put {what} there (or pass --data-dir)"
            )


def load_mnist(
    data_dir: str | Path, download: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(train_images, train_labels, test_images, test_labels)`` from the IDX files.

    Images are uint8 ``(N, H, W)``, labels int64 ``(N,)``. Missing files are downloaded when
    ``download`` is True.
    """
    data_dir = _with_files(data_dir, tuple(FILES), download)
    train_x, train_y = _read_split(data_dir, "train")
    test_x, test_y = _read_split(data_dir, "t10k")
    if train_x.shape[1:] != test_x.shape[1:]:
        raise DataError(f"{data_dir}: train images {train_x.shape[1:]} != t10k {test_x.shape[1:]}")
    return train_x, train_y, test_x, test_y


def load_mnist_test(data_dir: str | Path, download: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """``(test_images, test_labels)`` from the two t10k files (:data:`TEST_FILES`) alone, as
    :func:`load_mnist` reads them; the training files are not read and need not exist."""
    data_dir = _with_files(data_dir, TEST_FILES, download)
    return _read_split(data_dir, "t10k")


def _with_files(data_dir: str | Path, names: Iterable[str], download: bool) -> Path:
    """The folder holding the IDX files ``names`` (:func:`files_dir`), the missing ones
    downloaded first when ``download`` is True (else a :class:`DataError` naming them)."""
    names = tuple(names)
    data_dir = files_dir(data_dir, names)
    missing = [name for name in names if find_idx(data_dir, name) is None]
    if missing and download:
        download_mnist(data_dir, names=names)
    elif missing:
        raise DataError(f"MNIST files missing from {data_dir}: {', '.join(missing)} (or .gz)")
    return data_dir


def _read_split(data_dir: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """``split``'s (``"train"`` or ``"t10k"``) images uint8 ``(N, H, W)`` and labels int64
    ``(N,)``, their ranks, counts and image type checked."""
    names = (f"{split}-images-idx3-ubyte", f"{split}-labels-idx1-ubyte")
    images, labels = (read_idx(find_idx(data_dir, name)) for name in names)  # type: ignore[arg-type]
    for name, array, rank in zip(names, (images, labels), (3, 1)):
        if array.ndim != rank:
            raise DataError(f"{data_dir / name}: expected {rank} dimensions, got {array.shape}")
    if len(images) != len(labels):
        raise DataError(f"{data_dir}: {split} has {len(images)} images but {len(labels)} labels")
    if images.dtype != np.uint8:
        raise DataError(f"{data_dir}: images must be unsigned bytes (IDX type 0x08)")
    return images, labels.astype(np.int64)


def permutation(length: int, seed: int) -> torch.Tensor:
    """The fixed pixel order: ``torch.randperm(length)`` from a generator seeded with ``seed``.

    The values depend on torch's generator (they may differ between torch versions); a trained
    model's permutation is the one stored in its checkpoint.
    """
    return torch.randperm(length, generator=torch.Generator().manual_seed(seed))


def check_permutation(order: object, length: int, name: str = "order") -> torch.Tensor:
    """``order`` as an int64 tensor, checked to be a permutation of ``range(length)``."""
    try:
        tensor = torch.as_tensor(order)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"{name} must be a sequence of ints, got {type(order).__name__}") from None
    if tensor.dtype.is_floating_point or tensor.dtype.is_complex or tensor.dtype == torch.bool:
        raise TypeError(f"{name} must hold ints, got dtype {tensor.dtype}")
    if tensor.dim() != 1 or not torch.equal(tensor.sort().values, torch.arange(length)):
        raise ValueError(
            f"{name} must be a permutation of the {length} pixel steps (each of 0..{length - 1} "
            f"once), got shape {tuple(tensor.shape)}"
        )
    return tensor.long()


class PixelSequences(Dataset):
    """Images as pixel sequences: item ``i`` is ``(x (H*W, 1) float32 in [0, 1], label int64)``.

    Args:
        images: uint8 ``(N, H, W)``.
        labels: int ``(N,)``.
        order: optional permutation of the ``H * W`` steps (psMNIST); kept as ``order``.
    """

    def __init__(
        self, images: np.ndarray, labels: np.ndarray, order: torch.Tensor | None = None
    ) -> None:
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.pixels = torch.tensor(np.asarray(images, dtype=np.uint8)).reshape(len(images), -1)
        self.labels = torch.from_numpy(np.asarray(labels, dtype=np.int64))
        self.order = None
        if order is not None:
            self.order = check_permutation(order, self.pixels.shape[1])
            self.pixels = self.pixels[:, self.order]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.pixels[index].to(torch.float32).div_(255.0).unsqueeze(-1)
        return x, self.labels[index]


def psmnist_splits(
    data_dir: str | Path,
    val_size: int = 10_000,
    permutation_seed: int = 0,
    download: bool = True,
    order: torch.Tensor | list[int] | None = None,
    num_classes: int = 10,
) -> tuple[PixelSequences, PixelSequences, PixelSequences]:
    """The psMNIST train / validation / test sets (see the module docstring).

    ``order`` is the pixel permutation (e.g. the one a checkpoint stored); by default
    :func:`permutation` of ``permutation_seed``. Each set keeps it as ``order``.

    Raises:
        DataError: a file is missing or corrupt, or a label lies outside ``0..num_classes-1``
            (naming the labels file and the label's index).
        ValueError: ``val_size`` outside ``[1, N - 1]`` for the ``N`` training images (a
            message starting ``"val_size "``).
    """
    train_x, train_y, test_x, test_y = load_mnist(data_dir, download)
    # the first thing the images tell (the config table checks val_size >= 1 before any data)
    if not 0 < val_size < len(train_x):
        raise ValueError(
            f"val_size must lie in [1, {len(train_x) - 1}] for the {len(train_x)} training "
            f"images in {data_dir}, got {val_size}"
        )
    _check_labels(data_dir, "train", train_y, num_classes)
    _check_labels(data_dir, "t10k", test_y, num_classes)
    order = _pixel_order(train_x, order, permutation_seed)
    cut = len(train_x) - val_size
    return (
        PixelSequences(train_x[:cut], train_y[:cut], order),
        PixelSequences(train_x[cut:], train_y[cut:], order),
        PixelSequences(test_x, test_y, order),
    )


def psmnist_test_set(
    data_dir: str | Path,
    permutation_seed: int = 0,
    download: bool = True,
    order: torch.Tensor | list[int] | None = None,
    num_classes: int = 10,
) -> PixelSequences:
    """The psMNIST test set alone, read from the t10k files only (:func:`load_mnist_test`): the
    third set of :func:`psmnist_splits` with the same arguments, for evaluating a trained model
    without the training files.

    Raises:
        DataError: as :func:`psmnist_splits`, for the two t10k files.
    """
    test_x, test_y = load_mnist_test(data_dir, download)
    _check_labels(data_dir, "t10k", test_y, num_classes)
    return PixelSequences(test_x, test_y, _pixel_order(test_x, order, permutation_seed))


def _pixel_order(
    images: np.ndarray, order: torch.Tensor | list[int] | None, permutation_seed: int
) -> torch.Tensor:
    """The pixel permutation for ``images`` ``(N, H, W)``: ``order`` checked, or else
    :func:`permutation` of ``permutation_seed``."""
    length = int(np.prod(images.shape[1:]))
    if order is None:
        return permutation(length, permutation_seed)
    return check_permutation(order, length)


def _check_labels(data_dir: str | Path, split: str, labels: np.ndarray, num_classes: int) -> None:
    """A :class:`DataError` naming ``split``'s labels file when a label lies outside
    ``0..num_classes-1``."""
    outside = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if outside.size:
        name = f"{split}-labels-idx1-ubyte"
        folder = files_dir(data_dir, [name])  # data_dir, or torchvision's MNIST/raw in it
        path = find_idx(folder, name) or folder / name
        raise DataError(
            f"{path}: label {labels[outside[0]]} at index {outside[0]} is outside "
            f"0..{num_classes - 1} ({outside.size} such labels); psMNIST classifies "
            f"{num_classes} digits"
        )

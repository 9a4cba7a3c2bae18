"""Write scikit-learn's bundled 8x8 handwritten digits as MNIST-format IDX files (offline).

A small real digit set for trying ``plmu train psmnist`` where MNIST cannot be downloaded:
1,797 images of 8x8 pixels (UCI optical digits, bundled with scikit-learn, no download), pixel
values 0..16 scaled to 0..255. The images are shuffled with a fixed seed, then the last
``--test`` images become the t10k files and the rest the train files. Sequences are 64 steps
(not 784), so train with ``--set theta=64`` (see docs/training.md).

Needs scikit-learn (not a plmu dependency): ``pip install scikit-learn``.

    python scripts/digits_to_idx.py data/digits
"""

from __future__ import annotations

import argparse
import gzip
from pathlib import Path

import numpy as np


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array as a gzipped IDX file (magic 0x0000080N, big-endian sizes)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(n.to_bytes(4, "big") for n in array.shape)
    with gzip.open(path, "wb") as stream:
        stream.write(header + array.tobytes())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="directory for the four .gz IDX files")
    parser.add_argument("--test", type=int, default=297, help="images in the t10k files")
    parser.add_argument("--seed", type=int, default=0, help="shuffling seed")
    args = parser.parse_args()

    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)  # (1797, 8, 8)
    labels = digits.target.astype(np.uint8)
    order = np.random.default_rng(args.seed).permutation(len(labels))
    images, labels = images[order], labels[order]
    cut = len(labels) - args.test
    args.out.mkdir(parents=True, exist_ok=True)
    write_idx(args.out / "train-images-idx3-ubyte.gz", images[:cut])
    write_idx(args.out / "train-labels-idx1-ubyte.gz", labels[:cut])
    write_idx(args.out / "t10k-images-idx3-ubyte.gz", images[cut:])
    write_idx(args.out / "t10k-labels-idx1-ubyte.gz", labels[cut:])
    print(f"wrote {cut} train and {args.test} test 8x8 digits to {args.out}")


if __name__ == "__main__":
    main()

import gzip
import http.client
import io
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import write_idx, write_mnist
from plmu.data import DataError, mnist
from plmu.data.mnist import (
    PixelSequences,
    find_idx,
    load_mnist,
    permutation,
    psmnist_splits,
    read_idx,
)


@pytest.mark.parametrize("name", ["images-idx3-ubyte", "images-idx3-ubyte.gz"])
def test_read_idx_roundtrip(tmp_path: Path, name: str) -> None:
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    assert np.array_equal(read_idx(write_idx(tmp_path / name, array)), array)


@pytest.mark.parametrize(("name", "gz"), [("x-idx3-ubyte.gz", False), ("x-idx3-ubyte", True)])
def test_read_idx_goes_by_content_not_name(tmp_path: Path, name: str, gz: bool) -> None:
    """A browser that undoes the server's gzip encoding saves plain bytes under the .gz name;
    a gzipped file may lose its suffix."""
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    data = write_idx(tmp_path / "plain", array).read_bytes()
    (tmp_path / name).write_bytes(gzip.compress(data) if gz else data)
    assert np.array_equal(read_idx(tmp_path / name), array)


def test_read_idx_rejects_bad_magic(tmp_path: Path) -> None:
    path = tmp_path / "bad"
    path.write_bytes(b"\x12\x34\x08\x01" + b"\x00" * 8)
    with pytest.raises(DataError, match="bad magic"):
        read_idx(path)


def test_read_idx_rejects_truncated(tmp_path: Path) -> None:
    path = write_idx(tmp_path / "x", np.zeros((5, 4, 4), np.uint8))
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(DataError, match="size mismatch"):
        read_idx(path)


def test_read_idx_rejects_broken_gzip(tmp_path: Path) -> None:
    path = tmp_path / "x.gz"
    path.write_bytes(gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x01\x07")[:-5])
    with pytest.raises(DataError, match=r"x\.gz: cannot read"):
        read_idx(path)
    path.write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match=r"x\.gz: not an IDX file"):
        read_idx(path)
    # a corrupted deflate stream (a bad block type): zlib's own error, not gzip's
    data = bytearray(gzip.compress(bytes([0, 0, 8, 1, 0, 0, 0, 10, *range(10)]) * 50))
    data[10] ^= 0x55
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"x\.gz: cannot read the file \(Error -3"):
        read_idx(path)


def test_find_idx_prefers_plain(tmp_path: Path) -> None:
    write_idx(tmp_path / "a.gz", np.zeros(3, np.uint8))
    assert find_idx(tmp_path, "a") == tmp_path / "a.gz"
    write_idx(tmp_path / "a", np.zeros(3, np.uint8))
    assert find_idx(tmp_path, "a") == tmp_path / "a"
    assert find_idx(tmp_path, "b") is None


@pytest.mark.parametrize("gz", [True, False])
def test_load_mnist_reads_both_formats(tmp_path: Path, gz: bool) -> None:
    train_x, train_y, test_x, _ = load_mnist(write_mnist(tmp_path, 12, 6, gz=gz))
    assert train_x.shape == (12, 28, 28) and train_x.dtype == np.uint8
    assert test_x.shape == (6, 28, 28)
    assert train_y.dtype == np.int64 and list(train_y[:3]) == [0, 1, 2]


def test_load_mnist_count_mismatch(tmp_path: Path) -> None:
    write_mnist(tmp_path, 12, 6, gz=False)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(11, np.uint8))
    with pytest.raises(DataError, match="12 images but 11 labels"):
        load_mnist(tmp_path)


def test_missing_files_offline_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        load_mnist(tmp_path / "empty")
    message = str(info.value)
    assert "could not be downloaded" in message and "\n" not in message


def test_failed_download_leaves_no_folder_behind(tmp_path: Path) -> None:
    """A --data-dir that is not there (a typo, say) stays absent when the download fails (the
    tests are offline), for ``plmu evaluate`` too; a folder that was there is kept."""
    with pytest.raises(DataError):
        load_mnist(tmp_path / "typo" / "mnist")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(DataError):
        load_mnist(tmp_path)
    assert tmp_path.is_dir() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["afile", "afile/mnist"])
def test_data_dir_that_is_a_file_is_a_one_line_error(tmp_path: Path, name: str) -> None:
    """A --data-dir that is (or lies under) a file is refused naming it, not with a bare
    ``[Errno 17] File exists`` (or ``[Errno 20] Not a directory``) from making the folder."""
    (tmp_path / "afile").write_text("not a folder")
    with pytest.raises(DataError, match="is a file, not a directory") as info:
        load_mnist(tmp_path / name)
    assert str(tmp_path / "afile") in str(info.value) and "--data-dir" in str(info.value)
    assert (tmp_path / "afile").read_text() == "not a folder"


@pytest.mark.parametrize("name", ["locked", "locked/mnist"])
def test_download_into_a_folder_that_cannot_be_written_is_named(
    tmp_path: Path, read_only_dir: Path, name: str
) -> None:
    """A missing file to download into a read-only --data-dir (or default ``~/.cache/plmu``
    under a read-only home) was ``[Errno 30] Read-only file system: '...'``, naming neither
    --data-dir nor what to do."""
    with pytest.raises(DataError, match=f"{read_only_dir} is not writable") as info:
        load_mnist(tmp_path / name)
    assert "--data-dir" in str(info.value) and list(read_only_dir.iterdir()) == []


def test_missing_files_without_download(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="missing"):
        load_mnist(tmp_path, download=False)


def test_download_verifies_checksum(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    payload = gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x01\x07")
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: io.BytesIO(payload))
    with pytest.raises(DataError, match="checksum"):
        mnist.download_mnist(tmp_path)
    assert not list(tmp_path.iterdir())  # no partial or unverified file left behind


def test_download_keeps_verified_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    payload = gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x01\x07")
    import hashlib

    digest = hashlib.md5(payload).hexdigest()
    monkeypatch.setattr(mnist, "FILES", {"tiny-idx1-ubyte": digest})
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: io.BytesIO(payload))
    mnist.download_mnist(tmp_path)
    assert read_idx(tmp_path / "tiny-idx1-ubyte.gz").tolist() == [7]


class _CutResponse(io.BytesIO):
    """A response whose connection drops part-way (fewer bytes than its Content-Length)."""

    def read(self, *args: object) -> bytes:
        raise http.client.IncompleteRead(b"\x1f\x8b", 1000)


def test_download_tries_the_next_mirror_after_a_cut_connection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    payload = gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x01\x07")
    import hashlib

    monkeypatch.setattr(mnist, "FILES", {"tiny-idx1-ubyte": hashlib.md5(payload).hexdigest()})
    urls = []

    def urlopen(url: str, timeout: float) -> io.BytesIO:
        urls.append(url)
        return _CutResponse() if url.startswith(mnist.MIRRORS[0]) else io.BytesIO(payload)

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    mnist.download_mnist(tmp_path)
    assert [url[: -len("tiny-idx1-ubyte.gz")] for url in urls] == list(mnist.MIRRORS)
    assert read_idx(tmp_path / "tiny-idx1-ubyte.gz").tolist() == [7]
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: _CutResponse())
    with pytest.raises(DataError, match=r"could not be downloaded.*IncompleteRead"):
        mnist.download_mnist(tmp_path / "cut")
    assert not (tmp_path / "cut").exists()  # no partial file, nor the folder made for it


def test_permutation_is_fixed_by_seed() -> None:
    assert torch.equal(permutation(784, 0), permutation(784, 0))
    assert not torch.equal(permutation(784, 0), permutation(784, 1))
    assert sorted(permutation(784, 3).tolist()) == list(range(784))


def test_pixel_sequences_scale_and_permute() -> None:
    images = np.arange(2 * 2 * 3, dtype=np.uint8).reshape(2, 2, 3) * 20
    order = torch.tensor([5, 0, 1, 2, 3, 4])
    data = PixelSequences(images, np.array([3, 4]), order)
    x, label = data[1]
    assert x.shape == (6, 1) and x.dtype == torch.float32 and int(label) == 4
    expected = torch.tensor(images[1].reshape(-1)[order.numpy()], dtype=torch.float32) / 255
    assert torch.allclose(x.squeeze(-1), expected)
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0


def test_psmnist_splits_validation_is_last_images(tmp_path: Path) -> None:
    write_mnist(tmp_path, 30, 10, gz=True)
    train, val, test = psmnist_splits(tmp_path, val_size=8, permutation_seed=0)
    assert (len(train), len(val), len(test)) == (22, 8, 10)
    assert [int(val[i][1]) for i in range(3)] == [22 % 10, 23 % 10, 24 % 10]
    with pytest.raises(ValueError, match="val_size"):
        psmnist_splits(tmp_path, val_size=30)


@pytest.mark.parametrize("split", ["train", "t10k"])
def test_psmnist_splits_reject_labels_outside_the_classes(tmp_path: Path, split: str) -> None:
    """A label the 10-way classifier cannot output (a corrupt byte, EMNIST's letters 1..26) is
    an error naming the file, not an IndexError in the loss after training."""
    write_mnist(tmp_path, 30, 10, size=4, gz=False)
    labels = np.arange(30 if split == "train" else 10) % 10
    labels[7] = 12
    write_idx(tmp_path / f"{split}-labels-idx1-ubyte", labels)
    with pytest.raises(DataError, match=rf"{split}-labels-idx1-ubyte: label 12 at index 7 is "):
        psmnist_splits(tmp_path, val_size=8)
    assert len(psmnist_splits(tmp_path, val_size=8, num_classes=13)[0]) == 22


def test_psmnist_splits_take_a_given_permutation(tmp_path: Path) -> None:
    """A checkpoint's stored permutation replaces the seed's; a wrong one is a clear error."""
    write_mnist(tmp_path, 30, 10, size=4, gz=True)
    order = torch.arange(16).flip(0)
    train, val, test = psmnist_splits(tmp_path, val_size=8, order=order.tolist())
    raw, _ = psmnist_splits(tmp_path, val_size=8, order=torch.arange(16))[2][0]
    for data in (train, val, test):
        assert torch.equal(data.order, order)
    assert torch.equal(test[0][0], raw[order])
    for bad, error in (
        (torch.arange(15), ValueError),
        ([0] * 16, ValueError),
        (torch.arange(16.0), TypeError),
        ("0123", TypeError),
    ):
        with pytest.raises(error, match="order must"):
            psmnist_splits(tmp_path, val_size=8, order=bad)


def test_psmnist_data_with_a_stored_permutation_of_the_wrong_size(tmp_path: Path) -> None:
    from plmu.experiments.psmnist import PsMNISTData
    from plmu.training.config import default_config

    write_mnist(tmp_path, 30, 10, size=4, gz=True)
    config = {**default_config("psmnist"), "val_size": 8}
    data = PsMNISTData(config, tmp_path, {"permutation": list(range(784))})
    with pytest.raises(ValueError, match=r"checkpoint's pixel permutation does not fit.*16"):
        data.setup()
    data = PsMNISTData(config, tmp_path, {"permutation": list(range(16))[::-1]})
    data.setup()
    assert data.saved_state() == {"permutation": list(range(16))[::-1]}
    assert data.state_dict() == {}  # stored once, in checkpoint["plmu"]["saved"]


@pytest.mark.parametrize("val_size", [30, 31])
def test_psmnist_data_val_size_not_below_the_training_images_names_the_config_key(
    tmp_path: Path, val_size: int
) -> None:
    """val_size >= the training images was refused as "val_size must lie ...", not as the
    config key, and only after the labels were checked."""
    from plmu.experiments.psmnist import PsMNISTData
    from plmu.training.config import ConfigError, default_config

    write_mnist(tmp_path, 30, 10, size=4, gz=True)
    config = {**default_config("psmnist"), "val_size": val_size}
    pattern = rf"config key 'val_size' must lie in \[1, 29\] for the 30 training images.*{val_size}"
    with pytest.raises(ConfigError, match=pattern):
        PsMNISTData(config, tmp_path).setup()
    with pytest.raises(ValueError, match=r"^val_size must lie"):  # before the labels' check
        psmnist_splits(tmp_path, val_size=val_size, num_classes=3)


def test_load_mnist_reads_torchvision_layout(tmp_path: Path) -> None:
    """The ``root`` of a torchvision MNIST download (files in ``root/MNIST/raw``) is a data dir;
    files directly in the directory take precedence."""
    expected = load_mnist(write_mnist(tmp_path / "flat", 12, 6))
    write_mnist(tmp_path / "root" / "MNIST" / "raw", 12, 6)
    got = load_mnist(tmp_path / "root", download=False)
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_array_equal(a, b)
    assert mnist.files_dir(tmp_path / "root") == tmp_path / "root" / "MNIST" / "raw"
    write_mnist(tmp_path / "root", 14, 6)  # now also directly in the directory: those win
    assert len(load_mnist(tmp_path / "root", download=False)[0]) == 14


def test_psmnist_data_prepares_from_torchvision_layout(tmp_path: Path, monkeypatch) -> None:
    """`plmu train psmnist --data-dir ROOT` with the files in ROOT/MNIST/raw downloads nothing."""
    from plmu.experiments.psmnist import PsMNISTData
    from plmu.training.config import default_config

    write_mnist(tmp_path / "root" / "MNIST" / "raw", 12, 6)

    def no_download(*args: object, **kwargs: object) -> None:
        raise AssertionError("downloaded although the files are there")

    monkeypatch.setattr(mnist, "download_mnist", no_download)
    config = {**default_config("psmnist"), "val_size": 2}
    data = PsMNISTData(config, tmp_path / "root")
    data.prepare_data()
    data.setup()
    assert len(data.train_set) == 10


@pytest.mark.parametrize(
    "layout",
    [
        "{name}",  # the original names
        "{dotted}",  # Kaggle's "MNIST Dataset": train-images.idx3-ubyte
        "{name}/{name}",  # the same download's folders, each holding its file
        "{dotted}.gz",
    ],
)
def test_load_mnist_reads_common_file_names(tmp_path: Path, layout: str) -> None:
    """Common renamings of the four IDX files load, and the original names win."""
    expected = load_mnist(write_mnist(tmp_path / "flat", 12, 6, gz=False))
    target = tmp_path / "renamed"
    for name in mnist.FILES:
        dotted = name.replace("-idx", ".idx")
        path = target / layout.format(name=name, dotted=dotted)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = (tmp_path / "flat" / name).read_bytes()
        path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    got = load_mnist(target, download=False)
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_array_equal(a, b)


def _test_files_only(source: Path, target: Path) -> Path:
    """``target`` holding only the two t10k files of the MNIST set in ``source``."""
    target.mkdir(parents=True)
    for name in mnist.TEST_FILES:
        found = find_idx(source, name)
        (target / found.name).write_bytes(found.read_bytes())
    return target


def test_psmnist_test_set_reads_the_test_files_alone(tmp_path: Path) -> None:
    """The test set of psmnist_splits, from a folder that holds only the t10k files."""
    write_mnist(tmp_path / "all", 30, 10, size=4, gz=True)
    order = torch.arange(16).flip(0)
    expected = psmnist_splits(tmp_path / "all", val_size=8, order=order)[2]
    alone = _test_files_only(tmp_path / "all", tmp_path / "alone")
    for kwargs in ({"order": order.tolist()}, {"permutation_seed": 3}):
        got = mnist.psmnist_test_set(alone, download=False, **kwargs)
        want = psmnist_splits(tmp_path / "all", val_size=8, **kwargs)[2]
        assert torch.equal(got.pixels, want.pixels) and torch.equal(got.labels, want.labels)
        assert torch.equal(got.order, want.order)
    assert torch.equal(mnist.psmnist_test_set(alone, order=order).pixels, expected.pixels)
    with pytest.raises(DataError, match="MNIST files missing"):
        load_mnist(alone, download=False)  # all four: the training files are not there
    with pytest.raises(ValueError, match="order must be a permutation"):
        mnist.psmnist_test_set(alone, order=torch.arange(15))
    labels = np.arange(10) % 10
    labels[3] = 11
    write_idx(alone / "t10k-labels-idx1-ubyte.gz", labels)
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte.gz: label 11 at index 3 "):
        mnist.psmnist_test_set(alone)


@pytest.mark.parametrize("layout", ["flat", "torchvision"])
def test_psmnist_data_from_a_checkpoint_tests_on_the_test_files_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, layout: str
) -> None:
    """``plmu evaluate`` (a datamodule rebuilt from a checkpoint's ``saved``, then
    ``prepare_data`` and ``setup("test")``) needs only the t10k files: all four were read, and
    the missing training files downloaded (offline: an error), though the permutation comes
    from the checkpoint. A fresh datamodule, or another stage, still needs all four."""
    from plmu.experiments.psmnist import PsMNISTData
    from plmu.training.config import default_config

    write_mnist(tmp_path / "all", 30, 10, size=4, gz=True)
    root = tmp_path / "root"
    _test_files_only(tmp_path / "all", root / "MNIST" / "raw" if layout == "torchvision" else root)
    config = {**default_config("psmnist"), "val_size": 8}
    stored = list(range(16))[::-1]
    downloads = []
    real_download = mnist.download_mnist
    monkeypatch.setattr(
        mnist, "download_mnist", lambda *a, **k: downloads.append(k) or real_download(*a, **k)
    )
    data = PsMNISTData(config, root, {"permutation": stored})
    data.prepare_data()
    data.setup("test")
    data.setup("test")  # again (Lightning's test calls it): nothing more to read
    assert downloads == []
    assert data.train_set is None and data.val_set is None
    expected = psmnist_splits(tmp_path / "all", val_size=8, order=stored)[2]
    assert torch.equal(data.test_set.pixels, expected.pixels)
    assert data.saved_state() == {"permutation": stored}
    assert sum(len(y) for _, y in data.test_dataloader()) == 10
    data.load_state_dict({"permutation": list(range(16))})  # the test set follows the order
    assert torch.equal(data.test_set.order, torch.arange(16)) and data.train_set is None
    old = PsMNISTData(config, root, {})  # a checkpoint that stored no permutation: the seed's
    old.setup("test")
    assert torch.equal(old.test_set.order, permutation(16, config["permutation_seed"]))
    with pytest.raises(DataError, match="could not be downloaded"):
        PsMNISTData(config, root, {"permutation": stored}).setup("fit")  # offline
    with pytest.raises(DataError, match=r"could not be downloaded.*put the four IDX files"):
        PsMNISTData(config, root).prepare_data()  # a fresh run fetches all four
    empty = PsMNISTData(config, tmp_path / "empty", {"permutation": stored})
    with pytest.raises(
        DataError,
        match=r"t10k-images-idx3-ubyte\[\.gz\] is not in .*put "
        r"t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte \(or \.gz\) there",
    ):
        empty.prepare_data()  # offline: the error names the files evaluate needs


def test_a_bad_label_in_torchvisions_layout_names_the_file_read(tmp_path: Path) -> None:
    """The labels file is named where it was read: ``DIR/MNIST/raw/...``, not ``DIR/...``."""
    raw = tmp_path / "MNIST" / "raw"
    write_mnist(raw, 30, 10, size=4)
    labels = np.arange(10) % 10
    labels[2] = 10
    write_idx(raw / "t10k-labels-idx1-ubyte", labels)
    expected = str(raw / "t10k-labels-idx1-ubyte")
    for read in (
        lambda: psmnist_splits(tmp_path, val_size=8, download=False),
        lambda: mnist.psmnist_test_set(tmp_path, download=False),
    ):
        with pytest.raises(DataError, match=rf"^{expected}: label 10 at index 2 "):
            read()

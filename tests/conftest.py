"""Shared test helpers: a float64 NumPy reference of the Legendre memory recurrence, and tiny
data sets in the real formats (MNIST IDX files) written into tmp_path."""

import gzip
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import settings

import plmu

# `make test` (CI) loads "derandomized": the same examples on every run, so a run is reproducible
# and a red CI is a regression, not a new draw; plain `pytest` draws new examples each time.
settings.register_profile("derandomized", derandomize=True)


def reference_memory(u, order, theta, state=None, method="zoh"):
    """Plain float64 recurrence ``m_t = Abar m_{t-1} + Bbar u_t`` in NumPy.

    Args:
        u: ``(batch, time, channels)``; state: ``(batch, channels * order)`` or None.

    Returns:
        ``(batch, time, channels * order)`` float64.
    """
    u = np.asarray(u, dtype=np.float64)
    Bn, T, C = u.shape
    Abar, Bbar = plmu.discretize(*plmu.legendre_delay(order), theta, method=method)
    m = (
        np.zeros((Bn, C, order))
        if state is None
        else np.asarray(state, np.float64).reshape(Bn, C, order)
    )
    out = np.empty((Bn, T, C, order))
    for t in range(T):
        m = m @ Abar.T + u[:, t, :, None] * Bbar[:, 0]
        out[:, t] = m
    return out.reshape(Bn, T, C * order)


def assert_close_to_reference(actual, reference, rel=1e-4):
    """fp32 precision: max |actual - reference| <= rel * max |reference|."""
    actual = actual.detach().double().cpu().numpy() if isinstance(actual, torch.Tensor) else actual
    scale = max(np.abs(reference).max(), 1e-12)
    err = np.abs(actual - reference).max() if reference.size else 0.0
    assert err <= rel * scale, f"max abs error {err:.3g} > {rel:g} * {scale:.3g}"


def assert_same_last_checkpoint(expected_run: Path, found_run: Path) -> None:
    """Two runs' ``checkpoints/last.ckpt`` hold the same step and bit-identical weights,
    optimizer states and LR schedulers' states."""
    expected, found = (
        torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
        for run in (expected_run, found_run)
    )
    assert found["global_step"] == expected["global_step"]
    # the weights bit for bit, and the layers' settings (their _extra_state entries)
    for key in ("state_dict", "optimizer_states", "lr_schedulers"):
        _assert_same(found.get(key), expected.get(key), key)


def crash_at_step(step: int):
    """A Lightning callback that simulates a run killed after ``step`` optimizer steps (a
    ``RuntimeError("simulated crash")`` before the next batch)."""
    import lightning as L

    class CrashAtStep(L.Callback):
        def on_train_batch_start(self, trainer: L.Trainer, *args) -> None:
            if trainer.global_step == step:
                raise RuntimeError("simulated crash")

    return CrashAtStep()


def loader_position(run: Path) -> list[dict]:
    """The training loader's position saved in ``run``'s ``last.ckpt`` (Lightning's fit loop
    state)."""
    saved = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    return saved["loops"]["fit_loop"]["state_dict"]["combined_loader"]


def _assert_same(found, expected, where: str) -> None:
    """Nested dicts/lists of tensors and plain values are equal, tensors bit for bit."""
    if isinstance(expected, torch.Tensor):
        assert isinstance(found, torch.Tensor) and torch.equal(found, expected), where
    elif isinstance(expected, dict):
        assert isinstance(found, dict) and found.keys() == expected.keys(), where
        for key, value in expected.items():
            _assert_same(found[key], value, f"{where}[{key!r}]")
    elif isinstance(expected, (list, tuple)):
        assert isinstance(found, (list, tuple)) and len(found) == len(expected), where
        for i, value in enumerate(expected):
            _assert_same(found[i], value, f"{where}[{i}]")
    else:
        assert found == expected, where


@pytest.fixture(autouse=True)
def _seed_and_one_thread():
    """Seeds, and one torch thread: the tests check numbers, not speed, and on a small shared
    CPU two OpenMP threads made step-by-step loops up to 200x slower (measured here)."""
    torch.manual_seed(0)
    np.random.seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write_idx(path: Path, array: np.ndarray) -> Path:
    """Write ``array`` (uint8) as an IDX file; gzipped when ``path`` ends in ``.gz``."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(n).to_bytes(4, "big") for n in array.shape
    )
    data = header + array.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as stream:
            stream.write(data)
    else:
        path.write_bytes(data)
    return path


def write_mnist(
    directory: Path, n_train: int = 40, n_test: int = 20, size: int = 28, gz: bool = True
) -> Path:
    """A tiny MNIST-format set: class k images are bright in row block k (learnable)."""
    rng = np.random.default_rng(0)

    def images(n: int) -> tuple[np.ndarray, np.ndarray]:
        labels = np.arange(n) % 10
        x = rng.integers(0, 40, size=(n, size, size))
        rows = max(size // 10, 1)
        for i, label in enumerate(labels):
            x[i, label * rows : (label + 1) * rows] = 255
        return x.astype(np.uint8), labels.astype(np.uint8)

    suffix = ".gz" if gz else ""
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        x, y = images(n)
        write_idx(directory / f"{prefix}-images-idx3-ubyte{suffix}", x)
        write_idx(directory / f"{prefix}-labels-idx1-ubyte{suffix}", y)
    return directory


@pytest.fixture
def mnist_dir(tmp_path: Path) -> Path:
    return write_mnist(tmp_path / "mnist", gz=True)


@pytest.fixture
def mnist_plain_dir(tmp_path: Path) -> Path:
    return write_mnist(tmp_path / "mnist-plain", gz=False)


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test reaches the network: downloads fail at once as they would offline."""
    import urllib.error
    import urllib.request

    def refuse(*args, **kwargs):
        raise urllib.error.URLError("network disabled in tests")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)


@pytest.fixture
def read_only_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """``tmp_path / "locked"``, a folder this process may not write into (mode 555; for root,
    who writes anyway, ``os.access`` is made to say so), made writable again afterwards."""
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    if os.access(locked, os.W_OK):  # root writes anyway: make the check see it read-only
        access = os.access
        monkeypatch.setattr(
            os, "access", lambda path, mode: access(path, mode) and Path(path) != locked
        )
    yield locked
    locked.chmod(0o755)

"""The padded frame rows of the block convolutions (plmu.spectral._frames): the transposing pass
of _add_blocks reads a column of frame rows per step, and at a power-of-two FFT length those rows
all fall in one cache set; padded to an odd number of 64-byte lines they spread over all sets."""

import pytest
import torch

from plmu import ParallelLMU, spectral
from plmu.spectral import _frames, _irfft_frames, _row_stride


@pytest.mark.parametrize("n", [1, 15, 16, 1000, 1024, 2048, 7680, 8192])
@pytest.mark.parametrize("itemsize", [4, 8])
def test_row_stride_spans_an_odd_number_of_lines(n, itemsize):
    stride = _row_stride(n, itemsize)
    assert stride >= n
    assert stride * itemsize % 64 == 0 or stride == n  # whole lines, or n itself
    assert (stride * itemsize // 64) % 2 == 1 or stride * itemsize < 64
    assert stride - n < 2 * 64 // itemsize  # at most one line more than needed


def test_frames_are_views_into_padded_rows():
    like = torch.zeros((), dtype=torch.float32)
    f = _frames((2, 3, 5, 2048), like, zero=True)
    assert f.shape == (2, 3, 5, 2048) and f.stride()[-1] == 1
    assert f.stride()[-2] == 2048 + 16  # 128 lines -> 129
    assert torch.count_nonzero(f) == 0
    meta = _frames((5, 2048), torch.zeros((), device="meta"))
    assert meta.stride() == (2048, 1)  # off the CPU: contiguous


@pytest.mark.parametrize("n_fft", [64, 63])
@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128])
def test_irfft_into_frames_equals_irfft(n_fft, dtype):
    X = torch.randn(2, 3, 7, n_fft // 2 + 1, dtype=dtype)
    y = _irfft_frames(X, n_fft)
    assert y.stride()[-2] == _row_stride(n_fft, y.element_size())
    torch.testing.assert_close(y, torch.fft.irfft(X, n=n_fft), rtol=0, atol=0)


@pytest.mark.parametrize("memory_size", [1, 3])
def test_block_convolutions_unchanged(memory_size, monkeypatch):
    """The fused path with padded frames gives the recurrent path's outputs and gradients."""
    calls = []
    frames = spectral._frames
    monkeypatch.setattr(spectral, "_frames", lambda *a, **k: calls.append(a) or frames(*a, **k))
    torch.manual_seed(0)
    kwargs = dict(memory_size=memory_size, return_sequences=True)
    fused = ParallelLMU(2, 5, 8, 30.0, mode="auto", **kwargs).double()
    recurrent = ParallelLMU(2, 5, 8, 30.0, mode="recurrent", **kwargs).double()
    recurrent.load_state_dict(fused.state_dict())
    x = torch.randn(3, 200, 2, dtype=torch.float64)
    grads = []
    for layer in (fused, recurrent):
        y, _ = layer(x)
        y.square().sum().backward()
        grads.append([p.grad for p in layer.parameters()])
    assert len(calls) == 2  # forward and backward through padded frames
    torch.testing.assert_close(fused(x)[0], recurrent(x)[0], rtol=1e-9, atol=1e-10)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-9)

"""``torch.jit.trace`` (also what the TorchScript ONNX exporter runs) records every mode of a
ParallelLMU, with and without a carried state. Traced sizes are 0-dim tensors, not ints: the
FFT length and the free response's doubling used ``int.bit_length`` on them and failed."""

import warnings

import pytest
import torch

import plmu
from plmu.layers import LAYER_MODES


@pytest.mark.parametrize("mode", LAYER_MODES)
@pytest.mark.parametrize("with_state", [False, True])
def test_traced_layer_gives_the_eager_outputs(mode, with_state):
    # order above the recurrent threshold, time above the direct one: "auto" takes the FFT
    layer = plmu.ParallelLMU(2, 5, order=80, theta=100.0, mode=mode).eval()
    x = torch.randn(3, 100, 2)
    args = (x, torch.randn(3, 80)) if with_state else (x,)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(layer, args, check_trace=False)
    other = (torch.randn(3, 100, 2), *args[1:])
    with torch.no_grad():
        expected, expected_state = layer(*other)
        found, found_state = traced(*other)
    torch.testing.assert_close(found, expected)
    torch.testing.assert_close(found_state, expected_state)


@pytest.mark.parametrize("hidden", [1, 5])
def test_trace_after_cached_inference_reads_the_weights(hidden):
    """A trace made after streaming inference has filled the weight-keyed caches (the folded
    kernel, the projected powers) records the weight itself, not the cached values: the traced
    layer follows weights changed afterwards."""
    layer = plmu.ParallelLMU(1, hidden, order=8, theta=20.0).eval()
    x, state = torch.randn(2, 60, 1), torch.randn(2, 8)
    with torch.no_grad():
        layer(x, state)  # fills the caches
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            traced = torch.jit.trace(layer, (x, state), check_trace=False)
        layer.output.weight.mul_(-2.0)
        expected, _ = layer(x, state)
        found, _ = traced(x, state)
    torch.testing.assert_close(found, expected)

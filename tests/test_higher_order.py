"""Gradients of gradients (``create_graph=True``) through the fast paths equal plain autograd.

The fused projection, its kernel fold, the spectral mix and the scalar last-output product have
hand-written first-order backward passes; differentiated again they recompute their forward with
plain operations. Reference: the float64 recurrence (``mode="recurrent"``) and plain autograd.
"""

import contextlib
from unittest import mock

import numpy as np
import pytest
import torch

import plmu
import plmu.spectral


def second_order(fn, tensors, wrt_first):
    """Gradients of ``sum(grad(sum(fn()^2), wrt_first)^2)`` with respect to ``tensors``."""
    out = fn()
    first = torch.autograd.grad((out**2).sum(), wrt_first, create_graph=True)
    penalty = sum((g**2).sum() for g in first)
    return torch.autograd.grad(penalty, tensors, allow_unused=True)


def assert_same(got, ref):
    for a, r in zip(got, ref):
        assert a is not None and r is not None
        np.testing.assert_allclose(a.numpy(), r.numpy(), rtol=1e-8, atol=1e-8 * r.abs().max())


@pytest.mark.parametrize("memory_size", [1, 2])
@pytest.mark.parametrize("horizons", [0.5, 7.0])  # one block, or several overlap-save blocks
@pytest.mark.parametrize("tile", [None, 1])  # whole batch, or one frame a tile
@pytest.mark.parametrize("operators", [False, True])
def test_project_second_order(memory_size, horizons, tile, operators):
    """Also through the tiled kernels' operators, which a ``torch.compile`` graph calls (run
    eagerly here with ``is_compiling`` reporting true, which selects them)."""
    mem = plmu.LegendreMemory(memory_size, 5, 8.0)
    T = max(3, int(horizons * mem.free_horizon(torch.float64)))
    S = memory_size * 5
    u = torch.randn(2, T, memory_size, dtype=torch.float64, requires_grad=True)
    W = torch.randn(3, S, dtype=torch.float64, requires_grad=True)
    s = torch.randn(2, S, dtype=torch.float64, requires_grad=True)
    elements = plmu.spectral.BLOCK_TILE_ELEMENTS if tile is None else tile
    with contextlib.ExitStack() as stack:
        stack.enter_context(mock.patch.object(plmu.spectral, "BLOCK_TILE_ELEMENTS", elements))
        if operators:
            stack.enter_context(mock.patch.object(torch.compiler, "is_compiling", lambda: True))
        blocks = stack.enter_context(
            mock.patch.object(plmu.memory, "_compiled_blocks", wraps=plmu.memory._compiled_blocks)
        )
        got = second_order(lambda: mem.project(u, W, s), (u, W, s), (W, u))
    assert blocks.called == operators
    ref = second_order(lambda: mem(u, s, mode="recurrent")[0] @ W.T, (u, W, s), (W, u))
    assert_same(got, ref)


@pytest.mark.parametrize("memory_size", [1, 3])
def test_fused_layer_second_order_in_parameters(memory_size):
    """A gradient penalty on the parameters, as in WGAN-GP or meta-learning."""
    torch.manual_seed(0)
    layer = plmu.ParallelLMU(
        2, 4, 6, 12.0, memory_size=memory_size, hidden_activation="tanh", mode="fused"
    ).double()
    ref_layer = plmu.ParallelLMU(
        2, 4, 6, 12.0, memory_size=memory_size, hidden_activation="tanh", mode="recurrent"
    ).double()
    ref_layer.load_state_dict(layer.state_dict())
    x = torch.randn(3, 40, 2, dtype=torch.float64)
    params, ref_params = list(layer.parameters()), list(ref_layer.parameters())
    got = second_order(lambda: layer(x)[0], params, params)
    ref = second_order(lambda: ref_layer(x)[0], ref_params, ref_params)
    assert_same(got, ref)


def test_scalar_last_output_second_order_in_parameters():
    """The psMNIST path (one input, last output, data without gradient) differentiated twice."""
    torch.manual_seed(0)
    layer = plmu.ParallelLMU(1, 5, 8, 20.0, return_sequences=False, hidden_activation="tanh")
    layer = layer.double()
    x = torch.randn(3, 30, 1, dtype=torch.float64)
    params = list(layer.parameters())
    got = second_order(lambda: layer(x)[0], params, params)
    # reference: the plain path, which runs when the data needs a gradient too
    xg = x.clone().requires_grad_(True)
    ref = second_order(lambda: layer(xg)[0], params, params)
    assert_same(got, ref)

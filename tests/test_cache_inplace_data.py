"""The weight- and theta-keyed caches see writes into a parameter's ``.data`` in place.

``p.data.mul_(2)`` or ``p.data.copy_(ema)`` bumps no version counter and keeps the data's
address: the caches compare the content the entry was built from instead. Each test checks the
outputs after such a write against a fresh layer loaded with the same ``state_dict``.
"""

import pytest
import torch

import plmu
from plmu.layers import STEP_LOOP_MAX_TIME

WRITES = {
    "mul_": lambda p: p.data.mul_(2.0),
    "copy_": lambda p: p.data.copy_(torch.randn_like(p)),
}


def _fresh(layer: plmu.ParallelLMU, **kwargs) -> plmu.ParallelLMU:
    """A new layer with ``layer``'s arguments and ``state_dict``."""
    fresh = plmu.ParallelLMU(**kwargs).double().eval()
    fresh.load_state_dict(layer.state_dict())
    return fresh


def _stream(layer, x, s, chunk):
    """``layer`` over ``x`` in chunks of ``chunk`` steps, the state carried."""
    outs = []
    for start in range(0, x.shape[1], chunk):
        y, s = layer(x[:, start : start + chunk], s)
        outs.append(y)
    return torch.cat(outs, 1), s


@pytest.mark.parametrize("write", sorted(WRITES))
@pytest.mark.parametrize("memory_size", [1, 2])  # the one-channel and the general folded kernel
@pytest.mark.parametrize("mode", ["auto", "fused"])
@pytest.mark.parametrize("with_state", [False, True])  # with a state: the projected powers
def test_eval_forward_sees_an_output_weight_written_through_data(
    write, memory_size, mode, with_state
):
    kwargs = dict(input_size=2, hidden_size=5, order=8, theta=12.0)
    kwargs.update(memory_size=memory_size, mode=mode)
    layer = plmu.ParallelLMU(**kwargs).double().eval()
    x = torch.randn(3, 40, 2, dtype=torch.float64)
    s = torch.randn(3, 8 * memory_size, dtype=torch.float64) if with_state else None
    with torch.no_grad():
        before = layer(x, s)[0]  # caches the folded kernels (and projected powers)
        WRITES[write](layer.output.weight)
        got = layer(x, s)
        want = _fresh(layer, **kwargs)(x, s)
    assert not torch.allclose(got[0], before)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("write", sorted(WRITES))
@pytest.mark.parametrize("chunk", [STEP_LOOP_MAX_TIME + 1, 30])
def test_streaming_sees_an_output_weight_written_through_data(write, chunk):
    """Chunks carrying the state (the sequence path: longer than ``STEP_LOOP_MAX_TIME``), under
    ``torch.inference_mode`` as ``scripts/profile_streaming.py`` runs them."""
    kwargs = dict(input_size=1, hidden_size=6, order=10, theta=15.0)
    layer = plmu.ParallelLMU(**kwargs).double().eval()
    x = torch.randn(2, 4 * chunk, 1, dtype=torch.float64)
    with torch.inference_mode():
        _stream(layer, x, None, chunk)
        WRITES[write](layer.output.weight)
        got = _stream(layer, x, None, chunk)
        want = _stream(_fresh(layer, **kwargs), x, None, chunk)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("write", sorted(WRITES))
@pytest.mark.parametrize("steps", [STEP_LOOP_MAX_TIME + 1, 40])
def test_trainable_theta_written_through_data_is_seen(write, steps):
    """The memory's kernels (keyed by the theta marker) follow ``log_theta.data`` written in
    place."""
    kwargs = dict(input_size=1, hidden_size=4, order=8, theta=10.0, trainable_theta=True)
    layer = plmu.ParallelLMU(**kwargs).double().eval()
    x = torch.randn(2, steps, 1, dtype=torch.float64)
    s = torch.randn(2, 8, dtype=torch.float64)
    change = {"mul_": lambda p: p.data.mul_(1.25), "copy_": lambda p: p.data.copy_(p + 0.3)}
    with torch.no_grad():
        before = layer(x, s)[0]
        change[write](layer.memory.log_theta)
        got = layer(x, s)
        want = _fresh(layer, **kwargs)(x, s)
    assert not torch.allclose(got[0], before)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_memory_kernel_follows_log_theta_written_through_data():
    memory = plmu.LegendreMemory(1, 6, 9.0, trainable_theta=True).double()
    with torch.no_grad():
        before = memory.kernel(20).clone()
        memory.log_theta.data.add_(0.5)
        got = memory.kernel(20)
    fresh = plmu.LegendreMemory(1, 6, 9.0, trainable_theta=True).double()
    fresh.load_state_dict(memory.state_dict())
    assert not torch.allclose(got, before)
    torch.testing.assert_close(got, fresh.kernel(20).detach(), rtol=1e-12, atol=1e-12)


def test_a_view_of_the_weight_is_compared_where_it_lies():
    """``project`` takes ``W_m``, a strided view of the output weight: a write into the view's
    elements is seen; a write into the other columns (``W_x``) does not change ``W_m``'s
    output."""
    layer = plmu.ParallelLMU(1, 3, 6, 8.0).double().eval()
    memory, W = layer.memory, layer.output.weight
    u = torch.randn(2, 30, 1, dtype=torch.float64)
    with torch.no_grad():
        memory.project(u, W[:, :6])
        W.data[1, 2] += 1.0
        got = memory.project(u, W[:, :6])
        want = memory.project(u, W[:, :6].clone())  # another tensor: built anew
        W.data[:, 6:].mul_(3.0)
        torch.testing.assert_close(memory.project(u, W[:, :6]), want, rtol=0, atol=0)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_an_unchanged_weight_keeps_its_cached_kernel():
    """A hit compares content: the same values written back (or nothing written) keep the
    entry; a single changed bit anywhere in ``W_m`` replaces it."""
    layer = plmu.ParallelLMU(1, 3, 6, 8.0).eval()
    x = torch.randn(2, 30, 1)

    def folded():
        return [v[1] for k, v in layer.memory._cache.items() if k[0] == "folded_1"]

    with torch.no_grad():
        layer(x)
        (first,) = folded()
        layer.output.weight.data.copy_(layer.output.weight.data.clone())
        layer(x)
        assert folded() == [first] and folded()[0] is first
        bits = layer.output.weight.data.view(torch.int32)
        bits[2, 5] ^= 1  # the last bit of the mantissa of the last element of W_m
        layer(x)
        assert len(folded()) == 1 and folded()[0] is not first


@pytest.mark.parametrize("memcmp", [True, False])  # libc's memcmp, or torch.equal without it
def test_unchanged_compares_bits(monkeypatch, memcmp):
    if not memcmp:
        monkeypatch.setattr(plmu.memory, "_MEMCMP", None)
    unchanged, snapshot = plmu.memory._unchanged, plmu.memory._snapshot
    base = torch.tensor([[0.0, float("nan"), 1.0], [2.0, 3.0, 4.0]])
    for t in (base, base[:, :2], base.T, base[:, ::2]):  # dense, a slice, transposed, strided
        snap = snapshot(t)
        assert unchanged(t, snap)
        base[1, 0] = -2.0  # in every view
        assert not unchanged(t, snap)
        base[1, 0] = 2.0
        assert unchanged(t, snap)
    for dtype in (torch.float32, torch.bfloat16, torch.complex64):
        big = torch.zeros(200, 200, dtype=dtype)
        column = big[:, :1]  # a long span, sparse in it: its own elements are copied
        snap = snapshot(column)
        assert snap.shape == (200, 1) and unchanged(column, snap)
        big[0, 1] = 1.0  # not in the view
        assert unchanged(column, snap)
        big[199, 0] = 1.0
        assert not unchanged(column, snap)
    snap = snapshot(base)
    base[0, 0] = -0.0  # equal as a float, not as bits
    assert not unchanged(base, snap)
    assert not unchanged(base.view(torch.int32), snap)  # another dtype
    assert snapshot(base.to("meta")) is None and unchanged(base, None)  # off the CPU: not compared

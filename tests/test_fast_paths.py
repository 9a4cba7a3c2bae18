"""The performance paths added for speed give the same numbers as the plain ones."""

import contextlib
from unittest import mock

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import plmu
import plmu.tracing
from conftest import assert_close_to_reference, reference_memory
from plmu.layers import STEP_LOOP_MAX_TIME
from plmu.legendre import UnstableDiscretizationWarning
from plmu.memory import BLOCK_RATIO
from plmu.spectral import fft_size


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("input_to_output", [True, False])
@pytest.mark.parametrize("activation", ["relu", "tanh", "gelu", "identity"])
def test_folded_inference_step_equals_forward(bias, input_to_output, activation):
    layer = plmu.ParallelLMU(
        2, 6, 10, 25.0, bias=bias, input_to_output=input_to_output, hidden_activation=activation
    ).double()
    x = torch.randn(3, 60, 2, dtype=torch.float64)
    with torch.no_grad():
        y, final = layer(x)
        state, outs = None, []
        for t in range(x.shape[1]):
            y_t, state = layer.step(x[:, t], state)
            outs.append(y_t)
    assert layer._step_cache is not None  # the folded path ran
    np.testing.assert_allclose(torch.stack(outs, 1).numpy(), y.numpy(), atol=1e-10)
    np.testing.assert_allclose(state.numpy(), final.numpy(), atol=1e-10)


@pytest.mark.parametrize("input_to_output", [True, False])
@pytest.mark.parametrize("activation", ["tanh", "gelu", "identity"])
@pytest.mark.parametrize("with_state", [True, False])
@pytest.mark.parametrize("steps", [1, 3, STEP_LOOP_MAX_TIME])
def test_short_inference_chunk_is_a_loop_of_folded_steps(
    input_to_output, activation, with_state, steps
):
    """``forward`` on a chunk of at most ``STEP_LOOP_MAX_TIME`` steps without autograd runs
    ``step``'s folded map a step at a time, with the numbers of the autograd forward; one
    step's lengths (all 1) change nothing."""
    layer = plmu.ParallelLMU(
        3, 5, 9, 12.0, input_to_output=input_to_output, hidden_activation=activation
    ).double()
    x = torch.randn(4, steps, 3, dtype=torch.float64)
    s = torch.randn(4, 9, dtype=torch.float64) if with_state else None
    y, final = layer(x, s)
    lengths = torch.full((4,), steps) if steps == 1 else None
    with torch.no_grad(), mock.patch.object(layer, "step", wraps=layer.step) as step:
        results = [layer(x, s), layer(x, s, lengths=lengths)]
    assert step.call_count == 2 * steps
    for got, state in results:
        assert got.shape == (4, steps, 5) and state.shape == (4, 9)
        torch.testing.assert_close(got, y.detach(), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(state, final.detach(), rtol=1e-12, atol=1e-12)


def test_short_forward_keeps_the_sequence_path_where_the_step_map_does_not_apply():
    """Autograd, dropout in training, several memory channels, half-precision inputs (the
    memory runs those in float32), padded short sequences and chunks longer than
    ``STEP_LOOP_MAX_TIME`` keep the sequence path."""
    x = torch.randn(2, 1, 1)
    longer = torch.randn(2, STEP_LOOP_MAX_TIME + 1, 1)
    padded = (torch.randn(2, 2, 1), torch.tensor([1, 2]))
    cases = [
        (plmu.ParallelLMU(1, 3, 4, 5.0), torch.enable_grad, x, None),
        (plmu.ParallelLMU(1, 3, 4, 5.0, dropout=0.5).train(), torch.no_grad, x, None),
        (plmu.ParallelLMU(1, 3, 4, 5.0, memory_size=2), torch.no_grad, x, None),
        (plmu.ParallelLMU(1, 3, 4, 5.0).bfloat16(), torch.no_grad, x.bfloat16(), None),
        (plmu.ParallelLMU(1, 3, 4, 5.0), torch.no_grad, *padded),
        (plmu.ParallelLMU(1, 3, 4, 5.0), torch.no_grad, longer, None),
    ]
    for layer, context, inputs, lengths in cases:
        with context(), mock.patch.object(layer, "step", wraps=layer.step) as step:
            y, _ = layer(inputs, lengths=lengths)
        assert step.call_count == 0 and y.shape == (2, inputs.shape[1], 3)


@pytest.mark.parametrize("input_to_output", [True, False])
@pytest.mark.parametrize("activation", ["relu", "tanh", "sigmoid", "gelu", "identity"])
def test_fused_inference_forward_equals_training_forward(input_to_output, activation):
    """Without autograd the fused forward adds and activates in place: same numbers."""
    layer = plmu.ParallelLMU(
        1, 5, 12, 30.0, input_to_output=input_to_output, hidden_activation=activation, mode="fused"
    ).double()
    x = torch.randn(2, 3000, 1, dtype=torch.float64)  # several overlap-save blocks
    s = torch.randn(2, 12, dtype=torch.float64)
    assert layer.memory.projection_blocks(3000, torch.float64)[1] < 3000
    y, final = layer(x, s)
    with torch.no_grad():
        y0, final0 = layer(x, s)
    x_before = x.clone()
    with torch.inference_mode():
        y1, _ = layer(x, s)
    assert torch.equal(x, x_before)
    for got in (y0, y1):
        np.testing.assert_allclose(got.numpy(), y.detach().numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(final0.numpy(), final.detach().numpy(), rtol=1e-12, atol=1e-12)


def test_folded_step_follows_weight_updates_and_state_dict():
    layer = plmu.ParallelLMU(1, 4, 8, 20.0).eval()
    other = plmu.ParallelLMU(1, 4, 8, 60.0).eval()
    x, s = torch.randn(2, 1), torch.randn(2, 8)
    with torch.no_grad():
        layer.step(x, s)
        layer.output.weight.mul_(2.0)  # in-place update, like an optimizer step
        expected = layer.hidden_activation(
            layer.output(torch.cat([layer.memory.step(layer.encoder(x), s)[0], x], 1))
        )
        np.testing.assert_allclose(layer.step(x, s)[0].numpy(), expected.numpy(), atol=1e-6)
        layer.load_state_dict(other.state_dict())
        with torch.enable_grad():
            reference = other.step(x, s)  # the plain path
        np.testing.assert_allclose(
            layer.step(x, s)[0].numpy(), reference[0].detach().numpy(), atol=1e-6
        )


@pytest.mark.parametrize("steps", [2, 300])  # the folded step; the folded kernels
@pytest.mark.parametrize("trainable_theta", [False, True])
def test_caches_follow_a_tensor_assigned_to_data(steps, trainable_theta):
    """``p.data = new`` (as ``torch.nn.utils.vector_to_parameters`` does) bumps no version
    counter; the caches see the new data's address (and keep the old data alive, so that
    address cannot come back)."""
    layer = plmu.ParallelLMU(3, 5, 8, 6.0, trainable_theta=trainable_theta).eval()
    x, s = torch.randn(2, steps, 3), torch.randn(2, 8)

    def assign_data():
        layer.output.weight.data = torch.randn_like(layer.output.weight)
        if trainable_theta:
            layer.memory.log_theta.data = layer.memory.log_theta.detach() + 0.5

    def assign_vector():
        vector = torch.nn.utils.parameters_to_vector(layer.parameters())
        torch.nn.utils.vector_to_parameters(0.5 * vector, layer.parameters())

    for change in (assign_data, assign_vector):
        with torch.no_grad():
            before = layer(x, s)[0]  # cached
            change()
            got = layer(x, s)[0]
        want = layer(x, s)[0].detach()  # with autograd: the plain path, no cache
        assert not torch.allclose(got, before)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_step_with_grad_still_differentiable():
    layer = plmu.ParallelLMU(1, 4, 8, 20.0)
    y, _ = layer.step(torch.randn(2, 1))
    y.sum().backward()
    assert layer.output.weight.grad is not None


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("with_state", [True, False])
def test_folded_last_state_equals_memory_last_state(bias, with_state):
    layer = plmu.ParallelLMU(1, 5, 12, 30.0, return_sequences=False, bias=bias).double()
    x = torch.randn(4, 90, 1, dtype=torch.float64)
    s = torch.randn(4, 12, dtype=torch.float64) if with_state else None
    y, m = layer(x, s)
    ref = layer.memory.last_state(layer._encode(x), s)
    np.testing.assert_allclose(m.detach().numpy(), ref.detach().numpy(), atol=1e-10)
    y_ref = layer._readout(ref, x[:, -1])
    np.testing.assert_allclose(y.detach().numpy(), y_ref.detach().numpy(), atol=1e-10)
    (y.sum() + m.sum()).backward()
    grads = [p.grad.clone() for p in layer.parameters()]
    layer.zero_grad()
    (y_ref.sum() + ref.sum()).backward()
    for g, p in zip(grads, layer.parameters()):
        np.testing.assert_allclose(g.numpy(), p.grad.numpy(), atol=1e-9)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("input_to_output", [True, False])
@pytest.mark.parametrize("use_state_output", [True, False])
def test_scalar_last_output_training_form_equals_autograd(bias, input_to_output, use_state_output):
    """The hand-written backward of the psMNIST path gives autograd's gradients (float64)."""
    layer = plmu.ParallelLMU(
        1, 5, 12, 30.0, return_sequences=False, bias=bias, input_to_output=input_to_output
    ).double()
    x = torch.randn(4, 40, 1, dtype=torch.float64)
    y, m = layer(x)
    assert y.grad_fn is not None and "ScalarLastOutput" in type(m.grad_fn).__name__
    ref = layer.memory.last_state(layer._encode(x))
    y_ref = layer._readout(ref, x[:, -1])
    np.testing.assert_allclose(y.detach().numpy(), y_ref.detach().numpy(), atol=1e-12)
    np.testing.assert_allclose(m.detach().numpy(), ref.detach().numpy(), atol=1e-12)
    wy, wm = torch.randn_like(y), torch.randn_like(m)

    def loss(out, state):
        return (out * wy).sum() + ((state * wm).sum() if use_state_output else 0.0)

    loss(y, m).backward()
    grads = [p.grad.clone() for p in layer.parameters()]
    layer.zero_grad()
    loss(y_ref, ref).backward()
    for g, p in zip(grads, layer.parameters()):
        np.testing.assert_allclose(g.numpy(), p.grad.numpy(), atol=1e-10)


def test_scalar_last_output_training_form_gradcheck():
    layer = plmu.ParallelLMU(1, 3, 6, 15.0, return_sequences=False).double()
    x = torch.randn(2, 20, 1, dtype=torch.float64)
    params = [layer.encoder.weight, layer.encoder.bias, layer.output.weight, layer.output.bias]

    def f(e, b_u, w, b):
        weights = {"encoder.weight": e, "encoder.bias": b_u, "output.weight": w, "output.bias": b}
        return torch.func.functional_call(layer, weights, (x,))

    assert torch.autograd.gradcheck(f, [p.detach().clone().requires_grad_() for p in params])


def test_folded_last_state_several_channels():
    layer = plmu.ParallelLMU(2, 5, 6, 30.0, memory_size=3, return_sequences=False).double()
    x = torch.randn(4, 50, 2, dtype=torch.float64)
    y, m = layer(x)
    ref = layer.memory.last_state(layer._encode(x))
    np.testing.assert_allclose(m.detach().numpy(), ref.detach().numpy(), atol=1e-10)
    np.testing.assert_allclose(
        y.detach().numpy(), layer._readout(ref, x[:, -1]).detach().numpy(), atol=1e-10
    )


def test_free_horizon_is_where_powers_vanish():
    mem = plmu.LegendreMemory(1, 16, 40.0)
    h = mem.free_horizon(torch.float32)
    assert h is not None and 40 < h < 1000
    Abar = mem.Abar
    tol = torch.finfo(torch.float32).eps * 1e-6
    assert torch.linalg.matrix_norm(torch.linalg.matrix_power(Abar, h)) <= tol
    assert torch.linalg.matrix_norm(torch.linalg.matrix_power(Abar, h - 2)) > tol
    # an unstable discretisation never decays: nothing is truncated
    with pytest.warns(UnstableDiscretizationWarning):
        unstable = plmu.LegendreMemory(1, 16, 2.0, discretizer="euler")
    assert unstable.free_horizon(torch.float32) is None


@pytest.mark.parametrize("memory_size", [1, 3])
def test_long_stream_in_chunks_with_truncated_free_response(memory_size):
    """Chunks far longer than the free-response horizon: still equal to the recurrence."""
    mem = plmu.LegendreMemory(memory_size, 8, 30.0)
    u = torch.randn(2, 1500, memory_size, dtype=torch.float64)
    ref = reference_memory(u, 8, 30.0)
    W = torch.randn(4, memory_size * 8, dtype=torch.float64)
    parts, state = [], None
    for start in range(0, 1500, 500):
        chunk = u[:, start : start + 500]
        parts.append(mem.project(chunk, W, state))
        _, state = mem(chunk, state, mode="fft")
    assert mem.free_horizon(torch.float64) < 500
    assert_close_to_reference(torch.cat(parts, 1), ref @ W.numpy().T, 1e-9)
    assert_close_to_reference(state, ref[:, -1], 1e-9)


@pytest.mark.parametrize("memory_size", [1, 2])
@pytest.mark.parametrize("blocks", ["whole", 3, 5, "none"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_free_response_projected_or_from_the_trajectory(memory_size, blocks, dtype):
    """A carried state's projected free response, from cached ``W Abar^(r+1)`` (blocks of up to
    the free horizon, or of 3 or 5 steps: every 3rd or 5th state projected) or from the state's
    trajectory (no cache, or a weight recording a gradient), equals the recurrence: chunks
    shorter and longer than the free horizon, with and without gradients."""
    mem = plmu.LegendreMemory(memory_size, 6, 12.0)
    h = mem.free_horizon(dtype)
    S = memory_size * 6
    state = torch.randn(2, S, dtype=dtype)
    projected = blocks != "none"
    limit = {"whole": 1 << 30, "none": 0}.get(blocks, blocks * 3 * S)  # 3 outputs
    for T in (3, h - 1, 4 * h + 5):
        u = torch.randn(2, T, memory_size, dtype=dtype)
        W = torch.randn(3, S, dtype=dtype)
        ref = reference_memory(u, 6, 12.0, state) @ W.double().numpy().T
        rel = 1e-4 if dtype == torch.float32 else 1e-9
        with mock.patch.object(plmu.memory, "FREE_PROJECTED_MAX_ELEMENTS", limit):
            with torch.no_grad():
                assert_close_to_reference(mem.project(u, W, state), ref, rel)
            cached = any(key[0] == "projected_powers" for key in mem._cache)
            assert cached == projected  # the path under test was taken
            assert_close_to_reference(mem.project(u, W, state), ref, rel)  # no grad required
            Wg = W.clone().requires_grad_()  # a gradient for W: never from the cache
            sg = state.clone().requires_grad_()
            y = mem.project(u, Wg, sg)
            assert_close_to_reference(y, ref, rel)
            gW, gs = torch.autograd.grad(y.sum(), (Wg, sg))
        ref_y = mem(u, sg, mode="recurrent")[0] @ Wg.T
        ref_gW, ref_gs = torch.autograd.grad(ref_y.sum(), (Wg, sg))
        torch.testing.assert_close(gW, ref_gW, rtol=rel, atol=rel * ref_gW.abs().max())
        torch.testing.assert_close(gs, ref_gs, rtol=rel, atol=rel * ref_gs.abs().max())


def test_projected_powers_follow_the_weight():
    """The cached ``W Abar^t`` is rebuilt when the weight changes in place or is another tensor,
    and the free response in a stream of chunks stays equal to the recurrence."""
    layer = plmu.ParallelLMU(1, 1, 8, 20.0).double().eval()
    assert layer.memory.free_horizon(torch.float64) * layer.state_size <= (
        plmu.memory.FREE_PROJECTED_MAX_ELEMENTS
    )
    x = torch.randn(1, 300, 1, dtype=torch.float64)

    def stream() -> torch.Tensor:
        parts, state = [], None
        for s in range(0, 300, 50):
            y, state = layer(x[:, s : s + 50], state)
            parts.append(y)
        return torch.cat(parts, 1)

    with torch.inference_mode():
        for _ in range(2):
            torch.testing.assert_close(stream(), layer(x)[0])
            with torch.no_grad():
                layer.output.weight.mul_(-0.5)  # in place: a new version
        layer.output.weight = torch.nn.Parameter(torch.randn_like(layer.output.weight))
        torch.testing.assert_close(stream(), layer(x)[0])


def test_free_response_without_gradient_equals_with():
    """The doubling of a state's trajectory writes into one buffer when no gradient is recorded;
    the same numbers as the concatenating form that records one."""
    mem = plmu.LegendreMemory(2, 6, 12.0)
    state = torch.randn(3, 12, dtype=torch.float64)
    for length in (1, 2, 5, 64, 100):
        with torch.no_grad():
            plain = mem.free_response(state, length)
        graded = mem.free_response(state.clone().requires_grad_(), length)
        torch.testing.assert_close(plain, graded.detach(), rtol=0, atol=0)


@pytest.mark.parametrize("grad", [False, True])
def test_free_response_under_forward_ad_and_vmap(grad):
    """The buffer the doubling writes into (``out=``) takes neither a forward-mode tangent nor a
    ``vmap`` batch: ``torch.func.jvp``, ``torch.autograd.forward_ad`` and ``torch.func.vmap``
    of a carried state's response (``free_response``, a state through ``forward``, and
    ``last_state`` with lengths) give the linear map's numbers, with autograd on or off."""
    import torch.autograd.forward_ad as fwAD

    mem = plmu.LegendreMemory(2, 6, 12.0)
    u = torch.randn(3, 30, 2, dtype=torch.float64)
    state, tangent = torch.randn(2, 3, 12, dtype=torch.float64)
    lengths = torch.tensor([30, 11, 2])
    for fn in (
        lambda s: mem.free_response(s, 40),
        lambda s: mem(u, s, mode="fft")[0],
        lambda s: mem.last_state(u, s, lengths),
    ):
        zero = fn(torch.zeros_like(state))  # the response is affine in the state
        with torch.set_grad_enabled(grad):
            _, jvp = torch.func.jvp(fn, (state,), (tangent,))
            with fwAD.dual_level():
                dual = fwAD.unpack_dual(fn(fwAD.make_dual(state, tangent))).tangent
            batched = torch.func.vmap(fn)(torch.stack([state, tangent]))
        expected = fn(tangent) - zero
        for got in (jvp, dual, batched[1] - zero):
            torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(batched[0], fn(state), rtol=1e-9, atol=1e-9)


def test_weight_with_a_tangent_never_comes_from_the_cache():
    """A weight carrying a forward-mode tangent at the address, version and base of a cached
    one (``make_dual`` of the weight itself): the cached folded kernel and projected powers hold
    no tangent, so forward AD through ``project`` must not take them and silently drop the
    weight's tangent. ``project`` is linear in the weight, so the tangent is ``project`` of the
    weight's tangent."""
    import torch.autograd.forward_ad as fwAD

    mem = plmu.LegendreMemory(1, 6, 12.0)
    u = torch.randn(2, 30, 1, dtype=torch.float64)
    state = torch.randn(2, 6, dtype=torch.float64)
    W, tangent = torch.randn(2, 1, 6, dtype=torch.float64)
    with torch.no_grad():
        expected = mem.project(u, tangent, state)
    for warm in (False, True):
        if warm:
            with torch.no_grad():
                mem.project(u, W, state)  # caches the folded kernel and projected powers
        with fwAD.dual_level():
            got = fwAD.unpack_dual(mem.project(u, fwAD.make_dual(W, tangent), state)).tangent
        assert got is not None
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("hidden", [1, 3])
@pytest.mark.parametrize("memory_size", [1, 2])
@pytest.mark.parametrize("projected", [True, False])  # cached powers, or the state's trajectory
def test_stream_in_uneven_chunks_mixing_autograd_modes(hidden, memory_size, projected):
    """A stream in chunks of many lengths (1, around the free horizon and the block length),
    each under ``inference_mode``, ``no_grad`` or autograd in turn (caches built in one mode
    used in the others), equals one call; the cache stays bounded."""
    layer = plmu.ParallelLMU(2, hidden, 6, 10.0, memory_size=memory_size).double().eval()
    h = layer.memory.free_horizon(torch.float64)
    sizes = [1, h - 1, h, h + 1, 1, 3 * h + 1, 2, 7 * h, 5, 4 * h - 3]
    x = torch.randn(2, sum(sizes), 2, dtype=torch.float64)
    state0 = torch.randn(2, layer.state_size, dtype=torch.float64)
    with torch.inference_mode():
        expected, expected_state = layer(x, state0)
    contexts = (torch.inference_mode, torch.no_grad, torch.enable_grad)
    layer.memory._cache.clear()  # built by the one call
    parts, state, start = [], state0, 0
    limit = plmu.memory.FREE_PROJECTED_MAX_ELEMENTS if projected else 0
    with mock.patch.object(plmu.memory, "FREE_PROJECTED_MAX_ELEMENTS", limit):
        for i, size in enumerate(sizes):
            with contexts[i % 3]():
                y, state = layer(x[:, start : start + size], state.clone())
            parts.append(y.detach().clone())
            state, start = state.detach().clone(), start + size
    assert any(key[0] == "projected_powers" for key in layer.memory._cache) == projected
    torch.testing.assert_close(torch.cat(parts, 1), expected, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(state, expected_state, rtol=1e-9, atol=1e-9)
    with torch.no_grad(), mock.patch.object(plmu.memory, "CACHE_MAX_ENTRIES", 64):
        for size in range(1, 200):
            layer(x[:, :size], state)
    assert len(layer.memory._cache) <= 64


@pytest.mark.parametrize("memory_size", [1, 2])
def test_frozen_weight_state_gradient_through_cached_projected_powers(memory_size):
    """A weight recording no gradient and a state that does: the projected free response comes
    from the cache (built under ``inference_mode``) and its gradient in the state and the input
    equals the recurrence's, over several overlap-save blocks."""
    mem = plmu.LegendreMemory(memory_size, 6, 12.0)
    S = memory_size * 6
    T = 4 * mem.free_horizon(torch.float64) + 3
    W = torch.randn(2, S, dtype=torch.float64)
    u = torch.randn(3, T, memory_size, dtype=torch.float64, requires_grad=True)
    state = torch.randn(3, S, dtype=torch.float64, requires_grad=True)
    with torch.inference_mode():
        mem.project(u.detach(), W, state.detach())
    assert any(key[0] == "projected_powers" for key in mem._cache)
    y = mem.project(u, W, state)
    ref = mem(u, state, mode="recurrent")[0] @ W.T
    torch.testing.assert_close(y, ref, rtol=1e-9, atol=1e-9)
    g = torch.randn_like(y)
    got = torch.autograd.grad(y, (u, state), g)
    for a, b in zip(got, torch.autograd.grad(ref, (u, state), g)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9 * b.abs().max())


@settings(max_examples=15, deadline=None)
@given(
    batch=st.integers(1, 2),
    memory_size=st.integers(1, 3),
    order=st.integers(1, 8),
    theta=st.floats(2.0, 12.0),
    horizons=st.floats(1.0, 12.0),
    with_state=st.booleans(),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    group_blocks=st.sampled_from([1, 2]),
)
def test_fused_projection_in_blocks_equals_recurrence(
    batch, memory_size, order, theta, horizons, with_state, dtype, group_blocks
):
    """Sequences many free-response horizons long run in overlap-save blocks, exactly."""
    mem = plmu.LegendreMemory(memory_size, order, theta)
    h = mem.free_horizon(dtype)
    T = max(2, int(horizons * h))
    kernel_length, block = mem.projection_blocks(T, dtype)
    assert kernel_length == min(T, h) and (block < T) == (BLOCK_RATIO * h < T)
    u = torch.randn(batch, T, memory_size, dtype=dtype)
    state = torch.randn(batch, memory_size * order, dtype=dtype) if with_state else None
    W = torch.randn(4, memory_size * order, dtype=dtype)
    ref = reference_memory(u, order, theta, state) @ W.double().numpy().T
    rel = 1e-4 if dtype == torch.float32 else 1e-9
    assert_close_to_reference(mem.project(u, W, state), ref, rel)
    # added in place, block by block, to a given output
    acc = torch.randn(batch, T, 4, dtype=dtype)
    out = mem.project(u, W, state, accumulate=acc.clone())
    total = acc.double().numpy() + ref  # (out - acc would cancel acc's rounding in float32)
    assert_close_to_reference(out, total, rel)
    # in tiles of one or two frames (batch element x block)
    tile = int(group_blocks * 4 * fft_size(sum(mem.projection_blocks(T, dtype)) - 1))
    with mock.patch.object(plmu.spectral, "BLOCK_TILE_ELEMENTS", tile):
        out = mem.project(u, W, state, accumulate=acc.clone())
    assert_close_to_reference(out, total, rel)


@pytest.mark.parametrize("memory_size", [1, 2])
@pytest.mark.parametrize("tile", ["all", 1, 2, "row"])
def test_project_accumulate_is_checked_and_differentiable(memory_size, tile):
    """Gradients through the tiled block convolution (frames a tile: all, 1, 2, one row)."""
    mem = plmu.LegendreMemory(memory_size, 6, 10.0)
    T = 8 * mem.free_horizon(torch.float64) + 3
    S = memory_size * 6
    u = torch.randn(2, T, memory_size, dtype=torch.float64, requires_grad=True)
    W = torch.randn(4, S, dtype=torch.float64, requires_grad=True)
    s = torch.randn(2, S, dtype=torch.float64, requires_grad=True)
    with pytest.raises(ValueError, match="accumulate"):
        mem.project(u, W, accumulate=torch.zeros(2, T, 5, dtype=torch.float64))
    b = torch.randn(4, dtype=torch.float64, requires_grad=True)
    g = torch.randn(2, T, 4, dtype=torch.float64)
    kernel_length, block = mem.projection_blocks(T, torch.float64)
    n_blocks = -(-T // block)
    assert n_blocks > 2
    frames = {"all": 2 * n_blocks, "row": n_blocks}.get(tile, tile)
    elements = frames * 4 * fft_size(kernel_length + block - 1)
    with mock.patch.object(plmu.spectral, "BLOCK_TILE_ELEMENTS", elements):
        y = mem.project(u, W, s, accumulate=b.expand(2, T, 4) * 1.0)
        got = torch.autograd.grad((y * g).sum(), (u, W, s, b))
    ref_y = mem(u, s, mode="recurrent")[0] @ W.T + b
    ref = torch.autograd.grad((ref_y * g).sum(), (u, W, s, b))
    for a, r in zip(got, ref):
        np.testing.assert_allclose(a.numpy(), r.numpy(), rtol=1e-9, atol=1e-9 * r.abs().max())


def test_frame_tiles_cover_every_frame_once():
    from plmu.spectral import _frame_tiles

    cpu = torch.device("cpu")
    # (Bn, nb, per_frame, limit, tiles): several tiles each but the last (so a patch of the
    # limit that stopped applying, leaving one tile for everything, fails the count)
    cases = [(5, 3, 10, 40, 5), (5, 3, 10, 20, 10), (2, 7, 10, 30, 6), (3, 1, 9, 1, 3)]
    cases += [(4, 3, 10, 60, 2), (2, 3, 10, 60, 1)]
    for Bn, nb, per_frame, limit, count in cases:
        with mock.patch.object(plmu.spectral, "BLOCK_TILE_ELEMENTS", limit):
            tiles = _frame_tiles(Bn, nb, per_frame, cpu)
        assert len(tiles) == count, (Bn, nb, per_frame, limit, tiles)
        seen = [(b, k) for b0, b1, k0, k1 in tiles for b in range(b0, b1) for k in range(k0, k1)]
        assert sorted(seen) == [(b, k) for b in range(Bn) for k in range(nb)]
        assert all(
            (b1 - b0) * (k1 - k0) * per_frame <= max(limit, per_frame) for b0, b1, k0, k1 in tiles
        )
    # CUDA: one tile (no page faults to avoid; a launch per tile would cost more)
    assert _frame_tiles(5, 3, 10, torch.device("cuda")) == [(0, 5, 0, 3)]


def test_fused_projection_in_blocks_gradients():
    mem = plmu.LegendreMemory(3, 6, 10.0)
    T = 7 * mem.free_horizon(torch.float64) + 5
    assert mem.projection_blocks(T, torch.float64)[1] < T  # several blocks
    u = torch.randn(2, T, 3, dtype=torch.float64, requires_grad=True)
    W = torch.randn(4, 18, dtype=torch.float64, requires_grad=True)
    g = torch.randn(2, T, 4, dtype=torch.float64)
    grads = torch.autograd.grad((mem.project(u, W) * g).sum(), (u, W))
    ref = torch.autograd.grad(((mem(u, mode="recurrent")[0] @ W.T) * g).sum(), (u, W))
    for a, b in zip(grads, ref):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-9, atol=1e-9 * b.abs().max())


@pytest.mark.parametrize("input_size", [1, 2])
def test_last_state_reads_only_the_last_horizon(input_size):
    """Eq. 25 past the free-response horizon uses only the last h inputs, exactly."""
    # one input on one channel: the scalar path; two on two: the folded-encoder path
    layer = plmu.ParallelLMU(
        input_size, 5, 6, 10.0, memory_size=input_size, return_sequences=False
    ).double()
    mem = layer.memory
    h = mem.free_horizon(torch.float64)
    T = 4 * h + 3
    assert mem.last_window(T, torch.float64) == h
    x = torch.randn(3, T, input_size, dtype=torch.float64)
    state = torch.randn(3, layer.state_size, dtype=torch.float64)
    lengths = torch.tensor([T, T - 7, h // 2])
    u = layer._encode(x).detach()
    ref = reference_memory(u, 6, 10.0, state)
    for s in (None, state):
        ref_s = reference_memory(u, 6, 10.0, s)
        assert_close_to_reference(mem.last_state(u, s), ref_s[:, -1], 1e-9)
        _, m = layer(x, s)
        assert_close_to_reference(m, ref_s[:, -1], 1e-9)
    m_len = mem.last_state(u, state, lengths)
    expected = np.stack([ref[i, int(n) - 1] for i, n in enumerate(lengths)])
    assert_close_to_reference(m_len, expected, 1e-9)


@pytest.mark.parametrize("memory_size", [1, 2])
@pytest.mark.parametrize("accumulate", [False, True])
@pytest.mark.parametrize("grad", [False, True])
@pytest.mark.parametrize("graph", ["export", "compile"])
def test_graph_projection_equals_eager(memory_size, accumulate, grad, graph):
    """The paths that ``project`` takes in a graph give the eager numbers and gradients:
    several overlap-save blocks, a carried state, with and without an output to add to. Under
    ``torch.export`` whole-tensor operations with plain autograd; under ``torch.compile`` the
    tiled kernels as operators (``plmu::block_synthesis``, ...) with their hand-written
    backwards. Run eagerly here with ``is_compiling`` (and ``is_exporting``) reporting true,
    which selects exactly that branch."""
    if graph == "export" and plmu.tracing._is_exporting is None:
        pytest.skip("torch < 2.7 has no torch.compiler.is_exporting")
    mem = plmu.LegendreMemory(memory_size, 6, 10.0)
    T = 7 * mem.free_horizon(torch.float64) + 5
    assert mem.projection_blocks(T, torch.float64)[1] < T
    S = memory_size * 6
    u = torch.randn(2, T, memory_size, dtype=torch.float64, requires_grad=grad)
    W = torch.randn(4, S, dtype=torch.float64, requires_grad=grad)
    s = torch.randn(2, S, dtype=torch.float64)
    base = torch.randn(2, T, 4, dtype=torch.float64)
    g = torch.randn(2, T, 4, dtype=torch.float64)

    def run():
        y = mem.project(u, W, s, accumulate=base.clone() if accumulate else None)
        return y, (torch.autograd.grad((y * g).sum(), (u, W)) if grad else ())

    eager, eager_grads = run()
    with contextlib.ExitStack() as stack:
        stack.enter_context(mock.patch.object(torch.compiler, "is_compiling", lambda: True))
        exporting = graph == "export"
        stack.enter_context(mock.patch.object(plmu.tracing, "_is_exporting", lambda: exporting))
        blocks = stack.enter_context(
            mock.patch.object(plmu.memory, "_compiled_blocks", wraps=plmu.memory._compiled_blocks)
        )
        whole, whole_grads = run()
    assert blocks.called == (graph == "compile")
    ref = reference_memory(u.detach(), 6, 10.0, s) @ W.detach().numpy().T
    assert_close_to_reference(whole.detach() - (base if accumulate else 0), ref, 1e-9)
    for a, b in zip((whole, *whole_grads), (eager, *eager_grads)):
        np.testing.assert_allclose(a.detach().numpy(), b.detach().numpy(), rtol=1e-9, atol=1e-9)


# ------------------------------------------------------------------------------ kernel caches


@pytest.mark.parametrize("mode", ["auto", "fused", "fft", "direct", "chunked", "recurrent"])
@pytest.mark.parametrize("return_sequences", [True, False])
def test_training_after_an_inference_mode_call(mode, return_sequences):
    """Kernels first cached under ``torch.inference_mode`` (Lightning's validate/test/predict)
    are normal tensors: later calls that record a gradient can save them for backward."""
    layer = plmu.ParallelLMU(1, 5, 8, 20.0, mode=mode, return_sequences=return_sequences).double()
    x = torch.randn(2, 40, 1, dtype=torch.float64)
    state = torch.randn(2, 8, dtype=torch.float64)
    with torch.inference_mode():
        expected, _ = layer(x, state)
        layer(x)
    layer.requires_grad_(False)  # frozen weights: the folded kernel comes from the cache too
    x_grad = x.clone().requires_grad_(True)
    y, final = layer(x_grad, state)
    (y.sum() + final.sum()).backward()
    assert x_grad.grad is not None
    layer.requires_grad_(True)
    y, final = layer(x, state)
    (y.sum() + final.sum()).backward()
    assert layer.output.weight.grad is not None
    np.testing.assert_allclose(y.detach().numpy(), expected.numpy(), atol=1e-12)


@pytest.mark.parametrize("mode", ["fused", "fft", "recurrent"])
def test_inference_follows_trainable_theta_updates(mode):
    """An optimizer step on ``log_theta`` between two calls without autograd: the second call
    uses the new theta, also in the fused path's folded kernel."""
    layer = plmu.ParallelLMU(2, 5, 6, 15.0, memory_size=2, trainable_theta=True, mode=mode).double()
    x = torch.randn(2, 40, 2, dtype=torch.float64)
    state = torch.randn(2, 12, dtype=torch.float64)
    for _ in range(2):
        with torch.no_grad():
            y, final = layer(x, state)
        expected, expected_final = layer(x, state)  # autograd on: nothing comes from a cache
        np.testing.assert_allclose(y.numpy(), expected.detach().numpy(), atol=1e-12)
        np.testing.assert_allclose(final.numpy(), expected_final.detach().numpy(), atol=1e-12)
        with torch.no_grad():
            layer.memory.log_theta.add_(0.5)


class _Step(torch.nn.Module):
    """``layer.step`` as a module's forward, for ``torch.func.functional_call``."""

    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def forward(self, x, state):
        return self.layer.step(x, state)


@pytest.mark.parametrize("trainable_theta", [False, True])
def test_caches_follow_tensors_swapped_in_by_functional_call(trainable_theta):
    """``torch.func.functional_call`` with new weights each call (ensembles, hypernetworks):
    a new tensor must not get the kernels of an older one, even at the same address with the
    same version (here every tensor wraps one NumPy buffer, so the address is always reused)."""
    from torch.func import functional_call

    layer = plmu.ParallelLMU(1, 4, 8, 20.0, trainable_theta=trainable_theta).eval()
    x, s = torch.randn(2, 30, 1), torch.randn(2, 8)
    weight, bias = np.zeros((4, 9), np.float32), np.zeros(4, np.float32)
    log_theta = np.zeros((), np.float32)
    rng = np.random.default_rng(0)
    for _ in range(3):
        weight[:], bias[:] = rng.standard_normal(weight.shape), rng.standard_normal(4)
        log_theta[...] = rng.uniform(2.0, 4.0)
        params = {"output.weight": torch.from_numpy(weight), "output.bias": torch.from_numpy(bias)}
        if trainable_theta:
            params["memory.log_theta"] = torch.from_numpy(log_theta)
        # the step's cache also checks the weights' identity: swap the others alone there
        step_params = {f"layer.{k}": v for k, v in params.items() if k != "output.weight"}
        with torch.no_grad():  # cached kernels: the fused forward and the folded step
            y, _ = functional_call(layer, params, (x, s))
            y_t, _ = functional_call(_Step(layer), step_params, (x[:, 0], s))
        with torch.enable_grad():  # the plain paths
            layer.mode = "recurrent"
            expected, _ = functional_call(layer, params, (x, s))
            layer.mode = "auto"
            expected_t, _ = functional_call(
                _Step(layer), step_params, (x[:, 0], s.requires_grad_())
            )
        np.testing.assert_allclose(y.numpy(), expected.detach().numpy(), atol=1e-5)
        np.testing.assert_allclose(y_t.numpy(), expected_t.detach().numpy(), atol=1e-5)


@pytest.mark.parametrize("grad", [True, False])
@pytest.mark.parametrize("steps", [3, 150])  # one block; overlap-save blocks
def test_state_of_another_dtype_is_cast_to_the_input_in_the_fused_path(grad, steps):
    """A float32 state with float64 inputs: like every other path the fused projection works
    in the input's dtype (it formed the projected free response in float32, errors ~1e-8)."""
    layer = plmu.ParallelLMU(2, 3, 6, 3.0, mode="fused").double()
    x = torch.randn(2, steps, 2, dtype=torch.float64)
    state = torch.randn(2, 6)
    with torch.set_grad_enabled(grad):
        y, final = layer(x, state)
        expected, expected_final = layer(x, state.double())
    assert y.dtype == final.dtype == torch.float64
    torch.testing.assert_close(y, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(final, expected_final, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("grad", [True, False])
@pytest.mark.parametrize("memory_size", [1, 2])
def test_ordinary_calls_use_the_fast_functions(memory_size, grad):
    """Outside transforms, forward-mode AD and compilation ``plain_autograd`` is false: the
    fused path runs its custom Functions (tiled FFTs with hand-written backwards), and the
    classifier's last output its three-GEMM Function, not the whole-tensor fallback."""
    from plmu import layers, memory, spectral

    fast = (
        ["_FoldedKernel", "_BlockConvolution"]
        if memory_size == 1
        else ["_FoldedKernel", "_SpectralMix", "_BlockSynthesis"]
    )
    layer = plmu.ParallelLMU(3, 8, 16, 30.0, memory_size=memory_size)
    clf = plmu.ParallelLMU(1, 8, 16, 30.0, return_sequences=False)
    x, s = torch.randn(4, 300, 3), torch.randn(4, 16 * memory_size)
    answers, original = [], memory.plain_autograd

    def plain_autograd(*tensors):
        answers.append(original(*tensors))
        return answers[-1]

    with contextlib.ExitStack() as stack:
        calls = {
            n: stack.enter_context(mock.patch.object(f, "apply", wraps=f.apply))
            for n, f in [(n, getattr(spectral, n)) for n in fast]
            + [("last", layers._ScalarLastOutput)]
        }
        for module in (memory, spectral, layers):
            stack.enter_context(mock.patch.object(module, "plain_autograd", plain_autograd))
        with torch.set_grad_enabled(grad):
            y, state = layer(x, s)
            out, _ = clf(torch.randn(4, 100, 1))
            if grad:
                (y.square().sum() + state.sum() + out.sum()).backward()
    for name in fast:
        assert calls[name].call_count == 1, name
    assert calls["last"].call_count == (1 if grad else 0)
    assert answers and not any(answers)

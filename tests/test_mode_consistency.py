"""Every execution mode and path of the core layers behaves the same on the same call: the same
errors, dtypes and values (the sequence modes, the fused projection, the short-chunk step loop,
the last-state product, ``step``; with and without autograd)."""

import contextlib
import itertools

import pytest
import torch

import plmu
from plmu.layers import LAYER_MODES, STEP_LOOP_MAX_TIME
from plmu.memory import MODES

# every length class: the step loop's (1 and STEP_LOOP_MAX_TIME), the fused path's and the
# sequence modes' short (Toeplitz) and long ones
LENGTHS = (1, STEP_LOOP_MAX_TIME, STEP_LOOP_MAX_TIME + 1, 80)
CONTEXTS = {
    "autograd": contextlib.nullcontext,
    "no_grad": torch.no_grad,
    "inference_mode": torch.inference_mode,
}


@pytest.mark.parametrize("context", CONTEXTS)
@pytest.mark.parametrize("mode", LAYER_MODES)
@pytest.mark.parametrize(
    ("layer_dtype", "x_dtype"), [("float32", "float64"), ("float64", "float32")]
)
def test_input_of_another_dtype_than_the_layer_is_an_error_on_every_path(
    context, mode, layer_dtype, x_dtype
):
    """Like ``nn.Linear``, a layer takes inputs of its weights' dtype: any other is a
    ``TypeError`` naming the argument, in every mode, length, output form and grad mode (the
    step loop of short chunks without autograd computed in the input's dtype instead)."""
    layer_dtype, x_dtype = getattr(torch, layer_dtype), getattr(torch, x_dtype)
    for return_sequences in (True, False):
        layer = plmu.ParallelLMU(1, 5, 8, 10.0, mode=mode, return_sequences=return_sequences)
        layer.to(layer_dtype)
        for T in LENGTHS:
            x = torch.randn(2, T, 1, dtype=x_dtype)
            with CONTEXTS[context](), pytest.raises(TypeError, match=r"^x must have the layer"):
                layer(x)
        with CONTEXTS[context]():
            layer.step(torch.randn(2, 1, dtype=layer_dtype))  # a warm step cache changes nothing
        with CONTEXTS[context](), pytest.raises(TypeError, match=r"^x_t must have the layer"):
            layer.step(torch.randn(2, 1, dtype=x_dtype))
    lmu = plmu.LMU(1, 5, 8, 10.0).to(layer_dtype)
    with CONTEXTS[context](), pytest.raises(TypeError, match=r"^x must have the layer"):
        lmu(torch.randn(2, 3, 1, dtype=x_dtype))
    with CONTEXTS[context](), pytest.raises(TypeError, match=r"^x_t must have the layer"):
        lmu.cell(torch.randn(2, 1, dtype=x_dtype))


@pytest.mark.parametrize("which", ["encoder", "output"])
def test_parametrized_weights_step_and_short_chunks_without_autograd(which):
    """A parametrized weight (``weight_norm``: no plain ``weight`` parameter) gives ``step`` and
    the short-chunk step loop without autograd the autograd numbers (they raised a KeyError),
    and a change of the parametrization's parameters reaches them (nothing stale is cached)."""
    layer = plmu.ParallelLMU(2, 4, 6, 10.0).double().eval()
    torch.nn.utils.parametrizations.weight_norm(getattr(layer, which))
    x = torch.randn(3, STEP_LOOP_MAX_TIME, 2, dtype=torch.float64)
    for _ in range(2):
        y, final = layer(x)
        with torch.no_grad():
            y_loop, final_loop = layer(x)
            y_step, _ = layer.step(x[:, 0])
        torch.testing.assert_close(y_loop, y.detach(), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(final_loop, final.detach(), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(y_step, y[:, 0].detach(), rtol=1e-12, atol=1e-12)
        with torch.no_grad():
            getattr(layer, which).parametrizations.weight.original0.mul_(1.5)


@pytest.mark.parametrize("context", CONTEXTS)
@pytest.mark.parametrize("mode", LAYER_MODES)
@pytest.mark.parametrize(("input_size", "memory_size"), [(1, 1), (2, 3), (3, 2)])
def test_empty_batch_on_every_path(context, mode, input_size, memory_size):
    """A batch of zero sequences gives empty outputs on every path: the psMNIST product (one
    input, one channel), eq. 25 with the encoder folded after it (input_size <= memory_size,
    which raised "cannot reshape tensor of 0 elements"), the plain last state, every sequence
    mode and the step loop, with and without a state."""
    S = memory_size * 5
    for return_sequences in (True, False):
        layer = plmu.ParallelLMU(
            input_size, 4, 5, 10.0, memory_size=memory_size, mode=mode,
            return_sequences=return_sequences,
        )  # fmt: skip
        for T, state in itertools.product(LENGTHS, (None, torch.zeros(0, S))):
            with CONTEXTS[context]():
                y, final = layer(torch.randn(0, T, input_size), state)
            assert y.shape == ((0, T, 4) if return_sequences else (0, 4))
            assert final.shape == (0, S) and y.dtype == final.dtype == torch.float32


_MEMORY_ENTRIES = {
    **{m: lambda mem, u, s, m=m: mem(u, s, mode=m) for m in MODES if m != "auto"},
    "last_state": lambda mem, u, s: mem.last_state(u, s),
    "project": lambda mem, u, s: mem.project(u, torch.randn(5, mem.state_size), s),
}
_STATE = r"state must have shape \(3, 8\)"
_BAD_MEMORY_CALLS = {  # u, state shape, error, message
    "rank 2": (
        lambda: torch.randn(3, 2),
        None,
        ValueError,
        r"u must have shape \(batch, time, 2\)",
    ),
    "features": (lambda: torch.randn(3, 9, 3), None, ValueError, r"u must have shape .*3 != 2"),
    "integer u": (lambda: torch.ones(3, 9, 2, dtype=torch.long), None, TypeError, "u must have a"),
    "state size": (lambda: torch.randn(3, 9, 2), (3, 7), ValueError, _STATE),
    "state batch 1": (lambda: torch.randn(3, 9, 2), (1, 8), ValueError, _STATE),
}


@pytest.mark.parametrize("bad", _BAD_MEMORY_CALLS)
@pytest.mark.parametrize("entry", _MEMORY_ENTRIES)
def test_memory_entries_reject_the_same_bad_inputs(entry, bad):
    """Each way to run a sequence through ``LegendreMemory`` (every mode, the last state, the
    fused projection) rejects a bad ``u`` or ``state`` with the same error naming it
    (``project`` raised torch's internal errors, and broadcast a state of batch 1)."""
    make_u, state_shape, error, match = _BAD_MEMORY_CALLS[bad]
    mem = plmu.LegendreMemory(2, 4, 10.0)
    state = None if state_shape is None else torch.randn(*state_shape)
    with pytest.raises(error, match=match):
        _MEMORY_ENTRIES[entry](mem, make_u(), state)


@pytest.mark.parametrize(
    ("weight", "error", "match"),
    [
        (torch.randn(5, 7), ValueError, r"weight must have shape \(out_features, 8\), got \(5, 7"),
        (torch.randn(8), ValueError, r"weight must have shape \(out_features, 8\), got \(8,\)"),
        (torch.ones(5, 8, dtype=torch.long), TypeError, "weight must be a floating"),
        ([[0.0] * 8], TypeError, "weight must be a floating torch.Tensor, got list"),
    ],
)
def test_project_checks_its_weight(weight, error, match):
    with pytest.raises(error, match=match):
        plmu.LegendreMemory(2, 4, 10.0).project(torch.randn(3, 9, 2), weight)

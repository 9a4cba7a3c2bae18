"""LMU.forward's fast sequence path (_LMUSequence, a hand-written BPTT) against the step-by-step
autograd loop it replaces, and the fallbacks to that loop where the fast path does not apply."""

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import plmu
from plmu import bptt, layers

SWITCHES = ("hidden_to_memory", "memory_to_memory", "input_to_hidden", "hidden_to_hidden")


def make(switches=(True,) * 4, dtype=torch.float64, seed=0, **kwargs):
    torch.manual_seed(seed)
    rnn = plmu.LMU(3, 5, 4, 6.0, **dict(zip(SWITCHES, switches)), **kwargs).to(dtype)
    with torch.no_grad():  # no zero weights (e_m starts at zero): every term counts
        for p in rnn.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return rnn


def run(rnn, x, state=None, lengths=None, fast=True):
    """Outputs, final state and every gradient (input, initial state, parameters)."""
    rnn._fast_sequence = fast
    rnn.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_(True)
    state = None if state is None else tuple(s.clone().requires_grad_(True) for s in state)
    y, (h, m) = rnn(x, state, lengths=lengths)
    weights = torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)
    ((y * weights).sum() + 0.3 * (h**2).sum() + 0.7 * m.sum()).backward()
    grads = [x.grad] + ([] if state is None else [s.grad for s in state])
    grads += [p.grad for p in rnn.parameters()]
    return [y, h, m, *grads]


def assert_same(got, want, rtol=1e-10, atol=1e-12):
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want)):
        assert (g is None) == (w is None), i
        if g is not None:
            torch.testing.assert_close(g, w, rtol=rtol, atol=atol, msg=f"entry {i}")


class Counter:
    """Counts the calls of _LMUSequence.apply (the fast path taken)."""

    def __init__(self, monkeypatch):
        self.calls = 0
        apply = bptt._LMUSequence.apply

        def counted(*args):
            self.calls += 1
            return apply(*args)

        monkeypatch.setattr(bptt._LMUSequence, "apply", counted)


@pytest.fixture
def counter(monkeypatch):
    return Counter(monkeypatch)


@pytest.mark.parametrize("switches", list(itertools.product([False, True], repeat=4)))
@pytest.mark.parametrize(
    "bias, memory_size, return_sequences, with_state, with_lengths",
    [
        (False, 1, True, False, False),
        (True, 2, False, True, False),
        (True, 1, False, False, True),
        (False, 2, True, True, True),
    ],
)
def test_fast_path_equals_autograd_loop(
    counter, switches, bias, memory_size, return_sequences, with_state, with_lengths
):
    rnn = make(switches, bias=bias, memory_size=memory_size, return_sequences=return_sequences)
    x = torch.randn(3, 7, 3, dtype=torch.float64)
    state = None
    if with_state:
        state = (torch.randn(3, 5, dtype=torch.float64), torch.randn(3, 4 * memory_size).double())
    lengths = torch.tensor([7, 2, 5]) if with_lengths else None
    want = run(rnn, x, state, lengths, fast=False)
    assert counter.calls == 0
    got = run(rnn, x, state, lengths, fast=True)
    assert counter.calls == 1
    assert_same(got, want)


@pytest.mark.parametrize("activation", ["tanh", "relu", "sigmoid", None])
@pytest.mark.parametrize("memory_size", [1, 2])
def test_fast_path_activations_and_trainable_theta(counter, activation, memory_size):
    rnn = make(hidden_activation=activation, memory_size=memory_size, trainable_theta=True)
    x = torch.randn(2, 9, 3, dtype=torch.float64)
    want = run(rnn, x, fast=False)
    got = run(rnn, x, fast=True)
    assert counter.calls == 1
    assert rnn.cell.memory.log_theta.grad is not None
    assert_same(got, want)


@settings(max_examples=15, deadline=None)
@given(
    batch=st.integers(1, 4),
    time=st.integers(1, 9),
    switches=st.tuples(*[st.booleans()] * 4),
    bias=st.booleans(),
    return_sequences=st.booleans(),
    data=st.data(),
)
def test_fast_path_equals_autograd_loop_property(
    batch, time, switches, bias, return_sequences, data
):
    rnn = make(switches, bias=bias, return_sequences=return_sequences, seed=batch * 10 + time)
    x = torch.randn(batch, time, 3, dtype=torch.float64)
    lengths = data.draw(st.none() | st.lists(st.integers(1, time), min_size=batch, max_size=batch))
    lengths = None if lengths is None else torch.tensor(lengths)
    assert_same(run(rnn, x, lengths=lengths), run(rnn, x, lengths=lengths, fast=False))


def test_fast_path_float32_within_rounding(counter):
    rnn = make(dtype=torch.float32, bias=True)
    x = torch.randn(4, 30, 3)
    want = run(rnn, x, fast=False)
    got = run(rnn, x)
    assert counter.calls == 1
    assert_same(got, want, rtol=1e-4, atol=1e-5)


def test_fast_path_only_some_gradients(counter):
    """Frozen weights and an input without gradient: the others still match."""
    rnn = make(bias=True)
    rnn.cell.W_h.requires_grad_(False)
    rnn.cell.e_x.requires_grad_(False)
    x = torch.randn(2, 6, 3, dtype=torch.float64)
    grads = []
    for fast in (False, True):
        rnn._fast_sequence = fast
        rnn.zero_grad(set_to_none=True)
        y, (_h, m) = rnn(x)
        (y.sum() + m.sum()).backward()
        grads.append([p.grad for p in rnn.parameters()])
    assert counter.calls == 1
    assert grads[1][0] is None  # e_x
    assert_same(grads[1], grads[0])


@pytest.mark.parametrize("return_sequences", [False, True])
@pytest.mark.parametrize("no_grad", [torch.no_grad, torch.inference_mode])
def test_fast_path_inference_and_final_state_owns_its_memory(
    monkeypatch, counter, return_sequences, no_grad
):
    """Inference runs the fast forward (no Function) with the state in two rows, not T + 1."""
    rows = []
    forward = layers._lmu_sequence_forward

    def recorded(*args, **kwargs):
        out = forward(*args, **kwargs)
        rows.append((out[0].shape[0], out[1].shape[0]))
        return out

    monkeypatch.setattr(layers, "_lmu_sequence_forward", recorded)
    rnn = make(return_sequences=return_sequences)
    x = torch.randn(2, 50, 3, dtype=torch.float64)
    with no_grad():
        want = run_no_grad(rnn, x, fast=False)
        assert rows == []
        got = run_no_grad(rnn, x, fast=True)
    assert rows == [(51 if return_sequences else 2, 2)]
    assert counter.calls == 0
    assert_same(got, want)
    y, (h, m) = rnn(x)
    assert counter.calls == 1
    # the last state is not a view that keeps the whole sequence's buffers alive (with every
    # output returned, h is y's last step, as from the loop's stack)
    for t in (y, m) if return_sequences else (y, h, m):
        assert t.untyped_storage().nbytes() == t.numel() * t.element_size()


def run_no_grad(rnn, x, fast):
    rnn._fast_sequence = fast
    y, (h, m) = rnn(x)
    return [y, h, m]


def test_fast_path_double_backward_equals_autograd_loop(counter):
    """create_graph=True: the gradient is itself differentiated (a Hessian-vector product)."""
    rnn = make(bias=True, return_sequences=False)
    x = torch.randn(2, 5, 3, dtype=torch.float64)
    hvps = []
    for fast in (False, True):
        rnn._fast_sequence = fast
        y, _ = rnn(x)
        params = list(rnn.parameters())
        grads = torch.autograd.grad((y**2).sum(), params, create_graph=True)
        vs = [torch.ones_like(p) for p in params]
        dot = sum((g * v).sum() for g, v in zip(grads, vs))
        hvps.append(torch.autograd.grad(dot, params))
    assert counter.calls == 1
    assert_same(list(hvps[1]), list(hvps[0]))


def test_fallback_unsupported_activation(counter):
    rnn = make(hidden_activation="gelu")
    x = torch.randn(2, 4, 3, dtype=torch.float64)
    run(rnn, x)
    assert counter.calls == 0


def test_fallback_autocast(counter):
    rnn = make(dtype=torch.float32)
    x = torch.randn(2, 4, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, _ = rnn(x)
    assert counter.calls == 0
    assert y.dtype == torch.bfloat16


def test_fallback_forward_mode_ad(counter):
    import torch.autograd.forward_ad as fwAD

    rnn = make(return_sequences=False)
    x, tangent = torch.randn(2, 4, 3, dtype=torch.float64), torch.randn(2, 4, 3).double()
    with fwAD.dual_level():
        y, _ = rnn(fwAD.make_dual(x, tangent))
        jvp = fwAD.unpack_dual(y).tangent
    assert counter.calls == 0
    eps = 1e-6
    with torch.no_grad():
        rnn._fast_sequence = False
        fd = (rnn(x + eps * tangent)[0] - rnn(x - eps * tangent)[0]) / (2 * eps)
    torch.testing.assert_close(jvp, fd, rtol=1e-6, atol=1e-8)


def test_fallback_torch_func(counter):
    rnn = make(return_sequences=False)
    x = torch.randn(2, 4, 3, dtype=torch.float64)
    params = dict(rnn.named_parameters())

    def loss(p):
        return torch.func.functional_call(rnn, p, (x,))[0].sum()

    got = torch.func.grad(loss)(params)
    assert counter.calls == 0
    rnn.zero_grad(set_to_none=True)
    rnn(x)[0].sum().backward()  # the fast path
    assert counter.calls == 1
    for name, p in rnn.named_parameters():
        torch.testing.assert_close(got[name], p.grad, rtol=1e-10, atol=1e-12)


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", "ignore::DeprecationWarning")
def test_fallback_jit_trace(counter):
    rnn = make(return_sequences=False).eval()
    x = torch.randn(2, 4, 3, dtype=torch.float64)
    traced = torch.jit.trace(rnn, (x,), check_trace=False)
    assert counter.calls == 0
    x2 = torch.randn(2, 4, 3, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(traced(x2)[0], rnn(x2)[0], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("return_sequences", [False, True])
@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_fast_path_lean_cell_without_state_gradients(counter, return_sequences, activation):
    """Only W_m trains (plmu bench's lean cell): no gradient of m is carried back; with only the
    last h returned the loop runs, else the Function; the gradients match the loop's."""
    rnn = make((False,) * 4, return_sequences=return_sequences, hidden_activation=activation)
    rnn.cell.e_x.requires_grad_(False)
    x = torch.randn(3, 8, 3, dtype=torch.float64)
    grads = []
    for fast in (False, True):
        rnn._fast_sequence = fast
        rnn.zero_grad(set_to_none=True)
        y, _ = rnn(x)
        (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
        grads.append(rnn.cell.W_m.grad)
    # the loop where nothing is carried back (it keeps the last step alone), else the Function
    assert counter.calls == (1 if return_sequences else 0)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("sequences", [False, True])
@pytest.mark.parametrize("lean", [False, True])
def test_function_equals_its_plain_recomputation(sequences, lean):
    """_LMUSequence called directly against autograd of _lmu_sequence_plain, including the lean
    case LMU.forward leaves to the loop (no state gradient carried: only the last step's)."""
    torch.manual_seed(3)
    T, B, C, H, d = 6, 2, 1, 4, 3

    def w(*shape, grad=True):
        return torch.randn(*shape, dtype=torch.float64, requires_grad=grad)

    rnn = plmu.LMU(1, H, d, 5.0).double()
    Abar, Bbar = rnn.cell.memory._discrete_as(torch.zeros((), dtype=torch.float64))
    a, c = w(T, B, C, grad=not lean), w(T, B, H)
    h0, m0 = w(B, H), w(B, d, grad=not lean)
    e_h, e_m, W_h = (None, None, None) if lean else (w(C, H), w(C, d), w(H, H))
    W_m = w(H, d)
    inputs = (a, c, h0, m0, e_h, e_m, W_h, W_m, Abar, Bbar, None)
    grads = []
    for fast in (False, True):
        if fast:
            y, m = bptt._LMUSequence.apply(*inputs, torch.nn.Tanh, sequences, None)
        else:
            y, m = bptt._lmu_sequence_plain(*inputs, kind=torch.nn.Tanh, sequences=sequences)
        wanted = [t for t in inputs if t is not None and t.requires_grad]
        loss = (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum() + 0.5 * m.sum()
        grads.append(torch.autograd.grad(loss, wanted, allow_unused=True))
    for g, want in zip(grads[1], grads[0]):
        if want is None:  # (h0 without e_h, W_h: no gradient; the Function gives None too)
            assert g is None
        else:
            torch.testing.assert_close(g, want, rtol=1e-10, atol=1e-12)

"""ParallelLMU, LMUCell and LMU: modes agree, step form, streaming, padding, parameters."""

import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import plmu
from plmu.layers import LAYER_MODES
from plmu.legendre import UnstableDiscretizationWarning

MODES = [m for m in LAYER_MODES if m != "auto"] + ["auto"]


def make_layer(mode="auto", **kw):
    args = dict(input_size=3, hidden_size=7, order=6, theta=15.0, memory_size=2, mode=mode)
    args.update(kw)
    return plmu.ParallelLMU(**args).double()


def reference_parallel_lmu(layer, x, state=None):
    """The layer's equations evaluated step by step in float64 from its weights (PAPER.md 3)."""
    from conftest import reference_memory

    with torch.no_grad():
        u = layer.memory_activation(layer.encoder(x))
        m = torch.from_numpy(reference_memory(u, layer.order, layer.memory.theta, state))
        z = torch.cat([m, x], -1) if layer.input_to_output else m
        return layer.hidden_activation(layer.output(z))


@settings(max_examples=25, deadline=None)
@given(
    mode=st.sampled_from(MODES),
    time=st.integers(1, 120),
    batch=st.integers(1, 3),
    with_state=st.booleans(),
    input_to_output=st.booleans(),
    sizes=st.sampled_from([(3, 2), (1, 1), (2, 3)]),
    grad=st.booleans(),
)
def test_parallel_lmu_every_mode_equals_reference(
    mode, time, batch, with_state, input_to_output, sizes, grad
):
    """Every mode and path against the float64 recurrence: with and without autograd (the
    short-chunk step loop, in-place inference forms), and each last-state form (the psMNIST
    product for one input and channel, eq. 25 with the encoder after it for input_size <=
    memory_size, the plain one)."""
    n_in, n_mem = sizes
    layer = make_layer(mode, input_to_output=input_to_output, input_size=n_in, memory_size=n_mem)
    x = torch.randn(batch, time, n_in, dtype=torch.float64)
    S = 6 * n_mem
    state = torch.randn(batch, S, dtype=torch.float64) if with_state else None
    ref = reference_parallel_lmu(layer, x, state)
    with torch.set_grad_enabled(grad):
        y, final = layer(x, state)
    assert y.shape == (batch, time, 7) and final.shape == (batch, S)
    np.testing.assert_allclose(y.detach().numpy(), ref.numpy(), atol=1e-9)
    layer.return_sequences = False
    with torch.set_grad_enabled(grad):
        y_last, final_last = layer(x, state)
    np.testing.assert_allclose(y_last.detach().numpy(), ref[:, -1].numpy(), atol=1e-9)
    np.testing.assert_allclose(final_last.detach().numpy(), final.detach().numpy(), atol=1e-9)


@pytest.mark.parametrize("mode", MODES)
def test_step_loop_equals_forward(mode):
    layer = make_layer(mode)
    x = torch.randn(2, 70, 3, dtype=torch.float64)
    y, final = layer(x)
    state, outs = None, []
    for t in range(x.shape[1]):
        y_t, state = layer.step(x[:, t], state)
        outs.append(y_t)
    np.testing.assert_allclose(
        torch.stack(outs, 1).detach().numpy(), y.detach().numpy(), atol=1e-10
    )
    np.testing.assert_allclose(state.detach().numpy(), final.detach().numpy(), atol=1e-10)


def test_return_sequences_false_never_builds_memory_sequence(monkeypatch):
    layer = make_layer(return_sequences=False)

    def forbidden(*args, **kwargs):
        raise AssertionError("the memory sequence was built")

    monkeypatch.setattr(layer.memory, "forward", forbidden)
    monkeypatch.setattr(layer.memory, "project", forbidden)
    y, state = layer(torch.randn(4, 50, 3, dtype=torch.float64))
    assert y.shape == (4, 7) and state.shape == (4, 12)


@settings(max_examples=15, deadline=None)
@given(mode=st.sampled_from(MODES), cuts=st.lists(st.integers(1, 80), min_size=1, max_size=4))
def test_chunked_streaming_equals_one_call(mode, cuts):
    layer = make_layer(mode)
    x = torch.randn(2, sum(cuts), 3, dtype=torch.float64)
    whole, final = layer(x)
    parts, state, start = [], None, 0
    for n in cuts:
        y, state = layer(x[:, start : start + n], state)
        parts.append(y)
        start += n
    np.testing.assert_allclose(
        torch.cat(parts, 1).detach().numpy(), whole.detach().numpy(), atol=1e-9
    )
    np.testing.assert_allclose(state.detach().numpy(), final.detach().numpy(), atol=1e-9)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("return_sequences", [True, False])
def test_padded_batch_equals_each_sequence_alone(mode, return_sequences):
    layer = make_layer(mode, return_sequences=return_sequences)
    lengths = torch.tensor([40, 3, 25, 1])
    x = torch.randn(4, 40, 3, dtype=torch.float64)
    x_padded = x.clone()
    for b, n in enumerate(lengths.tolist()):
        x_padded[b, n:] = 99.0  # garbage in the padding must not matter
    y, state = layer(x_padded, lengths=lengths)
    for b, n in enumerate(lengths.tolist()):
        y_alone, s_alone = layer(x[b : b + 1, :n])
        last = y[b, n - 1] if return_sequences else y[b]
        y_last = y_alone[0, -1] if return_sequences else y_alone[0]
        np.testing.assert_allclose(last.detach().numpy(), y_last.detach().numpy(), atol=1e-9)
        np.testing.assert_allclose(
            state[b].detach().numpy(), s_alone[0].detach().numpy(), atol=1e-9
        )
        if return_sequences:
            np.testing.assert_allclose(
                y[b, :n].detach().numpy(), y_alone[0].detach().numpy(), atol=1e-9
            )


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("return_sequences", [True, False])
def test_empty_batch(mode, return_sequences):
    """A batch of zero sequences (e.g. the last, empty shard of a split) gives empty outputs in
    every mode, like torch.nn.LSTM; the FFT paths must not reach an FFT of nothing."""
    layer = make_layer(mode, return_sequences=return_sequences)
    x = torch.randn(0, 40, 3, dtype=torch.float64, requires_grad=True)
    for state in (None, torch.zeros(0, 12, dtype=torch.float64)):
        y, final = layer(x, state)
        assert y.shape == ((0, 40, 7) if return_sequences else (0, 7))
        assert final.shape == (0, 12)
        y.sum().backward()
    m, m_final = layer.memory(torch.randn(0, 40, 2), mode=None if mode == "fused" else mode)
    assert m.shape == (0, 40, 12) and m_final.shape == (0, 12)


def test_psmnist_model_has_the_papers_parameter_count():
    """Order 468, hidden 346, theta 784, one channel, x to the output, then Dense(10)."""
    model = torch.nn.ModuleDict(
        {
            "lmu": plmu.ParallelLMU(1, 346, 468, 784.0, memory_size=1, return_sequences=False),
            "classifier": torch.nn.Linear(346, 10),
        }
    )
    assert sum(p.numel() for p in model.parameters()) == 166_092


def test_parallel_lmu_gradients_gradcheck():
    layer = make_layer("fused", trainable_theta=True, hidden_activation="tanh")
    x = torch.randn(2, 6, 3, dtype=torch.float64, requires_grad=True)
    s = torch.randn(2, 12, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, s: layer(x, s), (x, s), fast_mode=True)
    y, _ = layer(x, s)
    y.sum().backward()
    assert layer.memory.log_theta.grad is not None and layer.output.weight.grad is not None


def test_dropout_only_in_training():
    layer = make_layer(dropout=0.5)
    x = torch.randn(2, 20, 3, dtype=torch.float64)
    layer.eval()
    a, _ = layer(x)
    b, _ = layer(x)
    assert torch.equal(a, b)
    layer.train()
    c, _ = layer(x)
    assert (c == 0).float().mean() > 0.2


def test_float32_modes_agree():
    layer = plmu.ParallelLMU(4, 16, 32, 200.0, memory_size=3)
    x = torch.randn(3, 500, 4)
    outs = {}
    for mode in MODES:
        layer.mode = mode
        layer.memory.mode = "auto" if mode == "fused" else mode
        outs[mode] = layer(x)[0].detach()
    ref = outs["recurrent"]
    for mode, y in outs.items():
        assert (y - ref).abs().max() <= 1e-4 * ref.abs().max(), mode


# ------------------------------------------------------------------------------ original LMU


def reference_lmu(cell, x, activation=torch.tanh):
    """The original LMU equations (PAPER.md section 2) step by step, float64."""
    Abar, Bbar = plmu.discretize(*plmu.legendre_delay(cell.memory.order), cell.memory.theta)
    Abar, Bbar = torch.from_numpy(Abar), torch.from_numpy(Bbar)[:, 0]
    C, d = cell.memory.memory_size, cell.memory.order
    Bn = x.shape[0]
    h = torch.zeros(Bn, cell.hidden_size, dtype=torch.float64)
    m = torch.zeros(Bn, C * d, dtype=torch.float64)
    hs = []
    for t in range(x.shape[1]):
        u = x[:, t] @ cell.e_x.T
        if cell.e_h is not None:
            u = u + h @ cell.e_h.T
        if cell.e_m is not None:
            u = u + m @ cell.e_m.T
        m = (m.view(Bn, C, d) @ Abar.T + u[..., None] * Bbar).reshape(Bn, C * d)
        pre = m @ cell.W_m.T
        if cell.W_h is not None:
            pre = pre + h @ cell.W_h.T
        if cell.W_x is not None:
            pre = pre + x[:, t] @ cell.W_x.T
        if cell.bias is not None:
            pre = pre + cell.bias
        h = activation(pre)
        hs.append(h)
    return torch.stack(hs, 1), m


@pytest.mark.parametrize(
    "switches",
    [
        (True, True, True, True),
        (False, False, False, True),
        (True, False, True, True),
        (False, False, False, False),
        (True, True, False, False),
    ],
)
@pytest.mark.parametrize("bias_and_relu", [False, True])
def test_lmu_equals_reference(switches, bias_and_relu):
    """Every connection switch; the bias and another activation than tanh (the reference
    applied neither before, so the cell could drop them unnoticed)."""
    h2m, m2m, i2h, h2h = switches
    options = dict(bias=True, hidden_activation="relu") if bias_and_relu else {}
    rnn = plmu.LMU(
        3,
        9,
        5,
        12.0,
        memory_size=2,
        hidden_to_memory=h2m,
        memory_to_memory=m2m,
        input_to_hidden=i2h,
        hidden_to_hidden=h2h,
        **options,
    ).double()
    with torch.no_grad():
        if rnn.cell.e_m is not None:
            rnn.cell.e_m.normal_(0, 0.1)  # default init is zero; test the connection for real
        if rnn.cell.bias is not None:
            rnn.cell.bias.normal_(0, 0.5)  # zero-initialised too
        x = torch.randn(2, 25, 3, dtype=torch.float64)
        y, (_h, m) = rnn(x)
        y_ref, m_ref = reference_lmu(rnn.cell, x, torch.relu if bias_and_relu else torch.tanh)
    np.testing.assert_allclose(y.numpy(), y_ref.numpy(), atol=1e-10)
    np.testing.assert_allclose(m.numpy(), m_ref.numpy(), atol=1e-10)
    assert (rnn.cell.e_h is None) == (not h2m) and (rnn.cell.W_x is None) == (not i2h)
    assert (rnn.cell.W_h is None) == (not h2h)


def test_lmu_cell_loop_equals_lmu_and_streams():
    rnn = plmu.LMU(3, 9, 5, 12.0).double()
    x = torch.randn(2, 30, 3, dtype=torch.float64)
    y, (_h, _m) = rnn(x)
    state, outs = None, []
    for t in range(30):
        h_t, state = rnn.cell(x[:, t], state)
        outs.append(h_t)
    np.testing.assert_allclose(
        torch.stack(outs, 1).detach().numpy(), y.detach().numpy(), atol=1e-12
    )
    y1, s1 = rnn(x[:, :11])
    y2, _s2 = rnn(x[:, 11:], s1)
    np.testing.assert_allclose(
        torch.cat([y1, y2], 1).detach().numpy(), y.detach().numpy(), atol=1e-12
    )


def test_lmu_padded_batch_and_return_sequences():
    rnn = plmu.LMU(3, 9, 5, 12.0, return_sequences=False).double()
    x = torch.randn(3, 20, 3, dtype=torch.float64)
    lengths = torch.tensor([20, 4, 11])
    y, (_h, m) = rnn(x, lengths=lengths)
    for b, n in enumerate(lengths.tolist()):
        y_b, (_h_b, m_b) = rnn(x[b : b + 1, :n])
        np.testing.assert_allclose(y[b].detach().numpy(), y_b[0].detach().numpy(), atol=1e-12)
        np.testing.assert_allclose(m[b].detach().numpy(), m_b[0].detach().numpy(), atol=1e-12)


def test_lmu_psmnist_init():
    """The 2019 psMNIST setup: e_x = 1, e_h = e_m = 0, W_x = W_h = 0, W_m Glorot-normal, as
    *initial* values; every one of them trains (the Keras cell's trainable_* flags default to
    True and the notebook sets none), 102,027 trainable weights with the 10-way head: the
    paper's "102k trainable parameters"."""
    rnn = plmu.LMU(1, 212, 256, 784.0, init="psmnist")
    cell = rnn.cell
    assert torch.all(cell.e_x == 1) and torch.all(cell.e_h == 0) and torch.all(cell.e_m == 0)
    assert torch.all(cell.W_x == 0) and torch.all(cell.W_h == 0)
    assert all(p.requires_grad for p in rnn.parameters())
    trainable = sum(p.numel() for p in rnn.parameters() if p.requires_grad)
    assert trainable + 212 * 10 + 10 == 102_027
    y, _ = rnn(torch.rand(2, 5, 1))
    y.sum().backward()
    assert cell.W_h.grad is not None and cell.e_h.grad is not None


@pytest.mark.parametrize("return_sequences", [False, True])
def test_lmu_psmnist_lean_cell_matches_full_cell_at_init(return_sequences):
    """The psMNIST initialisation's zero connections (e_h, e_m, W_x, W_h) left out (the
    benchmark's lean baseline): the same outputs, state and e_x / W_m gradients, bit for bit, as
    the full cell that multiplies by them; only the full cell can learn them."""
    kw = dict(return_sequences=return_sequences, init="psmnist")
    full = plmu.LMU(1, 12, 16, 40.0, **kw)
    lean = plmu.LMU(
        1,
        12,
        16,
        40.0,
        hidden_to_memory=False,
        memory_to_memory=False,
        input_to_hidden=False,
        hidden_to_hidden=False,
        **kw,
    )
    assert full.cell.W_h is not None and torch.all(full.cell.W_h == 0)
    assert lean.cell.W_h is None and lean.cell.e_h is None and lean.cell.W_x is None
    with torch.no_grad():
        lean.cell.W_m.copy_(full.cell.W_m)
    assert [n for n, p in lean.named_parameters()] == ["cell.e_x", "cell.W_m"]
    x = torch.randn(4, 60, 1)
    head = torch.randn(12, 3)
    results = []
    for rnn in (full, lean):
        y, (h, m) = rnn(x)
        loss = torch.tanh(y @ head).square().sum()
        loss.backward()
        results.append((y.detach(), h.detach(), m.detach(), rnn.cell.e_x.grad, rnn.cell.W_m.grad))
    assert full.cell.W_h.grad.abs().max() > 0  # the full cell learns its recurrent weights
    for a, b in zip(*results):
        assert torch.equal(a, b)


def test_lmu_trainable_theta():
    rnn = plmu.LMU(2, 4, 3, 6.0, trainable_theta=True)
    y, _ = rnn(torch.randn(2, 10, 2))
    y.sum().backward()
    assert rnn.cell.memory.log_theta.grad is not None


def test_lmu_repr_shows_sizes_and_switches():
    text = repr(plmu.LMU(3, 9, 5, 12.0, memory_to_memory=False))
    assert "input_size=3, hidden_size=9" in text and "memory_to_memory=False" in text
    assert "order=5" in text and "theta=12" in text


# ---------------------------------------- unstable forward Euler: warned when discretising


def _euler_warnings(record):
    return [w for w in record if issubclass(w.category, UnstableDiscretizationWarning)]


@pytest.mark.parametrize("make", ["memory", "parallel", "lmu"])
def test_unstable_euler_warns_once_when_built_and_loaded_not_per_forward(make):
    """A fixed theta is checked where it is discretised: when the memory is built (and again
    when a state dict is loaded, which rediscretises), never in forward or step."""
    build = {
        "memory": lambda: plmu.LegendreMemory(1, 8, 10.0, discretizer="euler"),
        "parallel": lambda: plmu.ParallelLMU(1, 4, 8, 10.0, discretizer="euler"),
        "lmu": lambda: plmu.LMU(1, 4, 8, 10.0, discretizer="euler"),
    }[make]
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        module = build()
        assert len(_euler_warnings(record)) == 1
        assert record[0].filename == __file__  # the user's line, not plmu's
        x = torch.randn(2, 30, 1, requires_grad=True)
        for _ in range(3):
            out = module(x)[0]
            out.sum().backward()
        if make != "lmu":
            module.step(x[:, 0])
        assert len(_euler_warnings(record)) == 1
        module.load_state_dict(module.state_dict())
        assert len(_euler_warnings(record)) == 2


def _memory_alone(input_size, hidden_size, order, theta, **kwargs):
    return plmu.LegendreMemory(1, order, theta, **kwargs)


@pytest.mark.parametrize("layer", [plmu.ParallelLMU, plmu.LMU, _memory_alone])
def test_trainable_euler_theta_is_checked_once_at_construction(layer):
    """A trainable theta runs through discretize_torch every training step: no check there,
    only its initial value when the layer is built (the message says so)."""
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        module = layer(1, 4, 8, 10.0, discretizer="euler", trainable_theta=True)
        (warning,) = _euler_warnings(record)
        assert "initial trainable theta=10" in str(warning.message)
        optimizer = torch.optim.SGD(module.parameters(), lr=1e-3)
        for _ in range(3):
            optimizer.zero_grad()
            module(torch.randn(2, 20, 1))[0].square().mean().backward()
            optimizer.step()
        with torch.no_grad():
            module(torch.randn(2, 20, 1))
        assert len(_euler_warnings(record)) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        layer(1, 4, 8, 20.0, discretizer="euler", trainable_theta=True)  # stable: quiet
        layer(1, 4, 8, 10.0, trainable_theta=True)  # zoh: quiet


def test_default_state_is_the_state_none_stands_for():
    """``default_state(batch)``: zeros of the state's shape, in the weights' dtype and device
    (or those asked for), giving exactly what ``state=None`` gives."""
    x = torch.randn(3, 9, 2, dtype=torch.float64)
    layer = plmu.ParallelLMU(2, 4, 5, 10.0, memory_size=2).double()
    s = layer.default_state(3)
    assert s.shape == (3, 10) and s.dtype == torch.float64 and not s.any()
    assert layer.default_state(3, torch.float32).dtype == torch.float32
    for got, expected in zip(layer(x, s), layer(x), strict=True):
        assert torch.equal(got, expected)
    for got, expected in zip(layer.step(x[:, 0], s), layer.step(x[:, 0]), strict=True):
        assert torch.equal(got, expected)
    mem = layer.memory
    u = x[..., :2]
    assert mem.default_state(3).dtype == torch.get_default_dtype()
    for got, expected in zip(mem(u, mem.default_state(3, x.dtype)), mem(u), strict=True):
        assert torch.equal(got, expected)
    rnn = plmu.LMU(2, 4, 5, 10.0).double()
    h, m = rnn.default_state(3)
    assert h.shape == (3, 4) and m.shape == (3, 5) and h.dtype == m.dtype == torch.float64
    (y, (h1, m1)), (y0, (h0, m0)) = rnn(x, (h, m)), rnn(x)
    assert torch.equal(y, y0) and torch.equal(h1, h0) and torch.equal(m1, m0)
    assert torch.equal(rnn.cell(x[:, 0], (h, m))[0], rnn.cell(x[:, 0])[0])


@pytest.mark.parametrize(
    "make",
    [
        lambda: plmu.LegendreMemory(2, 5, 10.0, trainable_theta=True),
        lambda: plmu.ParallelLMU(2, 4, 5, 10.0, trainable_theta=True),
        lambda: plmu.LMU(2, 4, 5, 10.0, trainable_theta=True),
    ],
    ids=["memory", "parallel", "lmu"],
)
def test_default_state_with_a_trainable_theta(make):
    """A trainable theta keeps no ``Abar`` buffer (it is discretised each call): the memory's
    ``default_state`` took its device from ``Abar`` and raised ``AttributeError``."""
    module = make().double()
    state = module.default_state(3)
    state = state[1] if isinstance(state, tuple) else state
    assert state.shape == (3, 10 if isinstance(module, plmu.LegendreMemory) else 5)
    assert not state.any() and state.device == torch.device("cpu")


@pytest.mark.parametrize(
    ("batch_size", "dtype", "error", "match"),
    [
        (-1, None, ValueError, "batch_size"),
        (1.5, None, TypeError, "batch_size"),
        (True, None, TypeError, "batch_size"),
        (2, torch.long, TypeError, "dtype"),
        (2, "float32", TypeError, "dtype"),
    ],
)
def test_default_state_checks_its_arguments(batch_size, dtype, error, match):
    for module in (
        plmu.ParallelLMU(1, 2, 3, 5.0),
        plmu.LMU(1, 2, 3, 5.0),
        plmu.LegendreMemory(1, 3, 5.0),
    ):
        with pytest.raises(error, match=match):
            module.default_state(batch_size, dtype)

"""``torch.func`` transforms and forward-mode AD give the numbers of ordinary autograd.

Under a transform (``grad``, ``vmap``, ``jvp``, ``jacrev``, ``jacfwd``) or with a forward-mode
tangent the layers run whole-tensor operations with autograd's own derivatives instead of the
custom autograd Functions of the fast paths; the references here come from those fast paths
(``torch.autograd.grad`` and ``torch.autograd.functional``), so the two implementations check
each other. Sizes: order 6, theta 3 puts 150 steps into two overlap-save blocks (float64).
"""

import contextlib
import functools
import subprocess
import sys
from unittest import mock

import pytest
import torch
import torch.autograd.forward_ad as fwAD
from torch.func import functional_call, grad, jacfwd, jacrev, jvp, vmap

import plmu
import plmu.graph_constants
from plmu.layers import LAYER_MODES

# (constructor keywords, sequence length)
CASES = {
    "one channel, two blocks": ({}, 150),
    "one channel, one block": ({}, 40),
    "short chunk": ({}, 3),
    "two channels": ({"memory_size": 2}, 150),
    "trainable theta": ({"trainable_theta": True}, 60),
    "last state (eq. 25)": ({"return_sequences": False}, 60),
}


def _layer(mode: str, kwargs: dict) -> plmu.ParallelLMU:
    torch.manual_seed(0)
    kwargs = {"hidden_activation": "tanh", **kwargs}
    return plmu.ParallelLMU(2, 3, 6, 3.0, mode=mode, **kwargs).double()


def _inputs(layer: plmu.ParallelLMU, batch: int, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(batch, steps, 2, dtype=torch.float64, generator=gen)
    s = torch.randn(batch, layer.memory.state_size, dtype=torch.float64, generator=gen)
    return x, s


def _assert_per_sample_gradients(module: torch.nn.Module, loss, *inputs: torch.Tensor) -> None:
    """``vmap(grad(loss))`` over the first axis of ``inputs`` equals ordinary autograd run one
    sample at a time; ``loss(params, *one_sample)`` calls ``module`` through ``functional_call``."""
    params = {k: v.detach() for k, v in module.named_parameters()}
    got = vmap(grad(loss), in_dims=(None, *[0] * len(inputs)))(params, *inputs)
    for i in range(inputs[0].shape[0]):
        module.zero_grad()
        loss(dict(module.named_parameters()), *(t[i] for t in inputs)).backward()
        for name, p in module.named_parameters():
            torch.testing.assert_close(got[name][i], p.grad, rtol=1e-9, atol=1e-10, msg=name)


@pytest.mark.parametrize("mode", LAYER_MODES)
@pytest.mark.parametrize("case", list(CASES))
def test_per_sample_gradients_equal_a_loop(mode, case):
    """``vmap(grad(loss))``: every sample's parameter gradient, as autograd gives it one by one."""
    kwargs, steps = CASES[case]
    layer = _layer(mode, kwargs)
    x, s = _inputs(layer, 3, steps)

    def loss(p, x1, s1):
        y, state = functional_call(layer, p, (x1[None], s1[None]))
        return y.square().sum() + state.square().sum()

    _assert_per_sample_gradients(layer, loss, x, s)


@pytest.mark.parametrize("mode", LAYER_MODES)
@pytest.mark.parametrize("case", list(CASES))
def test_jvp_and_forward_ad_equal_reverse_mode(mode, case):
    """Forward mode (``torch.func.jvp`` and ``torch.autograd.forward_ad``) with tangents on the
    input and the initial state, against the fast paths' reverse mode (:func:`_assert_adjoint`)."""
    kwargs, steps = CASES[case]
    layer = _layer(mode, kwargs)
    x, s = _inputs(layer, 2, steps)
    gen = torch.Generator().manual_seed(2)
    xs = torch.cat([x.flatten(), s.flatten()])
    v = torch.randn(xs.shape, dtype=torch.float64, generator=gen)

    def f(xs):
        y, state = layer(xs[: x.numel()].view_as(x), xs[x.numel() :].view_as(s))
        return torch.cat([y.flatten(), state.flatten()])

    _, tangent = jvp(f, (xs,), (v,))
    _assert_adjoint(f, xs, v, tangent)
    with fwAD.dual_level():
        dual = fwAD.unpack_dual(f(fwAD.make_dual(xs, v))).tangent
    torch.testing.assert_close(dual, tangent, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mode", ["auto", "fft"])
@pytest.mark.parametrize("case", ["one channel, two blocks", "two channels", "trainable theta"])
def test_jacobian_and_hessian_transforms(mode, case):
    """``jacrev`` and ``jacfwd(jacrev)`` (the Hessian) of a scalar loss over the parameters and
    the input, against ``torch.autograd.functional``."""
    kwargs, steps = CASES[case]
    layer = _layer(mode, kwargs)
    x, s = _inputs(layer, 1, steps)
    w = layer.output.weight.detach()

    def loss(w, x):
        y, _ = functional_call(layer, {"output.weight": w}, (x, s))
        return y.square().mean()

    J = jacrev(loss, argnums=(0, 1))(w, x)
    J_ref = torch.autograd.functional.jacobian(loss, (w, x))
    for got, ref in zip(J, J_ref, strict=True):
        torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-12)
    H = jacfwd(jacrev(loss))(w, x)
    H_ref = torch.autograd.functional.hessian(lambda w: loss(w, x), w)
    torch.testing.assert_close(H, H_ref, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("mode", LAYER_MODES)
@pytest.mark.parametrize("case", list(CASES))
def test_vmap_inference_equals_the_batch(mode, case):
    """``vmap`` over sequences without autograd (the short-chunk loop and the cached kernels'
    paths) gives the batched forward."""
    kwargs, steps = CASES[case]
    layer = _layer(mode, kwargs).eval()
    x, s = _inputs(layer, 3, steps)
    with torch.no_grad():
        y, state = layer(x, s)
        got_y, got_state = vmap(lambda x1, s1: layer(x1[None], s1[None]))(x, s)
    torch.testing.assert_close(got_y[:, 0], y, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(got_state[:, 0], state, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("grad_enabled", [True, False])
@pytest.mark.parametrize("argument", ["state", "output.weight", "encoder.weight"])
@pytest.mark.parametrize("case", ["one channel, two blocks", "short chunk", "two channels"])
def test_vmap_over_one_argument_equals_a_loop(case, argument, grad_enabled):
    """``vmap`` over the initial state alone, or over one weight (an ensemble of layers,
    ``torch.func.stack_module_state``), on the same input: the fused path's output buffer is
    then not batched while the memory's contribution is, so it must not be added in place."""
    kwargs, steps = CASES[case]
    layer = _layer("fused", {**kwargs, "input_to_output": argument != "output.weight"})
    x, s = _inputs(layer, 2, steps)
    params = {k: v.detach() for k, v in layer.named_parameters()}

    def f(a):
        if argument == "state":
            return functional_call(layer, params, (x, a))
        return functional_call(layer, {**params, argument: a}, (x, s))

    a = s if argument == "state" else params[argument]
    stacked = torch.stack([a, 0.5 * a + 0.1])
    with torch.set_grad_enabled(grad_enabled):
        got = vmap(f)(stacked)
        expected = [torch.stack(t) for t in zip(*map(f, stacked), strict=True)]
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12)


def test_vmap_step_equals_the_batch():
    """``step`` (the folded inference map) under ``vmap``."""
    layer = _layer("auto", {}).eval()
    x, s = _inputs(layer, 4, 1)
    with torch.no_grad():
        y, state = layer.step(x[:, 0], s)
        got_y, got_state = vmap(lambda x1, s1: layer.step(x1[None], s1[None]))(x[:, 0], s)
    torch.testing.assert_close(got_y[:, 0], y, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got_state[:, 0], state, rtol=1e-12, atol=1e-12)


def test_original_lmu_per_sample_gradients():
    """The original LMU (plain operations) under ``vmap(grad)``, against a loop."""
    torch.manual_seed(0)
    layer = plmu.LMU(2, 4, 5, 10.0).double()
    x = torch.randn(3, 20, 2, dtype=torch.float64)

    def loss(p, x1):
        y, _ = functional_call(layer, p, (x1[None],))
        return y.square().sum()

    _assert_per_sample_gradients(layer, loss, x)


class _MemoryOutputs(torch.nn.Module):
    """The memory sequence, final state, last state (eq. 25) and folded projection of one call."""

    def __init__(self, mem: plmu.LegendreMemory, W: torch.Tensor) -> None:
        super().__init__()
        self.mem, self.W = mem, W

    def forward(self, u, s):
        m, final = self.mem(u, s)
        parts = (m, final, self.mem.last_state(u, s), self.mem.project(u, self.W, s))
        return torch.cat([t.flatten() for t in parts])


@pytest.mark.parametrize("mode", plmu.memory.MODES)
@pytest.mark.parametrize("steps", [3, 150])
def test_legendre_memory_transforms(mode, steps):
    """``LegendreMemory`` (trainable theta): per-sample gradients and forward-mode derivatives
    of the memory sequence, the last state (eq. 25) and the folded projection."""
    torch.manual_seed(0)
    mem = plmu.LegendreMemory(2, 6, 3.0, trainable_theta=True, mode=mode).double()
    W = torch.randn(4, 12, dtype=torch.float64)
    model = _MemoryOutputs(mem, W)
    u = torch.randn(3, steps, 2, dtype=torch.float64)
    s = torch.randn(3, 12, dtype=torch.float64)

    def loss(p, u1, s1):
        return functional_call(model, p, (u1[None], s1[None])).square().sum()

    _assert_per_sample_gradients(model, loss, u, s)
    v = torch.randn_like(u)
    _, tangent = jvp(lambda u: model(u, s), (u,), (v,))
    _assert_adjoint(lambda u: model(u, s), u, v, tangent)


def _assert_adjoint(f, x: torch.Tensor, v: torch.Tensor, tangent: torch.Tensor) -> None:
    """``tangent = J v`` for ``J`` the Jacobian of ``f`` at ``x``, checked against ordinary
    reverse mode without forming ``J``: ``w . (J v) = (J^T w) . v`` for random ``w``."""
    gen = torch.Generator().manual_seed(3)
    for _ in range(2):
        w = torch.randn(tangent.shape, dtype=tangent.dtype, generator=gen)
        xg = x.detach().requires_grad_(True)
        (Jt_w,) = torch.autograd.grad(f(xg), xg, w)
        torch.testing.assert_close(w @ tangent, (Jt_w * v).sum(), rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("return_sequences", [True, False])
def test_torch_compile_gives_the_eager_numbers(return_sequences):
    """``torch.compile`` (``aot_eager``: Dynamo's graph capture and AOTAutograd's joint graph,
    without a C++ toolchain) traces the whole-tensor path: outputs and gradients as eager."""
    layer = _layer("auto", {"return_sequences": return_sequences})
    x, s = _inputs(layer, 2, 150)
    torch._dynamo.reset()
    compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)
    results = []
    for run in (layer, compiled):
        y, state = run(x, s)
        loss = y.square().sum() + state.square().sum()
        results.append((y, state, *torch.autograd.grad(loss, list(layer.parameters()))))
    for got, expected in zip(results[1], results[0], strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


class _Step(torch.nn.Module):
    """``layer.step`` as a module's forward, for ``functional_call``."""

    def __init__(self, layer: plmu.ParallelLMU) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x, state):
        return self.layer.step(x, state)


@pytest.mark.parametrize("transform", ["vmap", "jvp"])
@pytest.mark.parametrize("steps", [1, 3, 150])  # step; the short-chunk loop; the fused kernels
def test_transforms_over_weights_without_autograd(transform, steps):
    """``vmap`` and ``jvp`` over the output weight (``functional_call``) under
    ``torch.no_grad()``: the folded step map and the weight-keyed caches meet the transform's
    tensors, which have no storage (no address to key a cache on), and give each weight's own
    numbers."""
    layer = _layer("auto", {"hidden_activation": "identity"}).eval()  # y affine in the weight
    x, s = _inputs(layer, 2, steps)
    w = layer.output.weight.detach()
    v = torch.randn(w.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(4))

    def f(w):
        if steps == 1:
            return functional_call(_Step(layer), {"layer.output.weight": w}, (x[:, 0], s))[0]
        return functional_call(layer, {"output.weight": w}, (x, s))[0]

    with torch.no_grad():
        if transform == "vmap":
            got = vmap(f)(torch.stack([w, v]))
            expected = torch.stack([f(w), f(v)])
        else:
            got = jvp(f, (w,), (v,))[1]
            expected = f(w + v) - f(w)
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("transform", ["vmap", "jvp"])
@pytest.mark.parametrize("mode", plmu.memory.MODES)
def test_transforms_over_trainable_theta_without_autograd(transform, mode):
    """``vmap`` and ``jvp`` over a trainable ``theta`` under ``torch.no_grad()``: the memory's
    kernels come from the transform's ``log_theta`` (no storage, so no cache key)."""
    torch.manual_seed(0)
    mem = plmu.LegendreMemory(2, 6, 3.0, trainable_theta=True, mode=mode).double()
    model = _MemoryOutputs(mem, torch.randn(3, 12, dtype=torch.float64))
    u, s = torch.randn(2, 40, 2, dtype=torch.float64), torch.randn(2, 12, dtype=torch.float64)
    log_theta = mem.log_theta.detach()

    def f(log_theta):
        return functional_call(model, {"mem.log_theta": log_theta}, (u, s))

    with torch.no_grad():
        if transform == "vmap":
            thetas = torch.stack([log_theta, log_theta + 0.5])
            got, expected = vmap(f)(thetas), torch.stack([f(t) for t in thetas])
        else:
            got = jvp(f, (log_theta,), (torch.ones_like(log_theta),))[1]
    if transform == "jvp":  # against reverse mode
        expected = torch.autograd.functional.jvp(f, log_theta, torch.ones_like(log_theta))[1]
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-10)


COMPILE_CASES = {
    "layer, carried state": (lambda: _layer("auto", {}), True, {}),
    "last output, lengths": (
        lambda: _layer("auto", {"return_sequences": False}),
        True,
        {"lengths": torch.tensor([150, 7])},
    ),
    "padded sequences": (lambda: _layer("auto", {}), True, {"lengths": torch.tensor([150, 7])}),
    "memory, fft": (lambda: plmu.LegendreMemory(2, 6, 3.0, mode="fft").double(), True, {}),
    "memory, chunked, no autograd": (
        lambda: plmu.LegendreMemory(2, 6, 3.0, mode="chunked").double(),
        False,
        {},
    ),
    "trainable theta, no autograd": (
        lambda: plmu.LegendreMemory(2, 6, 3.0, trainable_theta=True).double(),
        False,
        {},
    ),
}


@pytest.mark.parametrize("case", list(COMPILE_CASES))
def test_torch_compile_with_cold_caches(case):
    """Compiled before any eager call (``fullgraph=True``, ``aot_eager``): the graph computes
    the kernels itself. Dynamo traced neither :meth:`free_horizon`'s data-dependent search nor
    the cache's ``torch.is_inference_mode_enabled()``, so only a layer whose caches an eager
    call had filled compiled."""
    make, grad_enabled, kwargs = COMPILE_CASES[case]
    module = make()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 150, 2, dtype=torch.float64, generator=gen)  # 2 inputs / 2 channels
    s = torch.randn(2, module.state_size, dtype=torch.float64, generator=gen)
    torch._dynamo.reset()
    compiled = torch.compile(module, backend="aot_eager", fullgraph=True)
    with torch.set_grad_enabled(grad_enabled):
        got = compiled(x, s, **kwargs)
        expected = module(x, s, **kwargs)
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12)


def _graphs_backend(graphs: list):
    """A ``torch.compile`` backend that keeps Dynamo's graphs and runs them as they are."""

    def backend(gm: torch.fx.GraphModule, example_inputs):
        graphs.append(gm)
        return gm.forward

    return backend


def _targets(graphs: list) -> set:
    return {node.target for gm in graphs for node in gm.graph.nodes}


@pytest.mark.parametrize("mode", ["auto", "fft", "direct", "chunked"])
@pytest.mark.parametrize("return_sequences", [True, False])
def test_compiled_graph_reads_the_kernel_cache(mode, return_sequences):
    """Under ``torch.compile`` a fixed-theta layer's kernels come from the module's cache
    (``plmu::system_constant``, built once), not from matrix products and FFTs inside the graph
    that every call repeated: the graph holds the operator and no matrix power, and the cache
    holds the kernels after the call; outputs and gradients as eager."""
    layer = _layer(mode, {"return_sequences": return_sequences})
    x, s = _inputs(layer, 2, 40)
    graphs: list = []
    torch._dynamo.reset()
    compiled = torch.compile(layer, backend=_graphs_backend(graphs), fullgraph=True)
    results = []
    for run in (compiled, layer):
        y, state = run(x, s)
        loss = y.square().sum() + state.square().sum()
        results.append((y, state, *torch.autograd.grad(loss, list(layer.parameters()))))
    for got, expected in zip(*results, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
    targets = {str(t) for t in _targets(graphs)}
    assert "plmu.system_constant" in targets
    assert not any("matrix_power" in t for t in targets), targets


def _recording_aot_eager(graphs: list):
    """``aot_eager`` (forward and backward graphs through AOTAutograd), keeping Dynamo's
    graphs."""

    def backend(gm: torch.fx.GraphModule, example_inputs):
        graphs.append(gm)
        return torch._dynamo.lookup_backend("aot_eager")(gm, example_inputs)

    return backend


# the first-order backwards of the tiled kernels, which the compiled backward graph must call
_TILED_BACKWARDS = ("_fold_backward", "_mix_backward", "_synthesis_backward")


@pytest.mark.parametrize(
    ("memory_size", "variant"),
    [(1, None), (2, None), (2, "encoder"), (1, "output"), (2, "trainable theta")],
)
def test_compiled_graph_calls_the_tiled_kernels(memory_size, variant):
    """Under ``torch.compile`` the fused projection calls the eager path's tiled kernels and
    their hand-written backwards as operators (``plmu::fold``, ``plmu::spectral_mix``,
    ``plmu::block_synthesis``; ``plmu::block_convolution`` for one channel). It computed with
    whole-tensor operations instead: whole-batch inverse-FFT buffers, a compiled full-sequence
    training step twice as slow as eager. Outputs and gradients as eager, also when the
    kernel or the input spectra need no gradient (frozen output or encoder weights), and
    with a trainable theta (the kernel's spectrum then needs one too)."""
    from plmu import spectral_ops

    trainable = variant == "trainable theta"
    layer = _layer("auto", {"memory_size": memory_size, "trainable_theta": trainable})
    if variant in ("encoder", "output"):
        getattr(layer, variant).requires_grad_(False)
    params = [p for p in layer.parameters() if p.requires_grad]
    x, s = _inputs(layer, 2, 150)  # two overlap-save blocks
    graphs: list = []
    torch._dynamo.reset()
    compiled = torch.compile(layer, backend=_recording_aot_eager(graphs), fullgraph=True)
    results = []
    for run in (layer, compiled):
        with contextlib.ExitStack() as stack:
            calls = {
                name: stack.enter_context(
                    mock.patch.object(spectral_ops, name, wraps=getattr(spectral_ops, name))
                )
                for name in (*_TILED_BACKWARDS, "_convolution_backward")
            }
            y, state = run(x, s)
            loss = y.square().sum() + state.square().sum()
            results.append((y, state, *torch.autograd.grad(loss, params)))
        if run is compiled:
            backwards = {name for name, call in calls.items() if call.call_count}
    for got, expected in zip(results[1], results[0], strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
    targets = {str(t) for t in _targets(graphs)}
    ops = (
        {"plmu.block_convolution"}
        if memory_size == 1
        else {
            "plmu.spectral_mix",
            "plmu.block_synthesis",
        }
    )
    assert {"plmu.fold", *ops} <= targets, targets
    assert not any("irfft" in t for t in targets), targets  # no whole-batch inverse FFT
    if memory_size == 1:
        expected_backwards = {"_convolution_backward"}
    else:
        expected_backwards = {"_mix_backward", "_synthesis_backward"}
    if variant != "output":  # a frozen output weight: the folded kernel needs no gradient
        expected_backwards.add("_fold_backward")
    assert backwards == expected_backwards


def _complex(*shape: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(len(shape))
    parts = torch.randn(2, *shape, dtype=torch.float64, generator=gen)
    return torch.complex(parts[0], parts[1]).requires_grad_(True)


def _operator_args(name: str, need: tuple[bool, bool]) -> tuple:
    """Arguments of the operator ``name``; ``need`` the gradients a backward operator is asked
    for. Geometry: 3 blocks of 7 steps in frames of 16 (9 frequencies), the valid outputs from
    entry 6, cut at 20 steps."""
    Hs = torch.randn(10, 3, dtype=torch.float64, requires_grad=True)
    Wp = torch.randn(3, 8, dtype=torch.float64, requires_grad=True)
    g = torch.randn(2, 20, 4, dtype=torch.float64)
    return {
        "fold": (Hs, Wp),
        "spectral_mix": (_complex(4, 2, 5), _complex(5, 2, 3)),
        "block_convolution": (_complex(2, 3, 1, 9), _complex(4, 9), 20, 16, 6, 7),
        "block_synthesis": (_complex(2, 3, 4, 9), 20, 16, 6, 7),
        "fold_backward": (_complex(5, 8).detach(), Hs.detach(), Wp.detach(), *need),
        "spectral_mix_backward": (
            _complex(4, 3, 5).detach(),
            _complex(4, 2, 5).detach(),
            _complex(5, 2, 3).detach(),
            *need,
        ),
        "block_convolution_backward": (
            g,
            _complex(2, 3, 1, 9).detach(),
            _complex(4, 9).detach(),
            16,
            6,
            7,
            *need,
        ),
        "block_synthesis_backward": (g, [2, 3, 4, 9], 16, 6, 7),
    }[name]


_OPERATORS = ("fold", "spectral_mix", "block_convolution", "block_synthesis")


@pytest.mark.parametrize(
    ("name", "need"),
    [
        *((op, (True, True)) for op in (*_OPERATORS, "block_synthesis_backward")),
        *(
            (f"{op}_backward", need)
            for op in _OPERATORS[:3]
            for need in [(True, True), (True, False), (False, True)]
        ),
    ],
)
def test_kernel_operators_pass_opcheck(name, need):
    """``torch.library.opcheck``: each tiled kernel's operator and its backward operator have a
    schema, a fake giving the real output's shape, dtype and strides, an autograd registration
    (the forward operators), and the same outputs through AOTAutograd (static and dynamic
    shapes), also when a backward operator is asked for one gradient only.
    ``plmu::block_convolution_backward`` gave other numbers through AOTAutograd: its products
    with lazy ``.conj()`` views went wrong under torch 2.13's aliasing check of a compiled
    graph's first call (compiled autograd got wrong gradients on its first step)."""
    torch.library.opcheck(getattr(torch.ops.plmu, name).default, _operator_args(name, need))


@pytest.mark.parametrize(
    ("kind", "sizes"),
    [
        ("kernel", [10]),
        ("kernel_reversed", [10]),
        ("kernel_sum", [10]),
        ("kernel_rfft_stacked", [10, 16]),
        ("kernel_rfft", [10, 16]),
        ("powers", [5]),
        ("toeplitz", [5]),
        ("matrix_power", [7]),
    ],
)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_system_constant_passes_opcheck(kind, sizes, dtype):
    """``torch.library.opcheck`` of ``plmu::system_constant`` for every kind of kernel: its fake
    gives the cached kernel's shape, dtype and strides, and AOTAutograd the same values."""
    memory = plmu.LegendreMemory(1, 6, 3.0).double()
    args = (memory.Abar, memory._token, kind, sizes, dtype)
    torch.library.opcheck(torch.ops.plmu.system_constant.default, args)


@pytest.mark.parametrize(
    ("memory_size", "trainable"),
    [
        (1, False),
        pytest.param(1, True, marks=pytest.mark.slow),
        pytest.param(2, False, marks=pytest.mark.slow),
    ],
)
def test_compiled_autograd_gives_the_eager_gradients(memory_size, trainable):
    """A training step compiled with compiled autograd on (``torch._dynamo.config.
    compiled_autograd``: the backward is traced too, through the tiled kernels' backward
    operators) gives eager's gradients on its first call and later ones. With one channel the
    first call's gradients were wrong (``plmu::block_convolution_backward``, see
    :func:`test_kernel_operators_pass_opcheck`)."""

    def step(layer, x, s):
        y, state = layer(x, s)
        (y.square().sum() + state.square().sum()).backward()

    kwargs = {"memory_size": memory_size, "trainable_theta": trainable}
    eager = _layer("auto", kwargs)
    x, s = _inputs(eager, 2, 150)  # two overlap-save blocks: the fused path
    step(eager, x, s)
    layer = _layer("auto", kwargs)
    torch._dynamo.reset()
    counters = torch._dynamo.utils.counters
    counters.clear()
    # set before ``torch.compile`` wraps the step, which reads the flag then
    torch._dynamo.config.compiled_autograd = True
    try:
        compiled = torch.compile(step, backend="aot_eager")
        for _call in range(2):
            layer.zero_grad(set_to_none=True)
            compiled(layer, x, s)
            for (name, p), q in zip(layer.named_parameters(), eager.parameters(), strict=True):
                torch.testing.assert_close(p.grad, q.grad, rtol=1e-10, atol=1e-12, msg=name)
        assert counters["compiled_autograd"]["captures"] >= 1  # the backward was compiled
    finally:
        torch._dynamo.config.compiled_autograd = False
        torch._dynamo.reset()


def test_compiled_graph_follows_a_new_theta():
    """A compiled layer given another theta (``load_state_dict``) computes with the new one:
    the kernels come from the module's cache when the graph runs, and the free-response
    horizon baked into the graph is guarded on the module's system (it recompiles)."""
    a, b = _layer("auto", {}), _layer("auto", {})
    b.memory._refresh_discrete(30.0)  # free-response horizon: 39 steps at theta 3, 388 at 30
    b.memory.theta_.fill_(30.0)
    x, s = _inputs(a, 2, 150)  # longer than theta 3's horizon: the overlap-save blocks
    torch._dynamo.reset()
    compiled = torch.compile(a, backend="aot_eager", fullgraph=True)
    with torch.no_grad():
        before = compiled(x, s)[0]
        torch.testing.assert_close(before, a(x, s)[0], rtol=1e-10, atol=1e-12)
        a.load_state_dict(b.state_dict())
        assert a.memory.theta == 30.0
        torch.testing.assert_close(compiled(x, s)[0], b(x, s)[0], rtol=1e-10, atol=1e-12)


def test_compiled_copy_and_shared_layer():
    """A deep copy shares the original's token while its system is the same, and gets its own
    with a new theta; one layer used twice in a graph (as QQP's and SNLI's shared sentence
    encoder is) compiles and matches eager."""
    import copy

    layer = _layer("auto", {})
    twin = copy.deepcopy(layer)
    assert twin.memory._token == layer.memory._token
    twin.memory._refresh_discrete(4.0)
    twin.memory.theta_.fill_(4.0)
    assert twin.memory._token != layer.memory._token

    class Pair(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = layer, twin

        def forward(self, x, s):
            return self.a(x, s)[0] + self.a(x[:, :20], s)[0].sum() + self.b(x, s)[0]

    model = Pair()
    x, s = _inputs(layer, 2, 40)
    torch._dynamo.reset()
    with torch.no_grad():
        got = torch.compile(model, backend="aot_eager", fullgraph=True)(x, s)
        torch.testing.assert_close(got, model(x, s), rtol=1e-10, atol=1e-12)


def test_export_keeps_the_kernels_in_its_graph():
    """``torch.export`` must not meet ``plmu::system_constant``: an exported program names no
    module of this process, so it computes the kernels itself, with eager's numbers."""
    layer = _layer("auto", {})
    x, s = _inputs(layer, 2, 40)
    program = torch.export.export(layer, (x, s))
    assert "plmu" not in str(program.graph)
    for got, expected in zip(program.module()(x, s), layer(x, s), strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)


def test_compile_while_another_thread_builds_a_constant():
    """The flag that lets a kernel build use the cache while Dynamo is active is per thread: a
    graph traced while another thread is inside a build still reads the cache."""
    import threading

    from plmu import graph_constants

    inside, done = threading.Event(), threading.Event()

    def build_elsewhere():
        graph_constants._CONSTANT_BUILD.active = True  # as while _system_constant runs
        inside.set()
        done.wait(30)
        graph_constants._CONSTANT_BUILD.active = False

    thread = threading.Thread(target=build_elsewhere)
    thread.start()
    try:
        inside.wait(30)
        layer = _layer("auto", {})
        x, s = _inputs(layer, 2, 40)
        graphs: list = []
        torch._dynamo.reset()
        with torch.no_grad():
            got = torch.compile(layer, backend=_graphs_backend(graphs), fullgraph=True)(x, s)[0]
        assert "plmu.system_constant" in {str(t) for t in _targets(graphs)}
    finally:
        done.set()
        thread.join()
    with torch.no_grad():
        torch.testing.assert_close(got, layer(x, s)[0], rtol=1e-10, atol=1e-12)


def test_the_compile_time_horizon_is_marked_as_the_public_api_marks():
    """``graph_constants._compiled_horizon`` carries the mark
    ``torch.compiler.assume_constant_result`` gives (set by hand, so that ``import plmu`` does not
    import ``torch._dynamo``): if torch changes how that function marks, this fails."""

    def probe() -> int:
        return 0

    marked = torch.compiler.assume_constant_result(probe)
    assert marked is probe
    horizon = plmu.graph_constants._compiled_horizon
    assert vars(probe) == vars(horizon) == {"_dynamo_marked_constant": True}


def test_import_does_not_load_dynamo():
    """``import plmu`` leaves ``torch._dynamo`` unloaded (it cost 1.3 s of the import)."""
    code = "import sys, plmu; print('torch._dynamo' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False", done.stderr


def _saved_dtypes_backend(saved: list):
    """AOTAutograd with inductor's decompositions and partitioner
    (``min_cut_rematerialization_partition``), its graphs run as they are (no C++ compiler):
    ``saved`` gets the dtypes of what the forward graph returns (the outputs, then what it saves
    for backward)."""
    from torch._dynamo.backends.common import aot_autograd
    from torch._functorch.aot_autograd import make_boxed_func
    from torch._functorch.partitioners import min_cut_rematerialization_partition
    from torch._inductor.decomposition import select_decomp_table

    def forward_compiler(gm: torch.fx.GraphModule, example_inputs):
        (returned,) = (node.args[0] for node in gm.graph.nodes if node.op == "output")
        saved.extend(n.meta["val"].dtype for n in returned if isinstance(n, torch.fx.Node))
        return make_boxed_func(gm)

    return aot_autograd(
        fw_compiler=forward_compiler,
        decompositions=select_decomp_table(),
        bw_compiler=lambda gm, example_inputs: make_boxed_func(gm),
        partition_fn=functools.partial(min_cut_rematerialization_partition, compiler="inductor"),
    )


@pytest.mark.parametrize("return_sequences", [True, False])
def test_compiled_relu_saves_its_output_not_a_bool_mask(return_sequences):
    """Under ``torch.compile`` on the CPU the hidden ReLU's backward reads its float output:
    inductor's partitioner saved ReLU's ``out <= 0`` as a bool tensor beside the output, and
    inductor's vectorised bool stores made a compiled full-sequence training step 1.3x eager's
    time on an AMD EPYC host (docs/performance.md). Gradients as eager's."""
    torch.manual_seed(0)
    layer = plmu.ParallelLMU(2, 3, 6, 3.0, return_sequences=return_sequences)  # ReLU
    x = torch.randn(2, 40, 2)
    saved: list = []
    torch._dynamo.reset()
    compiled = torch.compile(layer, backend=_saved_dtypes_backend(saved), fullgraph=True)
    results = []
    for run in (layer, compiled):
        y, state = run(x)
        loss = y.square().sum() + state.square().sum()
        results.append((y, state, *torch.autograd.grad(loss, list(layer.parameters()))))
    for got, expected in zip(results[1], results[0], strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert saved
    assert torch.bool not in saved, saved

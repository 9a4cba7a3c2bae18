"""``torch.compile`` compiles a layer once for what a training or evaluation loop does.

The counts come from ``torch._dynamo.testing.CompileCounter`` (a backend that counts the frames
Dynamo compiles and runs their graphs as they are: no AOTAutograd, no C++ compiler). Every
recompile costs a trace, and Dynamo stops compiling a function after
``torch._dynamo.config.recompile_limit`` (8) of them: the rest of the run is eager.
"""

import copy
import gc

import pytest
import torch
from torch._dynamo.testing import CompileCounter

import plmu


def _layer(theta: float = 3.0, **kwargs) -> plmu.ParallelLMU:
    torch.manual_seed(0)
    kwargs = {"hidden_activation": "tanh", **kwargs}
    return plmu.ParallelLMU(2, 3, 6, theta, **kwargs).double()


def _x(steps: int = 40, batch: int = 2, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, steps, 2, dtype=torch.float64, generator=gen)


def _close(got, expected) -> None:
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("return_sequences", [True, False])
def test_layers_with_the_same_system_share_the_compiled_graph(return_sequences):
    """Layers compiled one by one (as a stack of blocks often is) with the same order, theta and
    discretizer share one graph: it was guarded on each module (its token, and the module passed
    to the compile-time horizon), so every layer recompiled and the ninth ran eagerly. Each
    still computes with its own weights; a layer with another theta gets a graph of its own."""
    torch._dynamo.reset()
    counter = CompileCounter()
    layers = [_layer(return_sequences=return_sequences) for _ in range(3)]
    for i, layer in enumerate(layers):
        with torch.no_grad():
            layer.output.weight.add_(0.1 * i)
    other = _layer(4.0, return_sequences=return_sequences)
    x = _x()
    with torch.no_grad():
        for layer in layers:
            _close(torch.compile(layer, backend=counter, fullgraph=True)(x), layer(x))
        assert counter.frame_count == 1
        _close(torch.compile(other, backend=counter, fullgraph=True)(x), other(x))
    assert counter.frame_count == 2


@pytest.mark.parametrize("return_sequences", [True, False])
def test_reloading_or_moving_a_layer_does_not_recompile(return_sequences):
    """``load_state_dict`` (a checkpoint, an EMA copy of the weights) and ``.to(device)`` keep the
    compiled graph when the system stays the same: both bumped a counter the graph was guarded
    on, so a loop that did either every epoch recompiled every epoch. A new theta still
    recompiles, and the graph computes with it."""
    layer = _layer(return_sequences=return_sequences)
    torch._dynamo.reset()
    counter = CompileCounter()
    compiled = torch.compile(layer, backend=counter, fullgraph=True)
    x = _x()
    for _ in range(3):
        y, state = compiled(x)
        (y.square().sum() + state.square().sum()).backward()
        layer.load_state_dict(copy.deepcopy(layer.state_dict()))
        layer.to("cpu")
    assert counter.frame_count == 1
    new = _layer(4.0, return_sequences=return_sequences)
    layer.load_state_dict(new.state_dict())
    with torch.no_grad():
        _close(compiled(x), new(x))
    assert counter.frame_count == 2


def test_a_graph_outlives_the_module_that_answered_for_its_system():
    """The kernels of a shared system come from the cache of one of its modules; when that one
    takes another theta, or is gone, another module with the system answers."""
    from plmu.graph_constants import _ANSWERING

    first, second, third = (_layer(3.0625) for _ in range(3))  # a system no other test uses
    token = third.memory._token
    with torch.no_grad():
        third.output.weight.add_(0.5)
    x = _x()
    torch._dynamo.reset()
    with torch.no_grad():
        compiled = torch.compile(third, backend="eager", fullgraph=True)
        expected = third(x)
        _close(compiled(x), expected)
        assert _ANSWERING[token] is first.memory
        first.memory._refresh_discrete(4.0)
        first.memory.theta_.fill_(4.0)
        _close(compiled(x), expected)
        assert _ANSWERING[token] is second.memory
        del second
        gc.collect()
        _close(compiled(x), expected)
        assert _ANSWERING[token] is third.memory


@pytest.mark.parametrize("how", ["float", "to_empty"])
def test_a_graph_gets_its_systems_kernels_from_a_cast_or_emptied_module(how):
    """The module that answers for a system may have been cast (``.float()``) or moved with
    ``to_empty`` since it was built: both kept its token, but the cast rounded its ``Abar`` to
    float32 (the float64 layers' compiled graph then computed with it, 1e-8 off) and
    ``to_empty`` left it uninitialised (the graph computed garbage). The system now keeps its
    values through both."""
    answering = _layer(3.09375)  # a system no other test uses
    if how == "float":
        answering.float()
    else:
        answering.to_empty(device="cpu")
    layer = _layer(3.09375)
    assert layer.memory._token == answering.memory._token
    x = _x()
    torch._dynamo.reset()
    with torch.no_grad():
        _close(torch.compile(layer, backend="eager", fullgraph=True)(x), layer(x))


def test_fft_size_by_comparisons_gives_fft_size():
    """The compiled graph's FFT lengths (bisection over the table of fast lengths) are eager's."""
    from plmu.spectral import _FAST_LENGTHS, _fft_size_by_comparisons, fft_size

    for n in [*range(1, 5000), *_FAST_LENGTHS[-40:], _FAST_LENGTHS[-1] - 1]:
        assert _fft_size_by_comparisons(n) == fft_size(n), n


@pytest.mark.parametrize("dynamic", [True, None])
def test_a_dynamic_length_recompiles_only_for_another_fft_length(dynamic):
    """With dynamic shapes (``dynamic=True``, or Dynamo's automatic dynamic after a second
    length) sequences whose FFT length is the same share the graph: 40, 44 and 46 steps all take
    96-point FFTs here. ``fft_size`` specialised the graph on the length itself, so every new
    length recompiled, and after eight Dynamo ran the layer eagerly."""
    layer = _layer()
    torch._dynamo.reset()
    counter = CompileCounter()
    compiled = torch.compile(layer, backend=counter, dynamic=dynamic, fullgraph=True)
    with torch.no_grad():
        for steps in (40, 44, 46):
            _close(compiled(_x(steps)), layer(_x(steps)))
        assert counter.frame_count == (1 if dynamic else 2)
        compiled(_x(60))  # 119 points: 128-point FFTs
    assert counter.frame_count == (2 if dynamic else 3)


def test_a_memory_without_values_shares_no_system_token():
    """A layer built on the meta device and moved with ``to_empty`` holds no values until
    ``load_state_dict``: its token is its own meanwhile (its kernels, built from uninitialised
    buffers, must not answer for the layers that have that theta), and the system's after."""
    real = _layer()
    with torch.device("meta"):
        empty = _layer()
    empty.to_empty(device="cpu")
    assert empty.memory._token != real.memory._token
    empty.load_state_dict(real.state_dict())
    assert empty.memory._token == real.memory._token
    with torch.no_grad():
        _close(empty(_x()), real(_x()))

"""The layers as a researcher uses them: threads, copies, checkpoints, precision, options.

Every number is checked against a float64 recurrence written here from PAPER.md (the LegT
matrices, zero-order hold by ``scipy.linalg.expm`` of the augmented matrix), not from plmu's own
``legendre_delay``/``discretize``.
"""

import copy
import io
import pickle
import sys
import threading

import numpy as np
import pytest
import scipy.linalg
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import plmu


def paper_system(order: int, theta: float) -> tuple[np.ndarray, np.ndarray]:
    """``(Abar, Bbar)`` of PAPER.md section 1: the LegT ``A``, ``B``, then zero-order hold,
    ``expm([[A, B], [0, 0]] / theta)``."""
    i = np.arange(order)[:, None]
    j = np.arange(order)[None, :]
    A = (2 * i + 1) * np.where(i < j, -1.0, (-1.0) ** (i - j + 1))
    B = (2 * i[:, 0] + 1) * (-1.0) ** i[:, 0]
    M = np.zeros((order + 1, order + 1))
    M[:order, :order] = A
    M[:order, order] = B
    E = scipy.linalg.expm(M / theta)
    return E[:order, :order], E[:order, order]


def reference_layer(layer: plmu.ParallelLMU, x: torch.Tensor, state=None):
    """``ParallelLMU``'s equations (PAPER.md section 3) step by step in float64 NumPy.

    Returns ``(o, m_last)``: ``(batch, time, hidden)`` and ``(batch, memory_size * order)``.
    """
    p = {k: v.detach().double().numpy() for k, v in layer.named_parameters()}
    x = x.detach().double().numpy()
    Bn, T, _ = x.shape
    C, d = layer.memory_size, layer.order
    Abar, Bbar = paper_system(d, layer.memory.theta)
    u = x @ p["encoder.weight"].T + p.get("encoder.bias", 0.0)
    u = layer.memory_activation(torch.from_numpy(u)).numpy()
    m = np.zeros((Bn, C, d)) if state is None else state.double().numpy().reshape(Bn, C, d)
    outs = []
    for t in range(T):
        m = m @ Abar.T + u[:, t, :, None] * Bbar
        z = m.reshape(Bn, C * d)
        if layer.input_to_output:
            z = np.concatenate([z, x[:, t]], axis=1)
        pre = z @ p["output.weight"].T + p.get("output.bias", 0.0)
        outs.append(layer.hidden_activation(torch.from_numpy(pre)).numpy())
    return np.stack(outs, 1), m.reshape(Bn, C * d)


def assert_close(actual: torch.Tensor, reference: np.ndarray, rel: float = 1e-4) -> None:
    actual = actual.detach().double().numpy()
    scale = max(float(np.abs(reference).max()), 1e-12)
    assert np.abs(actual - reference).max() <= rel * scale


# ------------------------------------------------------------------------------ threads


def test_a_cache_entry_added_meanwhile_does_not_break_the_weight_cache():
    """Two threads calling one layer share its kernel cache. A thread replacing its folded
    kernel (a fused inference call of a new length) dropped the old entries by iterating over the
    cache while the other thread could add one: "dictionary changed size during iteration".
    Here the other thread's insertion is made to happen exactly then, from a key compared during
    the iteration."""
    layer = plmu.ParallelLMU(1, 4, 6, 9.0, mode="fused")
    mem = layer.memory

    class Intruder(str):  # a key whose comparison lets "another thread" add an entry
        def __eq__(self, other):
            mem._cache[("added meanwhile", len(mem._cache))] = None
            return str.__eq__(self, other)

        def __ne__(self, other):
            return not self == other

        __hash__ = str.__hash__

    x = torch.randn(2, 30, 1)
    with torch.no_grad():
        layer(x[:, :20])  # caches a folded kernel for 20 steps
        mem._cache[(Intruder("other"),)] = None
        y, state = layer(x)  # a new length: the 20-step kernel is replaced
    want, want_state = reference_layer(layer, x)
    assert_close(y, want)
    assert_close(state, want_state)


def test_two_threads_share_one_layer():
    """One layer called from four threads at once (inference and training calls, several lengths,
    the step form): every result equals the reference."""
    torch.manual_seed(0)
    layer = plmu.ParallelLMU(2, 5, 6, 9.0, memory_size=2)
    xs = [torch.randn(2, T, 2) for T in (1, 3, 8, 40, 200)]
    refs = [reference_layer(layer, x) for x in xs]
    failures: list[str] = []

    def work(grad: bool) -> None:
        try:
            for _ in range(3):
                for x, (want, want_state) in zip(xs, refs):
                    with torch.set_grad_enabled(grad):
                        y, state = layer(x)
                        y_t, _ = layer.step(x[:, 0])
                    assert_close(y, want)
                    assert_close(state, want_state)
                    assert_close(y_t, want[:, 0])
        except Exception as error:  # reported by the main thread
            failures.append(repr(error))

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # switch threads often
    try:
        threads = [threading.Thread(target=work, args=(i % 2 == 0,)) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(interval)
    assert not failures, failures


# ------------------------------------------------------------------------ mixed precision


def _cell_loop(rnn: plmu.LMU, x: torch.Tensor):
    state, ys = None, []
    for x_t in x.unbind(1):
        y_t, state = rnn.cell(x_t, state)
        ys.append(y_t)
    return torch.stack(ys, 1), state


@pytest.mark.parametrize("run", ["LMU", "LMUCell loop"])
@pytest.mark.parametrize("init", ["default", "psmnist"])
@pytest.mark.parametrize("grad", [True, False])
@pytest.mark.parametrize("input_dtype", [torch.float32, torch.bfloat16])
def test_original_lmu_memory_stays_float32_under_autocast(run, init, grad, input_dtype):
    """The original LMU under ``torch.autocast``: its memory recurrence runs in float32, as
    ``LegendreMemory``'s does (README, mixed precision), so the state is not rounded to bfloat16
    every step. Before, ``m @ Abar^T`` ran in bfloat16 each step (and ``m`` was bfloat16 for a
    bfloat16 input): after 400 steps the memory was 7% (default init) or 3% (psMNIST init) off
    the float32 run. The layers around it (``e``, ``W``) still follow autocast."""
    torch.manual_seed(0)
    rnn = plmu.LMU(2, 16, 64, 100.0, init=init)
    forward = rnn if run == "LMU" else lambda x: _cell_loop(rnn, x)
    x = torch.randn(3, 400, 2)
    with torch.no_grad():
        want, (_, want_m) = forward(x)
    with torch.set_grad_enabled(grad), torch.autocast("cpu", dtype=torch.bfloat16):
        y, (_, m) = forward(x.to(input_dtype))
    assert m.dtype == torch.float32
    assert float((m.detach() - want_m).norm() / want_m.norm()) < 0.01
    assert float((y.detach().float() - want).norm() / want.norm()) < 0.02


@pytest.mark.parametrize("mode", ["auto", "fused", "fft", "direct", "chunked", "recurrent"])
@pytest.mark.parametrize("time", [2, 20])
@pytest.mark.parametrize("memory_size", [1, 3])
@pytest.mark.parametrize("grad", [True, False])
def test_output_dtype_under_autocast_is_the_same_in_every_mode(mode, time, memory_size, grad):
    """Under autocast the output is the output layer's, in the autocast dtype, whichever mode
    runs (the mode changes speed, never results). The fused mode returned float32 (its ``W_m m``
    is summed in float32), so ``mode="auto"`` gave bfloat16 below 5 steps and float32 above."""
    torch.manual_seed(0)
    layer = plmu.ParallelLMU(2, 6, 8, 20.0, memory_size=memory_size, mode=mode)
    x = torch.randn(2, time, 2)
    want, want_state = reference_layer(layer, x)
    with torch.set_grad_enabled(grad), torch.autocast("cpu", dtype=torch.bfloat16):
        y, state = layer(x)
        y_last, _ = layer.step(x[:, -1], state)
    assert y.dtype == y_last.dtype == torch.bfloat16
    assert state.dtype == torch.float32
    assert_close(y, want, rel=0.02)
    assert_close(state, want_state, rel=0.02)


@pytest.mark.parametrize("mode", ["auto", "fused", "fft", "direct", "chunked", "recurrent"])
@pytest.mark.parametrize("time", [2, 20])
def test_a_float64_layer_under_autocast_stays_float64(mode, time):
    """Autocast leaves float64 operations alone, so a float64 layer returns float64 in every
    mode, as ``nn.Linear`` does."""
    torch.manual_seed(0)
    layer = plmu.ParallelLMU(2, 6, 8, 20.0, mode=mode).double()
    x = torch.randn(2, time, 2, dtype=torch.float64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, state = layer(x)
    assert y.dtype == state.dtype == torch.float64
    want, want_state = reference_layer(layer, x)
    assert_close(y, want, rel=1e-10)
    assert_close(state, want_state, rel=1e-10)
    rnn = plmu.LMU(2, 6, 8, 20.0).double()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, (h, m) = rnn(x)
    assert y.dtype == h.dtype == m.dtype == torch.float64


# ---------------------------------------------------------------------------------- repr


@pytest.mark.parametrize("trainable_theta", [False, True])
def test_repr_of_a_model_built_on_the_meta_device(trainable_theta):
    """``print(model)`` after building it on the meta device (before ``to_empty`` and loading
    weights, as for large models): the memory's repr read theta's value, which a meta tensor
    does not have ("Tensor.item() cannot be called on meta tensors")."""
    with torch.device("meta"):
        models = [
            plmu.ParallelLMU(2, 3, 6, 10.0, trainable_theta=trainable_theta),
            plmu.LMU(2, 3, 6, 10.0, trainable_theta=trainable_theta),
        ]
    for model in models:
        assert "theta=10" in repr(model)


def test_repr_shows_theta_to_full_precision_and_a_trained_value():
    assert "theta=1234567.5," in repr(plmu.LegendreMemory(1, 4, 1234567.5))  # was 1.23457e+06
    mem = plmu.LegendreMemory(1, 4, 10.0, trainable_theta=True)
    with torch.no_grad():
        mem.log_theta.fill_(np.log(12.5))
    assert "theta=12.5 (trainable)," in repr(mem)  # was "theta=trainable"


# ------------------------------------------------------------------- copies and checkpoints


def _round_trip(module: torch.nn.Module, how: str) -> torch.nn.Module:
    if how == "deepcopy":
        return copy.deepcopy(module)
    if how == "pickle":
        return pickle.loads(pickle.dumps(module))
    buffer = io.BytesIO()
    torch.save(module if how == "torch.save" else module.state_dict(), buffer)
    buffer.seek(0)
    if how == "torch.save":
        return torch.load(buffer, weights_only=False)
    fresh = copy.deepcopy(module)
    with torch.no_grad():
        for p in fresh.parameters():
            p.zero_()
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    return fresh


@pytest.mark.parametrize("how", ["deepcopy", "pickle", "torch.save", "state_dict"])
@pytest.mark.parametrize("trainable_theta", [False, True])
@pytest.mark.parametrize("memory_size", [1, 2])
def test_copies_and_checkpoints_of_a_used_layer(how, trainable_theta, memory_size):
    """A layer whose kernels are cached (inference calls of each path), copied or saved and
    loaded: the copy gives the reference's numbers, and changing it leaves the original alone
    (no cache is shared)."""
    torch.manual_seed(0)
    layer = plmu.ParallelLMU(2, 5, 6, 9.0, memory_size=memory_size, trainable_theta=trainable_theta)
    x, state = torch.randn(2, 40, 2), torch.randn(2, layer.state_size)
    with torch.no_grad():
        for T in (2, 40):
            layer(x[:, :T], state)
        layer.step(x[:, 0], state)
    twin = _round_trip(layer, how)
    want, want_state = reference_layer(layer, x, state)
    for model in (layer, twin):
        with torch.no_grad():
            y, m = model(x, state)
            y_t, _ = model.step(x[:, 0], state)
        assert_close(y, want)
        assert_close(m, want_state)
        assert_close(y_t, want[:, 0])
    with torch.no_grad():
        for p in twin.parameters():
            p.mul_(1.5)
        y, _ = layer(x, state)
        y_twin, _ = twin(x, state)
    assert_close(y, want)
    assert_close(y_twin, reference_layer(twin, x, state)[0])


@pytest.mark.parametrize("how", ["deepcopy", "pickle", "torch.save"])
@pytest.mark.parametrize("trainable_theta", [False, True])
def test_copies_of_a_layer_run_with_fast_weights(how, trainable_theta):
    """MAML-style fast weights (``p - lr * grad`` with ``create_graph=True``: non-leaf tensors)
    run through ``torch.func.functional_call`` under ``torch.no_grad()``: the kernel caches kept
    them, and copying the layer afterwards failed ("Only Tensors created explicitly by the user
    (graph leaves) support the deepcopy protocol"). Copies and pickles leave the caches behind;
    the copy gives the reference's numbers for its own weights."""
    torch.manual_seed(0)
    layer = plmu.ParallelLMU(2, 5, 6, 9.0, trainable_theta=trainable_theta)
    x = torch.randn(2, 40, 2)
    params = dict(layer.named_parameters())
    grads = torch.autograd.grad(layer(x)[0].square().sum(), params.values(), create_graph=True)
    fast = {name: p - 0.1 * g for (name, p), g in zip(params.items(), grads)}
    with torch.no_grad():
        torch.func.functional_call(layer, fast, (x,))
        torch.func.functional_call(layer, fast, (x[:, :2],))  # short chunk: step's folded map
    assert layer.memory._cache and layer._step_cache is not None  # (they hold the fast weights)
    twin = _round_trip(layer, how)
    assert not twin.memory._cache and twin._step_cache is None
    want, want_state = reference_layer(layer, x)
    with torch.no_grad():
        y, m = twin(x)
        y_t, _ = twin.step(x[:, 0])
    assert_close(y, want)
    assert_close(m, want_state)
    assert_close(y_t, want[:, 0])


@pytest.mark.parametrize("how", ["deepcopy", "pickle", "torch.save"])
def test_copies_and_pickles_leave_the_kernel_caches_behind(how):
    """``torch.save(model)`` after inference wrote the cached kernels into the file (a used
    layer's pickle here 4.5 times a fresh one's; up to ``CACHE_MAX_BYTES``, 32 MiB, a memory),
    ``copy.deepcopy`` doubled their memory, and a ``DataLoader`` worker or
    ``torch.multiprocessing`` got them too. A copy or a pickle now holds no cache: a used
    module pickles to the bytes of a fresh one, and its copy builds its own kernels."""
    torch.manual_seed(0)
    modules = [plmu.ParallelLMU(2, 5, 16, 9.0), plmu.LMU(2, 5, 16, 9.0)]
    fresh = [len(pickle.dumps(module)) for module in modules]
    x = torch.randn(2, 300, 2)
    with torch.no_grad():
        for module in modules:
            module(x)
        modules[0].step(x[:, 0])
    layer, rnn = modules
    assert layer.memory._cache and layer._step_cache is not None and rnn.cell.memory._cache
    assert [len(pickle.dumps(module)) for module in modules] == fresh
    twin, rnn_twin = (_round_trip(module, how) for module in modules)
    assert not twin.memory._cache and twin._step_cache is None
    assert not rnn_twin.cell.memory._cache
    with torch.no_grad():
        assert_close(twin(x)[0], reference_layer(layer, x)[0])
        assert_close(rnn_twin(x)[0], rnn(x)[0].numpy())
        assert twin.memory._cache and rnn_twin.cell.memory._cache  # built anew
        for p in twin.parameters():
            p.mul_(1.5)
        assert_close(twin(x)[0], reference_layer(twin, x)[0])


@pytest.mark.parametrize(
    "other, keys",
    [
        (dict(order=8), ["output.weight"]),
        (dict(memory_size=3), ["encoder.weight", "output.weight"]),
        (dict(input_to_output=False), ["output.weight"]),
        (dict(bias=False), ["encoder.bias", "output.bias"]),
        (dict(trainable_theta=True), ["memory.log_theta", "memory.theta_"]),
    ],
)
def test_loading_into_a_layer_built_with_other_options_names_the_keys(other, keys):
    args = dict(input_size=3, hidden_size=5, order=6, theta=9.0, memory_size=2)
    saved = plmu.ParallelLMU(**args).state_dict()
    with pytest.raises(RuntimeError) as error:
        plmu.ParallelLMU(**{**args, **other}).load_state_dict(saved)
    assert all(key in str(error.value) for key in keys)


_MEMORY = dict(memory_size=2, order=6, theta=9.0)
_LAYER = dict(input_size=3, hidden_size=5, order=6, theta=9.0, memory_size=2)


@pytest.mark.parametrize(
    "cls, args, other, key",
    [
        (plmu.LegendreMemory, _MEMORY, dict(discretizer="bilinear"), "_extra_state"),
        (plmu.LegendreMemory, _MEMORY, dict(discretizer="euler", theta=20.0), "_extra_state"),
        (plmu.LegendreMemory, _MEMORY, dict(order=7), "_extra_state"),
        (plmu.LegendreMemory, _MEMORY, dict(memory_size=3), "_extra_state"),
        (plmu.ParallelLMU, _LAYER, dict(discretizer="bilinear"), "memory._extra_state"),
        (plmu.ParallelLMU, _LAYER, dict(hidden_activation="tanh"), "_extra_state"),
        (plmu.ParallelLMU, _LAYER, dict(memory_activation="relu"), "_extra_state"),
        (plmu.LMU, _LAYER, dict(hidden_activation="relu"), "cell._extra_state"),
        (plmu.LMU, _LAYER, dict(discretizer="euler", theta=20.0), "cell.memory._extra_state"),
    ],
)
@pytest.mark.parametrize("strict", [True, False])
def test_loading_weights_saved_with_other_settings_names_the_setting(cls, args, other, key, strict):
    """The discretizer, an activation, or a bare memory's order and channels shape no tensor
    of the state dict: weights saved with ``discretizer="bilinear"`` loaded into a ``"zoh"``
    layer without a word and gave other outputs. The settings are saved beside the weights
    (``_extra_state``) and a state dict saved with others is refused, naming the entry and the
    setting (load_state_dict's RuntimeError), with ``strict=False`` too (as a weight of another
    shape is)."""
    saved = cls(**{**args, **other}).state_dict()
    setting = next(name for name in other if name != "theta")
    with pytest.raises(RuntimeError, match=rf"\n\t{key}: .* saved from a .* with {setting}="):
        cls(**args).load_state_dict(saved, strict=strict)
    cls(**{**args, **other}).load_state_dict(saved, strict=strict)  # the same settings load


@pytest.mark.parametrize(
    "cls, args",
    [
        (plmu.LegendreMemory, dict(_MEMORY, discretizer="bilinear")),
        (plmu.ParallelLMU, dict(_LAYER, discretizer="bilinear", hidden_activation="tanh")),
        (plmu.LMU, dict(_LAYER, hidden_activation="relu")),
    ],
)
def test_state_dicts_written_before_the_settings_were_saved_still_load(cls, args):
    """A state dict of an earlier plmu has no ``_extra_state`` entries: it loads with
    ``strict=True`` (none is reported missing), unchecked, and gives the saved module's
    outputs; the settings are saved as tensors that ``torch.load(weights_only=True)`` reads, and
    ``read_settings`` gives them back."""
    from plmu.saved_config import read_settings

    torch.manual_seed(0)
    module = cls(**args)
    state = module.state_dict()
    settings = {k: read_settings(v) for k, v in state.items() if k.endswith("_extra_state")}
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    assert "bilinear" in str(settings) or "relu" in str(settings)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    assert torch.load(buffer, weights_only=True).keys() == state.keys()
    old = {k: v for k, v in state.items() if not k.endswith("_extra_state")}
    fresh = cls(**args)
    result = fresh.load_state_dict(old, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    u = torch.randn(2, 12, 2 if cls is plmu.LegendreMemory else 3)
    with torch.no_grad():
        for want, got in zip(module(u), fresh(u)):
            if isinstance(want, tuple):
                want, got = want[0], got[0]
            torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_settings_saved_by_a_later_version_are_ignored():
    """An entry this version does not record (a setting a later plmu saves) is not an error;
    an entry that holds no settings is, naming it."""
    from plmu.saved_config import _encode, read_settings

    state = plmu.LegendreMemory(**_MEMORY).state_dict()
    state["_extra_state"] = _encode({**read_settings(state["_extra_state"]), "a_later_setting": 1})
    plmu.LegendreMemory(**_MEMORY).load_state_dict(state)
    not_utf8 = torch.tensor([255], dtype=torch.uint8)
    for bad in ("zoh", torch.tensor([1.0, 2.0]), _encode([1, 2]), not_utf8):
        state["_extra_state"] = bad
        with pytest.raises(RuntimeError, match=r"_extra_state: expected the settings of a Legend"):
            plmu.LegendreMemory(**_MEMORY).load_state_dict(state)
    with pytest.raises(ValueError, match=r"^_extra_state: expected the settings of a Legendre"):
        plmu.LegendreMemory(**_MEMORY).set_extra_state("zoh")


def test_saved_settings_read_back_as_a_dict():
    """``read_settings`` decodes an entry (on any device it was loaded to), and a settings dict
    (as this version's first state dicts held) is taken as it is."""
    from plmu.saved_config import read_settings

    state = plmu.ParallelLMU(**_LAYER, discretizer="bilinear").state_dict()
    assert read_settings(state["memory._extra_state"]) == {
        "discretizer": "bilinear",
        "memory_size": 2,
        "order": 6,
    }
    assert read_settings(state["_extra_state"]) == {
        "hidden_activation": "relu",
        "memory_activation": "identity",
    }
    as_dict = dict(state, **{"memory._extra_state": {"discretizer": "bilinear"}})
    plmu.ParallelLMU(**_LAYER, discretizer="bilinear").load_state_dict(as_dict)
    assert read_settings(torch.zeros(3)) is None and read_settings(None) is None


def test_what_takes_tensors_only_takes_the_whole_state_dict():
    """As docs/library.md ("Saved settings") says: the settings are tensors, so
    ``functional_call`` takes the whole state dict (a dict entry was a TypeError: "is not an
    instance of torch.Tensor"), and so does ``torch.load(weights_only=True)``; an exported
    program's module has no settings entries and loads the state dict with ``strict=False``."""
    torch.manual_seed(0)
    layer = plmu.ParallelLMU(**_LAYER)
    x = torch.randn(2, 12, 3)
    state = layer.state_dict()
    assert all(torch.is_tensor(v) for v in state.values())
    with torch.no_grad():
        want = layer(x)[0]
        torch.testing.assert_close(torch.func.functional_call(layer, state, (x,))[0], want)
    exported = torch.export.export(layer, (x,)).module()
    with pytest.raises(RuntimeError, match=r"Unexpected key\(s\).*_extra_state"):
        exported.load_state_dict(state)
    result = exported.load_state_dict(state, strict=False)
    assert all(key.endswith("_extra_state") for key in result.unexpected_keys)


def test_the_loaded_theta_is_the_layers_theta():
    """``theta`` is part of the state: a layer built with another ``theta`` takes the saved one
    (and its discretisation) on ``load_state_dict``."""
    torch.manual_seed(0)
    saved = plmu.ParallelLMU(2, 5, 6, 9.0)
    layer = plmu.ParallelLMU(2, 5, 6, 40.0)
    x = torch.randn(2, 30, 2)
    with torch.no_grad():
        layer(x)  # caches kernels of theta = 40
    layer.load_state_dict(saved.state_dict())
    assert layer.memory.theta == 9.0
    with torch.no_grad():
        y, _ = layer(x)
    assert_close(y, reference_layer(saved, x)[0])


@pytest.mark.parametrize("mode", ["auto", "fused", "fft", "direct", "chunked", "recurrent"])
@pytest.mark.parametrize("return_sequences", [True, False])
def test_inference_mode_then_training(mode, return_sequences):
    """Kernels cached under ``torch.inference_mode`` do not break a later training step
    ("Inference tensors cannot be saved for backward"), and both give the reference."""
    torch.manual_seed(0)
    layer = plmu.ParallelLMU(1, 4, 6, 9.0, mode=mode, return_sequences=return_sequences)
    x, state = torch.randn(2, 30, 1), torch.randn(2, 6)
    want, want_state = reference_layer(layer, x, state)
    want = want if return_sequences else want[:, -1]
    with torch.inference_mode():
        y, m = layer(x, state)
    assert_close(y, want)
    assert_close(m, want_state)
    y, m = layer(x, state)
    (y.sum() + m.sum()).backward()
    assert_close(y, want)
    assert all(p.grad is not None for p in layer.parameters())


# ------------------------------------------------------------------------------ streaming


@settings(max_examples=20, deadline=None)
@given(
    mode=st.sampled_from(["auto", "fused", "fft", "direct", "chunked", "recurrent"]),
    sizes=st.sampled_from([(1, 1), (3, 2), (2, 1)]),  # (input_size, memory_size)
    chunks=st.lists(
        st.tuples(st.integers(1, 40), st.sampled_from(["forward", "step"]), st.booleans()),
        min_size=1,
        max_size=6,
    ),
    float64=st.booleans(),
)
def test_a_stream_in_any_mix_of_calls_equals_the_reference(mode, sizes, chunks, float64):
    """A stream fed as any mix of ``forward`` chunks and ``step`` calls, each with or without
    autograd (so through the step map, the short-chunk loop, the cached and the recorded
    paths), carrying the state from one call to the next: the outputs and the final state of
    the float64 recurrence."""
    input_size, memory_size = sizes
    torch.manual_seed(0)
    layer = plmu.ParallelLMU(input_size, 4, 6, 9.0, memory_size=memory_size, mode=mode)
    if float64:
        layer.double()
    dtype = layer.output.weight.dtype
    x = torch.randn(2, sum(n for n, _, _ in chunks), input_size, dtype=dtype)
    outputs, state, start = [], None, 0
    for n, call, grad in chunks:
        with torch.set_grad_enabled(grad):
            if call == "step":
                n = 1
                y, state = layer.step(x[:, start], state)
                y = y.unsqueeze(1)
            else:
                y, state = layer(x[:, start : start + n], state)
        outputs.append(y)
        start += n
    want, want_state = reference_layer(layer, x[:, :start])  # (a step takes one step)
    rel = 1e-10 if float64 else 1e-4
    assert_close(torch.cat(outputs, 1), want, rel)
    assert_close(state, want_state, rel)


# ------------------------------------------------------------------------------ float64


@pytest.fixture
def default_float64():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


@pytest.mark.parametrize("make", [plmu.ParallelLMU, plmu.LMU])
def test_a_trainable_theta_follows_the_default_dtype(default_float64, make):
    """Under ``torch.set_default_dtype(torch.float64)`` every parameter is float64, a trainable
    ``log theta`` too (it was always float32: ``theta`` 9.00000036 instead of 9, and a float64
    model held one float32 parameter), so the model starts at the theta it was given."""
    layer = make(2, 4, 6, 9.0, trainable_theta=True)
    assert {p.dtype for p in layer.parameters()} == {torch.float64}
    memory = layer.memory if make is plmu.ParallelLMU else layer.cell.memory
    assert memory.theta == pytest.approx(9.0, rel=1e-15)

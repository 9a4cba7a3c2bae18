"""LegendreMemory: every execution strategy equals the float64 recurrence."""

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

import plmu
from conftest import assert_close_to_reference, reference_memory
from plmu.memory import MODES
from plmu.spectral import fft_size

STRATEGIES = [m for m in MODES if m != "auto"] + ["auto"]


@settings(max_examples=40, deadline=None)
@given(
    mode=st.sampled_from(STRATEGIES),
    batch=st.integers(1, 3),
    time=st.integers(1, 150),
    memory_size=st.integers(1, 3),
    order=st.integers(1, 10),
    theta=st.floats(1.0, 300.0),
    with_state=st.booleans(),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    discretizer=st.sampled_from(["zoh", "bilinear"]),
    chunk_size=st.sampled_from([None, 1, 7, 32]),
)
# torch.linalg.matrix_exp was 4e-9 off here; fixed theta now uses scipy's expm
@example(
    mode="recurrent",
    batch=1,
    time=1,
    memory_size=1,
    order=1,
    theta=21.0,
    with_state=False,
    dtype=torch.float64,
    discretizer="zoh",
    chunk_size=None,
)
def test_every_mode_equals_recurrence(
    mode, batch, time, memory_size, order, theta, with_state, dtype, discretizer, chunk_size
):
    """``chunk_size`` below ``time`` runs ``mode="chunked"`` in several chunks, with a partial
    last one (the default chunk, at least 256 steps for these orders, never split a sequence
    here: a wrong state carried across chunks passed)."""
    mem = plmu.LegendreMemory(
        memory_size, order, theta, discretizer=discretizer, mode=mode, chunk_size=chunk_size
    )
    u = torch.randn(batch, time, memory_size, dtype=dtype)
    state = torch.randn(batch, memory_size * order, dtype=dtype) if with_state else None
    ref = reference_memory(u, order, theta, state, method=discretizer)
    rel = 1e-4 if dtype == torch.float32 else 1e-9
    m, final = mem(u, state)
    assert m.shape == (batch, time, memory_size * order) and m.dtype == dtype
    assert_close_to_reference(m, ref, rel)
    assert_close_to_reference(final, ref[:, -1], rel)
    assert_close_to_reference(mem.last_state(u, state), ref[:, -1], rel)
    W = torch.randn(5, memory_size * order, dtype=dtype)
    assert_close_to_reference(mem.project(u, W, state), ref @ W.double().numpy().T, rel)
    acc = torch.randn(batch, time, 5, dtype=dtype)
    out = mem.project(u, W, state, accumulate=acc.clone())
    # against the sum: out - acc would cancel acc's rounding (~1e-7 in float32) against a
    # projection that can be 1e4 times smaller (theta 169, one step: |W m| ~ 4e-4)
    assert_close_to_reference(out, acc.double().numpy() + ref @ W.double().numpy().T, rel)


@pytest.mark.parametrize("chunk_size", [1, 7, 32, 100])
@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_chunked_mode_in_several_chunks_equals_recurrence(chunk_size, with_state, dtype):
    """``mode="chunked"`` with chunks shorter than the sequence (100 steps: 100 chunks of one
    step, 15 of 7 with a partial last one, 4 of 32, one of 100): the state carried from chunk to
    chunk. The default chunk (at least 256 steps for orders up to 16) never split the sequences
    of the tests above."""
    mem = plmu.LegendreMemory(2, 5, 30.0, mode="chunked", chunk_size=chunk_size)
    u = torch.randn(3, 100, 2, dtype=dtype)
    state = torch.randn(3, 10, dtype=dtype) if with_state else None
    ref = reference_memory(u, 5, 30.0, state)
    rel = 1e-4 if dtype == torch.float32 else 1e-9
    m, final = mem(u, state)
    assert_close_to_reference(m, ref, rel)
    assert_close_to_reference(final, ref[:, -1], rel)


@pytest.mark.parametrize("trainable_theta", [False, True])
@pytest.mark.parametrize("discretizer", ["zoh", "euler", "bilinear"])
@pytest.mark.parametrize("mode", ["recurrent", "fft", "direct", "chunked"])
def test_every_discretizer_through_every_mode(discretizer, mode, trainable_theta):
    """A trainable theta is discretised each call by ``discretize_torch``, a fixed one once by
    ``discretize``: every discretizer against the float64 recurrence, through every mode, the
    last state and the fused projection. A trainable memory that always used zoh passed every
    test before, and a fixed one that used bilinear for euler failed only a warning test."""
    mem = plmu.LegendreMemory(
        2, 6, 20.0, discretizer=discretizer, trainable_theta=trainable_theta
    ).double()
    u = torch.randn(2, 90, 2, dtype=torch.float64)
    state = torch.randn(2, 12, dtype=torch.float64)
    # theta as stored: log(20) held in float32 before .double() is 20 * (1 +- 1e-7)
    ref = reference_memory(u, 6, mem.theta, state, method=discretizer)
    with torch.no_grad():
        m, final = mem(u, state, mode=mode)
        assert_close_to_reference(m, ref, 1e-9)
        assert_close_to_reference(final, ref[:, -1], 1e-9)
        assert_close_to_reference(mem.last_state(u, state), ref[:, -1], 1e-9)
        W = torch.randn(3, 12, dtype=torch.float64)
        assert_close_to_reference(mem.project(u, W, state), ref @ W.numpy().T, 1e-9)


@pytest.mark.parametrize("mode", ["fft", "chunked", "last", "fused"])
def test_long_sequences_float32(mode):
    """Lengths past 10,000 steps in float32 stay within 1e-4 of max |m|."""
    T, order, theta = 10_007, 16, 2_000.0
    mem = plmu.LegendreMemory(2, order, theta, mode="auto" if mode in ("last", "fused") else mode)
    u = torch.randn(2, T, 2)
    state = torch.randn(2, 2 * order)
    ref = reference_memory(u, order, theta, state)
    if mode == "last":
        assert_close_to_reference(mem.last_state(u, state), ref[:, -1])
    elif mode == "fused":
        W = torch.randn(3, 2 * order)
        assert_close_to_reference(mem.project(u, W, state), ref @ W.double().numpy().T)
    else:
        m, final = mem(u, state)
        assert_close_to_reference(m, ref)
        assert_close_to_reference(final, ref[:, -1])


def test_step_equals_recurrence():
    mem = plmu.LegendreMemory(2, 6, 20.0)
    u = torch.randn(3, 40, 2, dtype=torch.float64)
    ref = reference_memory(u, 6, 20.0)
    state = None
    for t in range(40):
        m_t, state = mem.step(u[:, t], state)
        np.testing.assert_allclose(m_t.numpy(), ref[:, t], rtol=1e-10, atol=1e-12)


@settings(max_examples=20, deadline=None)
@given(
    mode=st.sampled_from(STRATEGIES),
    cuts=st.lists(st.integers(1, 60), min_size=1, max_size=5),
)
def test_chunked_streaming_equals_one_call(mode, cuts):
    mem = plmu.LegendreMemory(2, 8, 30.0, mode=mode, chunk_size=16)  # several chunks a call
    T = sum(cuts)
    u = torch.randn(2, T, 2, dtype=torch.float64)
    whole, final = mem(u)
    parts, state, start = [], None, 0
    for n in cuts:
        m, state = mem(u[:, start : start + n], state)
        parts.append(m)
        start += n
    np.testing.assert_allclose(torch.cat(parts, 1).numpy(), whole.numpy(), atol=1e-10)
    np.testing.assert_allclose(state.numpy(), final.numpy(), atol=1e-10)


@pytest.mark.parametrize("mode", STRATEGIES)
def test_lengths_give_each_sequence_its_own_final_state(mode):
    mem = plmu.LegendreMemory(2, 5, 12.0, mode=mode)
    u = torch.randn(4, 30, 2, dtype=torch.float64)
    state = torch.randn(4, 10, dtype=torch.float64)
    lengths = torch.tensor([30, 1, 17, 9])
    _, final = mem(u, state, lengths=lengths)
    last = mem.last_state(u, state, lengths=lengths)
    for b, n in enumerate(lengths.tolist()):
        _, alone = mem(u[b : b + 1, :n], state[b : b + 1])
        np.testing.assert_allclose(final[b].numpy(), alone[0].numpy(), atol=1e-10)
        np.testing.assert_allclose(last[b].numpy(), alone[0].numpy(), atol=1e-10)


@pytest.mark.parametrize("mode", ["recurrent", "fft", "direct", "chunked"])
def test_gradients_gradcheck(mode):
    mem = plmu.LegendreMemory(2, 4, 7.0, mode=mode, trainable_theta=True).double()
    u = torch.randn(2, 7, 2, dtype=torch.float64, requires_grad=True)
    s = torch.randn(2, 8, dtype=torch.float64, requires_grad=True)
    log_theta = mem.log_theta.detach().clone().requires_grad_(True)

    def f(u, s, log_theta):
        return torch.func.functional_call(mem, {"log_theta": log_theta}, (u, s))

    assert torch.autograd.gradcheck(f, (u, s, log_theta), fast_mode=True)


class _LastAndProject(torch.nn.Module):
    def __init__(self, mem):
        super().__init__()
        self.mem = mem

    def forward(self, u, s, W):
        return self.mem.last_state(u, s), self.mem.project(u, W, s)


def test_gradients_gradcheck_last_state_and_project():
    mem = plmu.LegendreMemory(2, 4, 7.0, trainable_theta=True).double()
    wrap = _LastAndProject(mem)
    u = torch.randn(2, 7, 2, dtype=torch.float64, requires_grad=True)
    s = torch.randn(2, 8, dtype=torch.float64, requires_grad=True)
    W = torch.randn(3, 8, dtype=torch.float64, requires_grad=True)
    log_theta = mem.log_theta.detach().clone().requires_grad_(True)

    def f(u, s, W, log_theta):
        return torch.func.functional_call(wrap, {"mem.log_theta": log_theta}, (u, s, W))

    assert torch.autograd.gradcheck(f, (u, s, W, log_theta), fast_mode=True)


def test_trainable_theta_learns_and_stays_positive():
    mem = plmu.LegendreMemory(1, 6, 10.0, trainable_theta=True)
    target_mem = plmu.LegendreMemory(1, 6, 25.0)
    u = torch.randn(4, 80, 1)
    target, _ = target_mem(u)
    opt = torch.optim.Adam(mem.parameters(), lr=0.05)
    losses = []
    for _ in range(60):
        opt.zero_grad()
        loss = ((mem(u)[0] - target) ** 2).mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0]
    assert 15.0 < mem.theta < 35.0


def test_cache_follows_state_dict_and_theta():
    a = plmu.LegendreMemory(1, 4, 10.0)
    b = plmu.LegendreMemory(1, 4, 50.0)
    u = torch.randn(1, 100, 1)
    a(u)  # fills a's cache
    a.load_state_dict(b.state_dict())
    assert a.theta == 50.0
    np.testing.assert_allclose(a(u)[0].numpy(), b(u)[0].numpy(), atol=1e-6)


def test_kernels_of_many_lengths_stay_cached():
    """Batches padded to their longest sequence come in many lengths (IWSLT: about 150, with a
    few entries each); the cache was cleared whenever it passed 64 entries, so a second pass
    over the lengths rebuilt every kernel. It now drops only its least recently used entries."""
    mem = plmu.LegendreMemory(1, 8, 10.0)
    u = torch.randn(2, 150, 1)
    for _ in range(2):
        for n in range(1, 151):
            mem(u[:, :n])
        if _ == 0:
            first = dict(mem._cache)
    assert len(first) > 64
    assert all(mem._cache.get(key) is value for key, value in first.items())  # none rebuilt


@torch.no_grad()  # a kernel recording a gradient for a trainable theta is never cached
def test_kernel_cache_drops_its_oldest_entries_past_its_bounds(monkeypatch):
    # a trainable theta keeps a ("theta",) marker in the cache, which always stays
    mem = plmu.LegendreMemory(1, 8, 10.0, trainable_theta=True)
    discrete = ("discrete", torch.device("cpu"))

    def kernel_lengths() -> list[int]:
        return [key[1] for key in mem._cache if key[0] == "kernel"]

    monkeypatch.setattr(plmu.memory, "CACHE_MAX_ENTRIES", 7)
    kernels = {n: mem.kernel(n) for n in range(1, 6)}  # theta, discrete and 5 kernels
    assert mem.kernel(1) is kernels[1]
    mem.kernel(6)  # one too many: the oldest entry after the theta marker goes
    assert discrete not in mem._cache
    assert kernel_lengths() == [1, 2, 3, 4, 5, 6]
    mem.kernel(7)  # discrete is built again (dropping length 1), then length 2 goes
    assert kernel_lengths() == [3, 4, 5, 6, 7]
    assert next(iter(mem._cache)) == ("theta",)
    # a bound in bytes: 8 float64 values (64 bytes) a kernel step, beside theta and discrete
    monkeypatch.setattr(plmu.memory, "CACHE_MAX_ENTRIES", 100)
    others = sum(plmu.memory._nbytes(v) for k, v in mem._cache.items() if k[0] != "kernel")
    monkeypatch.setattr(plmu.memory, "CACHE_MAX_BYTES", others + 64 * (100 + 18))
    big = mem.kernel(100)  # 125 steps in all: 3 and 4 go
    assert kernel_lengths() == [5, 6, 7, 100]
    mem.kernel(200)  # more than the bound on its own: cached, all else but theta dropped
    assert list(mem._cache) == [("theta",), ("kernel", 200, torch.float64, torch.device("cpu"))]
    assert mem.kernel(100) is not big


def test_kernel_cache_counts_each_storage_once(monkeypatch):
    """A weight-keyed entry holds the weight's base tensor and its ``detach()``: one storage,
    counted twice against ``CACHE_MAX_BYTES`` (entries were dropped at half the bound). Each
    storage now counts once, across entries too, and dropping an entry frees only the storages
    no other entry holds (a small view kept a whole weight alive while counting its own bytes)."""
    mem = plmu.LegendreMemory(1, 4, 10.0)
    mem._cache.clear()
    w, v, x = torch.zeros(1000), torch.zeros(1000), torch.zeros(1000)  # 4,000 bytes each
    assert plmu.memory._nbytes((w, w.detach(), w[:10])) == 4000
    monkeypatch.setattr(plmu.memory, "CACHE_MAX_BYTES", 8000)
    mem._cache_put(("a",), (w, w.detach()))
    mem._cache_put(("b",), (v, v.detach()))
    mem._cache_put(("c",), (w[:5],))  # w again: no new bytes
    assert list(mem._cache) == [("a",), ("b",), ("c",)]
    mem._cache_put(("d",), x)  # 12,000 bytes: dropping a frees nothing while c holds w
    assert list(mem._cache) == [("c",), ("d",)]


def test_fft_size_is_smooth_and_large_enough():
    for n in [1, 2, 7, 100, 1023, 1567, 20001]:
        k = fft_size(n)
        assert k >= n
        r = k
        for p in (2, 3, 5):
            while r % p == 0:
                r //= p
        assert r == 1
        assert k < 2 * n + 2
        assert k % min(32, 1 << (n.bit_length() - 1)) == 0  # pocketfft is slow on odd-heavy sizes
    # smallest such length: no 5-smooth multiple of 32 lies in [n, k)
    for n in range(1, 3000):
        k = fft_size(n)
        step = min(32, 1 << max(0, n.bit_length() - 1))
        for m in range(n, k):
            r = m
            for p in (2, 3, 5):
                while r % p == 0:
                    r //= p
            assert r != 1 or m % step != 0, (n, k, m)


def test_repr_and_state_size():
    mem = plmu.LegendreMemory(3, 5, 10.0)
    assert mem.state_size == 15
    assert "order=5" in repr(mem) and "theta=10" in repr(mem)


def test_dtype_casts_keep_the_system_matrices_float64():
    mem = plmu.LegendreMemory(1, 8, 100.0).float()
    assert mem.A.dtype == mem.Abar.dtype == torch.float64
    u = torch.randn(2, 300, 1)
    ref = reference_memory(u, 8, 100.0)
    assert_close_to_reference(mem(u)[0], ref)


@pytest.mark.parametrize("cast", ["float", "half", "bfloat16"])
def test_dtype_casts_keep_theta_and_the_system_matrices_exact(cast):
    """``.float()``, ``.half()`` and ``.to(torch.bfloat16)`` (Lightning's "16-true" and
    "bf16-true" precisions) leave theta and the float64 system matrices bit for bit: they were
    cast to the dtype and back, so a bfloat16 layer of theta 3.1 computed, and saved, theta
    3.09375, with ``Abar`` rounded to 8 bits of mantissa."""
    want = plmu.ParallelLMU(2, 3, 6, 3.1)
    layer = plmu.ParallelLMU(2, 3, 6, 3.1)
    layer.to(getattr(torch, cast))
    assert layer.memory.theta == 3.1
    assert layer.state_dict()["memory.theta_"].item() == 3.1
    for name, tensor in want.memory.named_buffers():
        assert torch.equal(getattr(layer.memory, name), tensor), name


@pytest.mark.parametrize("trainable_theta", [False, True])
def test_built_under_a_default_device_everything_is_there(trainable_theta):
    """``with torch.device(...)`` (e.g. Lightning's ``init_module``) puts the buffers where the
    parameters go; ``meta`` stands in for ``cuda`` here (and has no values to read)."""
    with torch.device("meta"):
        layer = plmu.ParallelLMU(3, 5, 6, 20.0, memory_size=2, trainable_theta=trainable_theta)
    tensors = dict(layer.named_parameters()) | dict(layer.named_buffers())
    assert "memory.A" in tensors and (trainable_theta or "memory.Abar" in tensors)
    assert {name: t.device.type for name, t in tensors.items()} == dict.fromkeys(tensors, "meta")


@pytest.mark.parametrize("assign", [False, True])
@pytest.mark.parametrize("trainable_theta", [False, True])
def test_meta_init_then_load_state_dict_gives_the_same_layer(trainable_theta, assign):
    """Meta-device init (``to_empty`` leaves every buffer without values), then
    ``load_state_dict``: the non-persistent system matrices are rebuilt too. Or no
    ``to_empty`` and ``load_state_dict(assign=True)``: the loaded tensors replace the meta ones,
    and the system matrices, which no state dict holds, were rebuilt on the meta device (the
    forward failed: "Cannot copy out of meta tensor"); they now go where theta went."""
    args = dict(input_size=3, hidden_size=5, order=6, theta=20.0, memory_size=2)
    ref = plmu.ParallelLMU(**args, trainable_theta=trainable_theta)
    with torch.device("meta"):
        layer = plmu.ParallelLMU(**args, trainable_theta=trainable_theta)
    if not assign:
        layer.to_empty(device="cpu")
    layer.load_state_dict(ref.state_dict(), assign=assign)
    for name, tensor in ref.memory.named_buffers():
        assert torch.equal(getattr(layer.memory, name), tensor), name
    x = torch.randn(2, 40, 3)
    torch.testing.assert_close(layer(x)[0], ref(x)[0], rtol=0, atol=0)


@pytest.mark.parametrize("to_empty", [False, True])
@pytest.mark.parametrize("trainable_theta", [False, True])
def test_meta_init_then_loading_the_weights_in_parts(trainable_theta, to_empty):
    """A state dict without the memory's theta (``strict=False``: the readout's weights first,
    the rest later) leaves the memory as it is: every memory discretised its theta on any load,
    loaded or not, so a layer built on the meta device failed ("Tensor.item() cannot be called
    on meta tensors") and one moved with ``to_empty`` discretised an uninitialised theta
    ("theta must be a positive finite number", or a system of garbage)."""
    args = dict(input_size=3, hidden_size=5, order=6, theta=20.0, trainable_theta=trainable_theta)
    ref = plmu.ParallelLMU(**args)
    with torch.device("meta"):
        layer = plmu.ParallelLMU(**args)
    if to_empty:
        layer.to_empty(device="cpu")
        with torch.no_grad():  # what the uninitialised theta may hold
            (layer.memory.log_theta if trainable_theta else layer.memory.theta_).fill_(-1.0)
    saved = ref.state_dict()
    first = {k: v for k, v in saved.items() if not k.startswith("memory.")}
    layer.load_state_dict(first, strict=False, assign=not to_empty)
    layer.load_state_dict(saved, assign=not to_empty)
    x = torch.randn(2, 40, 3)
    torch.testing.assert_close(layer(x)[0], ref(x)[0], rtol=0, atol=0)


def test_reset_parameters_gives_a_trainable_theta_back_its_initial_value():
    layer = plmu.ParallelLMU(2, 4, 6, 20.0, trainable_theta=True)
    with torch.no_grad():
        layer.memory.log_theta.add_(1.0)
    assert layer.memory.theta == pytest.approx(20.0 * np.e, rel=1e-5)
    layer.reset_parameters()
    assert layer.memory.theta == pytest.approx(20.0, rel=1e-6)
    cell = plmu.LMUCell(2, 4, 6, 20.0, trainable_theta=True)
    with torch.no_grad():
        cell.memory.log_theta.add_(1.0)
    cell.reset_parameters()
    assert cell.memory.theta == pytest.approx(20.0, rel=1e-6)


def test_sizes_may_be_numpy_integers():
    layer = plmu.ParallelLMU(np.int64(3), np.int32(5), np.int64(6), 20.0, memory_size=np.int64(2))
    assert type(layer.input_size) is int and type(layer.memory.memory_size) is int
    assert layer(torch.randn(1, 7, 3))[0].shape == (1, 7, 5)
    with pytest.raises(TypeError, match="hidden_size must be an int"):
        plmu.ParallelLMU(3, 5.0, 6, 20.0)
    with pytest.raises(TypeError, match="memory_size must be an int"):
        plmu.LegendreMemory(np.True_, 6, 20.0)

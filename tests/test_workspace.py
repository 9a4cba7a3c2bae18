"""The original LMU's reused sequence buffers (plmu.workspace): memory handed out again only when
nothing uses it, and training, inference, kept outputs and retained graphs unchanged by it."""

from __future__ import annotations

import copy
import gc
import pickle
import threading
import weakref

import pytest
import torch

from plmu import LMU
from plmu import workspace as ws_module
from plmu.bench import peak_memory
from plmu.workspace import Workspace, clear_workspaces, workspace_of


@pytest.fixture
def small_blocks(monkeypatch):
    """Every buffer from the workspace, however small (the tests' sizes are tiny)."""
    monkeypatch.setattr(ws_module, "MIN_BYTES", 0)


def ptr(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()


def test_freed_block_is_handed_out_again(small_blocks):
    ws = Workspace()
    like = torch.zeros((), dtype=torch.float64)
    a = ws.empty((3, 4), like)
    assert a.shape == (3, 4) and a.dtype == torch.float64 and a.is_contiguous()
    address = ptr(a)
    b = ws.empty((3, 4), like)  # a still alive: a new block
    assert ptr(b) != address
    del a
    c = ws.empty((2, 5), like)  # fits into a's block, now free
    assert ptr(c) == address
    assert ws.nbytes == 2 * 12 * 8


def test_a_view_or_saved_tensor_keeps_its_block(small_blocks):
    ws = Workspace()
    like = torch.zeros(())
    a = ws.empty((4, 4), like)
    address = ptr(a)
    view = a[1:]
    del a
    assert ptr(ws.empty((4, 4), like)) != address  # the view still uses it
    del view
    w = torch.ones(16, requires_grad=True)
    buf = ws.empty((16,), like).fill_(2.0)
    assert ptr(buf) == address
    y = (w * buf).sum()  # buf saved for backward
    del buf
    assert ptr(ws.empty((16,), like)) != address
    y.backward()
    torch.testing.assert_close(w.grad, torch.full((16,), 2.0))


def test_smallest_free_block_that_fits_and_oldest_dropped(small_blocks):
    ws = Workspace(max_blocks=2)
    like = torch.zeros(())
    big, small = ws.empty((100,), like), ws.empty((10,), like)
    big_ptr, small_ptr = ptr(big), ptr(small)
    del big, small
    assert ptr(ws.empty((5,), like)) == small_ptr  # the smaller of the two that fit
    held = [ws.empty((100,), like), ws.empty((100,), like)]  # big's block, then a third
    assert ptr(held[0]) == big_ptr
    # past two blocks, the free one (small) goes, not the older one in use
    assert [b.data_ptr() for b in ws._blocks] == [ptr(t) for t in held]
    held[0].fill_(3.0)
    ws.clear()
    assert ws.nbytes == 0
    assert torch.equal(held[0], torch.full((100,), 3.0))  # a dropped block lives on in its tensor


def test_what_does_not_come_from_it(monkeypatch):
    ws = Workspace()
    small = ws.empty((4,), torch.zeros(()))  # below MIN_BYTES
    assert ws.nbytes == 0 and small.shape == (4,)
    monkeypatch.setattr(ws_module, "MIN_BYTES", 0)
    meta = ws.empty((4,), torch.zeros((), device="meta"))  # not CPU
    assert meta.device.type == "meta" and ws.nbytes == 0
    # deterministic algorithms fill new memory with NaN: a reused block would not be
    deterministic = torch.are_deterministic_algorithms_enabled()
    fill = torch.utils.deterministic.fill_uninitialized_memory
    try:
        torch.use_deterministic_algorithms(True)
        torch.utils.deterministic.fill_uninitialized_memory = True
        assert torch.isnan(ws.empty((4,), torch.zeros(()))).all()
        assert ws.nbytes == 0
    finally:
        torch.use_deterministic_algorithms(deterministic)
        torch.utils.deterministic.fill_uninitialized_memory = fill
    monkeypatch.setattr(ws_module, "_use_count", None)  # without the private count: never
    ws.empty((4,), torch.zeros(()))
    assert ws.nbytes == 0


def _lmu(return_sequences: bool = True) -> LMU:
    torch.manual_seed(0)
    return LMU(2, 5, 4, 6.0, return_sequences=return_sequences, hidden_to_memory=True).double()


def _train(model: LMU, xs: list[torch.Tensor]) -> list[torch.Tensor]:
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for x in xs:
        opt.zero_grad()
        y, _ = model(x)
        loss = y.square().mean()
        loss.backward()
        opt.step()
        losses.append(loss.detach())
    return losses


@pytest.mark.parametrize("return_sequences", [True, False])
def test_training_reuses_memory_and_matches_fresh_buffers(small_blocks, return_sequences):
    xs = [torch.randn(3, 7, 2, dtype=torch.float64) for _ in range(4)]
    pooled = _lmu(return_sequences)
    losses = _train(pooled, xs)
    plain = _lmu(return_sequences)
    ws_module._attach(plain, Workspace(max_blocks=0))  # keeps nothing: fresh buffers
    assert torch.equal(torch.stack(_train(plain, xs)), torch.stack(losses))
    for p, q in zip(plain.parameters(), pooled.parameters()):
        assert torch.equal(p, q)
    kept = workspace_of(pooled)
    blocks = list(kept._blocks)
    assert blocks  # the steps' buffers came from it ...
    _train(pooled, xs)
    assert kept._blocks == blocks  # ... and later steps take the same blocks again


def test_kept_outputs_and_retained_graph_are_not_overwritten(small_blocks):
    model = _lmu(return_sequences=True)
    x1, x2 = (torch.randn(3, 7, 2, dtype=torch.float64) for _ in range(2))
    # inference: the outputs a caller keeps are its own
    with torch.no_grad():
        y1, (h1, m1) = model(x1)
        kept = [t.clone() for t in (y1, h1, m1)]
        model(x2)
    assert all(torch.equal(a, b) for a, b in zip((y1, h1, m1), kept))
    # a graph kept for a second backward keeps its buffers through another step
    y1, _ = model(x1)
    loss1 = y1.square().sum()
    loss1.backward(retain_graph=True)
    first = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model(x2)[0].square().sum().backward()
    model.zero_grad()
    loss1.backward()
    for p, g in zip(model.parameters(), first):
        torch.testing.assert_close(p.grad, g, rtol=0, atol=0)


def test_threads_share_a_module(small_blocks):
    model = _lmu(return_sequences=True)
    xs = [torch.randn(3, 9, 2, dtype=torch.float64) for _ in range(4)]
    with torch.no_grad():
        want = [model(x)[0] for x in xs]
    got: dict[int, list[torch.Tensor]] = {}

    def run(i: int) -> None:
        outs = []
        for _ in range(20):
            y, _ = model(xs[i])
            y.square().sum().backward()
            outs.append(y.detach())
        got[i] = outs

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(xs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, outs in got.items():
        for y in outs:
            assert torch.equal(y, want[i])


def test_module_state_unchanged(small_blocks):
    model = _lmu()
    _train(model, [torch.randn(2, 5, 2, dtype=torch.float64)])
    assert workspace_of(model).nbytes > 0
    keys = set(model.state_dict())
    assert keys == set(_lmu().state_dict())
    clone = copy.deepcopy(model)
    again = pickle.loads(pickle.dumps(model))
    x = torch.randn(2, 5, 2, dtype=torch.float64)
    with torch.no_grad():
        assert torch.equal(clone(x)[0], model(x)[0]) and torch.equal(again(x)[0], model(x)[0])
    clear_workspaces()
    assert workspace_of(model).nbytes == 0


def test_peak_memory_counts_the_step_own_buffers():
    """The bench's peak drops the kept blocks first: a step's buffers count as if fresh."""

    def measure(workspace: Workspace | None) -> int | None:
        torch.manual_seed(0)
        model = LMU(1, 64, 64, 100.0, return_sequences=True)
        if workspace is not None:
            ws_module._attach(model, workspace)
        # h, m and h's gradient: 41 MB each, above glibc's largest mmap threshold (32 MiB), so
        # each comes from and goes back to the kernel whatever earlier tests left in the heap
        x = torch.randn(64, 2500, 1)

        def step() -> None:
            model.zero_grad()
            model(x)[0].sum().backward()

        step()
        return peak_memory(step, torch.device("cpu"))

    kept = Workspace()
    pooled = measure(kept)
    if pooled is None:
        pytest.skip("no /proc here")
    assert kept.nbytes >= 3 * 40 * 10**6  # the blocks were there before the measured step
    fresh = measure(Workspace(max_blocks=0))
    assert pooled >= 0.8 * fresh, (pooled, fresh)


def test_a_module_that_defines_eq_has_a_workspace_of_its_own(small_blocks):
    """Kept by identity, not by hash and equality: a subclass defining ``__eq__`` alone is
    unhashable (its forward raised TypeError), one with an always-equal ``__eq__`` and a constant
    hash shared another module's blocks."""

    class Unhashable(LMU):
        def __eq__(self, other: object) -> bool:
            return self is other

    class AllEqual(LMU):
        def __eq__(self, other: object) -> bool:
            return isinstance(other, AllEqual)

        def __hash__(self) -> int:
            return 0

    x = torch.randn(2, 5, 2, dtype=torch.float64)
    for kind in (Unhashable, AllEqual):
        one, two = (
            torch.manual_seed(0) and kind(2, 5, 4, 6.0, return_sequences=True).double()
            for _ in range(2)
        )
        with torch.no_grad():
            assert torch.equal(one(x)[0], two(x)[0])
        assert workspace_of(one) is workspace_of(one)
        assert workspace_of(one) is not workspace_of(two)
        kept = weakref.ref(workspace_of(one))
        del one
        gc.collect()
        assert kept() is None  # dropped with its module


def test_a_block_moved_into_shared_memory_is_not_handed_out_again(small_blocks):
    """``share_memory_()`` (as ``torch.multiprocessing`` does to a tensor it sends) moves the
    block's memory into a shared segment another process maps: reused, the next call's buffer
    overwrote what that process reads."""
    model = _lmu(return_sequences=True)
    x1, x2 = (torch.randn(1, 7, 2, dtype=torch.float64) for _ in range(2))
    with torch.no_grad():
        sent = model(x1)[0]  # batch 1: the output is a view of the kept block
        want = sent.clone()
        sent.share_memory_()
        fd, size = sent.untyped_storage()._share_fd_cpu_()
        # the receiving process's mapping of the same memory
        storage = torch.UntypedStorage._new_shared_fd_cpu(fd, size)
        received = torch.empty(0, dtype=sent.dtype).set_(
            storage, sent.storage_offset(), sent.shape, sent.stride()
        )
        del sent
        model(x2)
    assert torch.equal(received, want)
    assert not any(block.is_shared() for block in workspace_of(model)._blocks)


def test_past_max_blocks_the_oldest_used_block_goes(small_blocks):
    """As documented: free blocks go first, then the oldest used ones; the new block (not yet
    held by its tensor when the count was read) counted as free and went instead."""
    ws = Workspace(max_blocks=2)
    like = torch.zeros(())
    held = [ws.empty((10,), like) for _ in range(3)]
    assert [b.data_ptr() for b in ws._blocks] == [ptr(t) for t in held[1:]]


def test_a_block_left_idle_is_dropped(small_blocks):
    """A block a larger evaluation batch needed once goes after a few training steps."""
    model = _lmu(return_sequences=True)
    train = [torch.randn(2, 7, 2, dtype=torch.float64) for _ in range(2)]
    _train(model, train)
    kept = workspace_of(model)
    small = kept.nbytes
    with torch.no_grad():
        model(torch.randn(64, 7, 2, dtype=torch.float64))
    assert kept.nbytes > small
    _train(model, train * (ws_module.MAX_IDLE // 2))
    assert kept.nbytes == small


@pytest.mark.parametrize("grad", [False, True])
@pytest.mark.parametrize("shape", [(1, 7, 2), (3, 1, 2)])
def test_outputs_at_batch_or_time_1_are_copies(small_blocks, grad, shape):
    """At batch (or time) 1 the transposed sequence is already contiguous: the output is still a
    tensor of its own, not a view of a kept block (which a saved output would write whole)."""
    model = _lmu(return_sequences=True)
    x = torch.randn(*shape, dtype=torch.float64)
    with torch.set_grad_enabled(grad):
        y, _ = model(x)
    blocks = {b.data_ptr() for b in workspace_of(model)._blocks}
    assert blocks and y.untyped_storage().data_ptr() not in blocks
    assert y.untyped_storage().nbytes() == y.numel() * y.element_size()

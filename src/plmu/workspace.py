"""Reused CPU memory for the original LMU's sequence buffers (:mod:`plmu.bptt`).

A training step of :class:`plmu.LMU` writes every step's state into a few large buffers (at the
psMNIST configuration three of 66-80 MB: ``h`` and ``m`` for every step, and ``h``'s gradient).
PyTorch's CPU allocator does not cache: each step would take that memory fresh from the kernel,
which zeroes it page by page (about 30 ms a step here), and, with transparent huge pages, now and
then compacts memory first (a step of 950 ms then takes 1,500). A :class:`Workspace` keeps the
memory of the last buffers and hands it out again once nothing uses it any more.

"Nothing uses it" is read from the memory's reference count: every tensor on it (a view, a tensor
saved for backward, an output) holds a reference, the workspace itself one. So memory still in
use (a graph kept with ``retain_graph=True``, an output the caller holds) is never handed out:
the buffer is then allocated anew, as without a workspace. Memory moved into shared memory
(``share_memory_()`` on an output, as ``torch.multiprocessing`` does to a tensor it sends) is
dropped, never handed out again: another process may map it.
"""

from __future__ import annotations

import math
import threading
import weakref

import torch

# buffers smaller than this come from the allocator (malloc keeps small blocks itself)
MIN_BYTES = 1 << 20
# the most memory blocks a workspace keeps (a training step of an LMU uses three or four)
MAX_BLOCKS = 8
# a free block not handed out during this many hand-outs is dropped (a training step of an LMU
# makes three or four: a block a larger evaluation batch needed once goes after a few steps)
MAX_IDLE = 32

# the reference count of a storage (private: without it nothing is reused)
_use_count = getattr(torch._C, "_storage_Use_Count", None)


def _is_free(block: torch.UntypedStorage) -> bool:
    """Whether no tensor uses ``block``: only the workspace holds a reference to it."""
    return _use_count(block._cdata) == 1


class Workspace:
    """Memory blocks kept between calls, handed out as new tensors when free.

    Only CPU tensors of at least :data:`MIN_BYTES` come from it; others, and every tensor while
    deterministic algorithms fill uninitialised memory, come from ``new_empty``. It keeps up to
    :data:`MAX_BLOCKS` blocks, dropping the oldest free ones past them, then the oldest used ones (a
    dropped block still in use lives on in its tensors); it drops a free block not handed out
    during the last :data:`MAX_IDLE` hand-outs, and a block moved into shared memory. Safe to share
    between threads.
    """

    def __init__(self, max_blocks: int = MAX_BLOCKS) -> None:
        self.max_blocks = max_blocks
        self._blocks: list[torch.UntypedStorage] = []
        self._handed = 0  # hand-outs so far
        self._last_handed: dict[int, int] = {}  # id(block) -> the hand-out that last took it
        self._lock = threading.Lock()

    def empty(self, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        """An uninitialised contiguous tensor of ``shape``, with ``like``'s dtype and device."""
        nbytes = math.prod(shape) * like.element_size()
        if not self._applies(like, nbytes):
            return like.new_empty(shape)
        with self._lock:
            block = self._free_block(nbytes)
            if block is None:
                block = torch.UntypedStorage(nbytes, device=like.device)
                self._blocks.append(block)
            # (inside the lock: the tensor's reference marks the block used)
            out = like.new_empty(0).set_(block, 0, shape)
            self._handed += 1
            self._last_handed[id(block)] = self._handed
            self._drop_extra()  # (after: the new block counts as used)
            return out

    def clear(self) -> None:
        """Drop every block (the memory of those in use lives on in their tensors)."""
        with self._lock:
            self._blocks.clear()
            self._last_handed.clear()

    @property
    def nbytes(self) -> int:
        """The bytes of the blocks kept."""
        with self._lock:
            return sum(block.nbytes() for block in self._blocks)

    def _drop_extra(self) -> None:
        """Drop the free blocks idle for more than :data:`MAX_IDLE` hand-outs, then blocks past
        :attr:`max_blocks`: free ones first, each group oldest first."""
        free, used = [], []
        for block in self._blocks:
            (free if _is_free(block) else used).append(block)
        idle = {id(b) for b in free if self._handed - self._last_handed.get(id(b), 0) > MAX_IDLE}
        free = [b for b in free if id(b) not in idle]
        extra = max(0, len(self._blocks) - len(idle) - self.max_blocks)
        dropped = idle | {id(b) for b in (free + used)[:extra]}
        if dropped:
            self._blocks = [b for b in self._blocks if id(b) not in dropped]
            self._last_handed = {id(b): self._last_handed.get(id(b), 0) for b in self._blocks}

    def _free_block(self, nbytes: int) -> torch.UntypedStorage | None:
        """The smallest block of at least ``nbytes`` that no tensor uses, if any (blocks moved
        into shared memory dropped first: another process may still read them)."""
        if any(block.is_shared() for block in self._blocks):
            self._blocks = [block for block in self._blocks if not block.is_shared()]
        best = None
        for block in self._blocks:
            size = block.nbytes()
            fits = size >= nbytes and (best is None or size < best.nbytes())
            if fits and _is_free(block):
                best = block
        return best

    @staticmethod
    def _applies(like: torch.Tensor, nbytes: int) -> bool:
        return (
            _use_count is not None
            and like.device.type == "cpu"
            and nbytes >= MIN_BYTES
            and not (
                torch.are_deterministic_algorithms_enabled()
                and torch.utils.deterministic.fill_uninitialized_memory
            )
        )


# one workspace per module that asks for one, keyed by the module's identity (not its hash and
# equality: a subclass defining __eq__ is unhashable, or equal to another module) and dropped with
# it (a module keeps no state for it: copies, pickles and state dicts are unchanged)
_WORKSPACES: dict[int, tuple[weakref.ref, Workspace]] = {}
_WORKSPACES_LOCK = threading.Lock()


def workspace_of(owner: object) -> Workspace:
    """The :class:`Workspace` of ``owner`` (created on first use, dropped with ``owner``)."""
    with _WORKSPACES_LOCK:
        entry = _WORKSPACES.get(id(owner))
        if entry is not None and entry[0]() is owner:
            return entry[1]
        return _attach(owner, Workspace())


def _attach(owner: object, workspace: Workspace) -> Workspace:
    """Make ``workspace`` ``owner``'s (:func:`workspace_of`), until ``owner`` is freed."""
    key = id(owner)

    def forget(ref: weakref.ref) -> None:
        # (no lock: the collector may call this while this thread holds it)
        if _WORKSPACES.get(key, (None,))[0] is ref:
            _WORKSPACES.pop(key, None)

    _WORKSPACES[key] = (weakref.ref(owner, forget), workspace)
    return workspace


def clear_workspaces() -> None:
    """Drop every module's kept blocks (e.g. before measuring a step's peak memory)."""
    with _WORKSPACES_LOCK:
        workspaces = [ws for _, ws in _WORKSPACES.copy().values()]
    for ws in workspaces:
        ws.clear()

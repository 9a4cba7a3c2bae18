"""The discretised system's constants for a graph under ``torch.compile``.

A compiled graph reads the kernels (``Abar`` powers, impulse responses, their FFTs) of a
:class:`~plmu.memory.LegendreMemory` from the module's cache through the operator
``plmu::system_constant`` (:func:`_system_constant`) instead of recomputing them on every call, and
bakes the free-response horizon in (:func:`_compiled_horizon`).
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import weakref
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from plmu.memory import LegendreMemory


# the cache keys whose values depend on the discretised system alone, and the methods that
# build them (their arguments: the key's remaining entries)
_CONSTANT_KINDS = {
    "kernel": "kernel",
    "kernel_reversed": "_kernel_reversed",
    "kernel_sum": "_kernel_sum",
    "kernel_rfft_stacked": "_kernel_rfft_stacked",
    "kernel_rfft": "_kernel_rfft",
    "powers": "_powers",
    "toeplitz": "_toeplitz",
    "matrix_power": "_matrix_power",
}


class _ConstantBuild(threading.local):
    """Set while a compiled graph's constant is built eagerly (:func:`_system_constant`,
    :func:`_compiled_horizon`): the module's cache then works as in eager mode
    (``torch.compiler.is_compiling()`` may still be true in there)."""

    active = False  # per thread: another thread may be tracing meanwhile


_CONSTANT_BUILD = _ConstantBuild()


@contextlib.contextmanager
def _building_constant() -> Iterator[None]:
    """Within: this thread builds a compiled graph's constant (:class:`_ConstantBuild`)."""
    _CONSTANT_BUILD.active = True
    try:
        yield
    finally:
        _CONSTANT_BUILD.active = False


# A fixed-theta memory's `_token` names its discretised system, not the module: memories with
# the same order, discretizer, theta and device share it (their kernels are the same bits), so a
# compiled graph, which is guarded on the token, serves every one of them. A token per module
# recompiled the graph for each new module (a stack of layers compiled one by one reached
# Dynamo's recompile limit at the ninth and ran the rest eagerly) and, with a counter bumped on
# each `load_state_dict` and `.to()`, after each of those.
_TOKENS = itertools.count(1)
_SYSTEM_TOKENS: dict[tuple, int] = {}  # (order, discretizer, theta, device) -> token
# every live memory, by a serial of its own; and for each token the one that answers for it
_MEMORIES: weakref.WeakValueDictionary[int, LegendreMemory] = weakref.WeakValueDictionary()
_ANSWERING: weakref.WeakValueDictionary[int, LegendreMemory] = weakref.WeakValueDictionary()
_REGISTRY_LOCK = threading.Lock()


def _register(memory: LegendreMemory, system: tuple | None) -> None:
    """Give ``memory`` the token of ``system`` (``(order, discretizer, theta, device)``; ``None``:
    a token of its own, e.g. for a trainable theta) and make it findable by that token."""
    with _REGISTRY_LOCK:
        if system is None:
            token = next(_TOKENS)
        else:
            token = _SYSTEM_TOKENS.get(system)
            if token is None:
                token = _SYSTEM_TOKENS[system] = next(_TOKENS)
        serial = getattr(memory, "_serial", None)
        if serial is None or _MEMORIES.get(serial) is not memory:  # new, or a copy's attribute
            serial = memory._serial = next(_TOKENS)
            _MEMORIES[serial] = memory
        memory._token = token
        answering = _ANSWERING.get(token)
        if answering is None or answering._token != token:
            _ANSWERING[token] = memory


def _memory_of(token: int) -> LegendreMemory:
    """A live memory whose system has ``token`` (its cache holds that system's kernels)."""
    memory = _ANSWERING.get(token)
    if memory is not None and memory._token == token:
        return memory
    with _REGISTRY_LOCK:  # the one that answered is gone or has another system now
        for memory in list(_MEMORIES.values()):
            if memory._token == token:
                _ANSWERING[token] = memory
                return memory
    raise RuntimeError(f"plmu::system_constant: no live LegendreMemory with token {token}")


# it reads the module's cache on the host, which a CUDA graph's replay would not
_OP_TAGS = {"tags": (torch.Tag.cudagraph_unsafe,)} if hasattr(torch.Tag, "cudagraph_unsafe") else {}


@torch.library.custom_op("plmu::system_constant", mutates_args=(), **_OP_TAGS)
def _system_constant(
    Abar: torch.Tensor, token: int, kind: str, sizes: list[int], dtype: torch.dtype
) -> torch.Tensor:
    """The kernel ``(kind, *sizes, dtype)`` of the memory with ``token``, for a graph under
    ``torch.compile``: taken from (or built into) the module's cache when the graph runs, and
    copied (a graph may reuse an operator's output buffer). ``Abar`` (the module's buffer)
    places the operator on the module's device.

    Without it a compiled graph recomputed the kernels on every call (``Abar`` powers, FFTs: a
    compiled psMNIST training step took 80 ms against 3.2 ms eager, ``aot_eager``).
    """
    memory = _memory_of(token)
    with _building_constant():
        value = memory._constant((kind, *sizes, dtype))
    return value.clone(memory_format=torch.contiguous_format)  # the layout the fake gives


@_system_constant.register_fake
def _(Abar: torch.Tensor, token: int, kind: str, sizes: list[int], dtype: torch.dtype):
    d = Abar.shape[0]
    if kind in ("kernel", "kernel_reversed"):
        shape = (sizes[0], d)
    elif kind == "kernel_sum":
        shape = (1, d)
    elif kind == "kernel_rfft_stacked":
        shape = (2 * (sizes[1] // 2 + 1), d)
    elif kind == "kernel_rfft":
        shape, dtype = (d, sizes[1] // 2 + 1), torch.promote_types(dtype, torch.complex64)
    elif kind == "powers":
        shape = (sizes[0], d, d)
    elif kind == "toeplitz":
        shape = (sizes[0], sizes[0] * d)
    elif kind == "matrix_power":
        shape = (d, d)
    else:
        raise ValueError(f"plmu::system_constant: unknown kind {kind!r}")
    return Abar.new_empty(shape, dtype=dtype)


def _compiled_horizon(token: int, dtype: torch.dtype) -> int:
    """:meth:`~plmu.memory.LegendreMemory.free_horizon` of the fixed-``theta`` system with
    ``token`` at compile time (0 for none), a Python int baked into the graph: the compiled graph
    truncates where eager does. The graph is guarded on the token, which changes with the
    discretised system: a new ``theta`` recompiles, a module with the same system does not."""
    with _building_constant():
        return _memory_of(token).free_horizon(dtype) or 0


# What torch.compiler.assume_constant_result(_compiled_horizon) does, without importing
# torch._dynamo for it (1.3 s of `import plmu`): the mark Dynamo reads when it traces a call.
# tests/test_torch_func.py checks that the public function still marks a function this way.
_compiled_horizon._dynamo_marked_constant = True  # type: ignore[attr-defined]

"""LegendreMemory: the LTI Legendre memory and every exact way to run it.

For ``memory_size`` input channels ``u`` (each with its own order-``d`` memory) the memory is

    m_t = Abar m_{t-1} + Bbar u_t,       m_t = sum_{j <= t} H[t - j] u_j + Abar^(t+1) m_{-1}

with ``H[k] = Abar^k Bbar`` the impulse response (``plmu.impulse_response``) and ``m_{-1}`` the
initial state (zeros by default). The execution strategies, all equal to the plain recurrence up
to floating-point rounding:

* ``"recurrent"``: the recurrence, one step at a time (also :meth:`LegendreMemory.step`);
* ``"fft"``: causal convolution with ``H`` through ``torch.fft.rfft`` (``O(n log n)``);
* ``"direct"``: the convolution as one Toeplitz matrix product (short sequences);
* ``"chunked"``: Toeplitz products inside chunks, the state carried across chunks;
* the last state only (the paper's eq. 25): ``m_n = sum_j H[n - 1 - j] u_j``, one matrix product,
  in :meth:`LegendreMemory.last_state`;
* :meth:`LegendreMemory.project`: ``W m_t`` for a linear map ``W`` without building ``m`` (the
  kernel ``W H`` convolved by FFT; the fast path of ``ParallelLMU``).

``mode="auto"`` picks a strategy from the shape and device; it is a performance choice, never a
modelling one.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import math
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from plmu.legendre import (
    DISCRETIZERS,
    _check_order,
    _check_positive_int,
    _check_size,
    _check_theta,
    discretize,
    discretize_torch,
    impulse_response_torch,
    legendre_delay,
    matrix_powers_apply,
    warn_if_euler_unstable,
)

__all__ = ["MODES", "LegendreMemory", "check_lengths", "check_sequence", "check_state"]

MODES = ("auto", "recurrent", "fft", "direct", "chunked")
# mode="auto" thresholds, set from `plmu bench` measurements (see resolve_mode and
# ParallelLMU.use_fused; the numbers are in benchmarks/cpu.json)
AUTO_DIRECT_MAX_TIME = 64
AUTO_RECURRENT_MAX_ORDER = 64
AUTO_FUSED_MIN_TIME = 5
# fused projection past the free-response horizon h: blocks of up to this many times h outputs
# (overlap-save, FFT length about (ratio + 1) * h)
BLOCK_RATIO = 3
# FFT lengths keep a factor of at least 2**FFT_MIN_TWO_POWER (see fft_size)
FFT_MIN_TWO_POWER = 5
# the fused projection's overlap-save frames run in tiles of about this many output values
# (8 MB in float32; see _BlockConvolution)
BLOCK_TILE_ELEMENTS = 1 << 21
# the free response of a carried state comes from cached projected powers W Abar^(r+1), r < s,
# of at most this many values (s x outputs x state size; s up to the free horizon): 2 MB in
# float32, built (in float64) with this many times `order` multiply-adds, about 0.1 s at order 256
FREE_PROJECTED_MAX_ELEMENTS = 1 << 19


# ------------------------------------------------------------------------- mixed precision


_Method = TypeVar("_Method", bound=Callable)
_LOW_PRECISION = (torch.float16, torch.bfloat16)


def autocast_enabled(device_type: str) -> bool:
    """Whether ``torch.autocast`` is on for ``device_type`` (any torch >= 2.2)."""
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4: no device argument
        if device_type == "cpu":
            return torch.is_autocast_cpu_enabled()
        return torch.is_autocast_enabled()


def _float32(value: object) -> object:
    if isinstance(value, torch.Tensor) and value.dtype in _LOW_PRECISION:
        return value.float()
    return value


def full_precision_under_autocast(method: _Method) -> _Method:
    """Run a memory method in float32, with autocast off, whenever autocast is on.

    Under mixed precision the encoder hands the memory ``float16``/``bfloat16`` inputs: FFTs do
    not take ``bfloat16`` (nor, on CPU, ``float16``), and a state carried through thousands of
    steps must not be rounded to 8 bits each step. So, like ``torch.amp.custom_fwd(cast_inputs=
    torch.float32)``, low-precision tensor arguments become float32 and the result stays float32;
    autocast then casts it again where the next operation wants. Without autocast nothing changes.
    """

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        device_type = self.A.device.type
        if not autocast_enabled(device_type):
            return method(self, *args, **kwargs)
        with torch.autocast(device_type, enabled=False):
            args = tuple(_float32(a) for a in args)
            kwargs = {k: _float32(v) for k, v in kwargs.items()}
            return method(self, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


def _outside_inference_mode(build: Callable[[], torch.Tensor]) -> torch.Tensor:
    """``build()`` for a cache: under ``torch.inference_mode`` it runs with inference mode off
    (and no gradient), so the cached tensor is a normal one. A cached inference tensor would make
    every later call that records a gradient fail ("Inference tensors cannot be saved for
    backward")."""
    if not torch.is_inference_mode_enabled():
        return build()
    with torch.inference_mode(False), torch.no_grad():
        return build()


def _plain(x: torch.Tensor) -> bool:
    """Whether ``x`` carries neither a forward-mode tangent (``torch.autograd.forward_ad``) nor a
    ``torch.func`` transform (``jvp``, ``vmap``, ``grad``): then an ``out=`` operation may take it
    (those have no forward derivative and no batching rule), and a cache keyed on it loses
    nothing (a cached value holds no tangent). Never when traced or compiled: a graph takes
    no cached value and no ``out=`` buffer (and Dynamo cannot trace the functorch check)."""
    if _tracing():
        return False
    if _untransformed():  # the common case, in about 0.1 us
        return True
    wrapped = getattr(torch._C._functorch, "is_functorch_wrapped_tensor", None)  # private API
    return not (
        (wrapped is not None and wrapped(x))
        or torch.autograd.forward_ad.unpack_dual(x).tangent is not None
    )


def _tracing() -> bool:
    """Under ``torch.jit.trace`` or ``torch.compile``/``torch.export``: whole-tensor operations,
    and nothing taken from a cache keyed on a weight (the graph must read the weight itself)."""
    return torch.jit.is_tracing() or torch.compiler.is_compiling()


def _reads_values(tensor: torch.Tensor) -> bool:
    """Whether an input check may read ``tensor``'s values: on the CPU only, where that is
    free, and never while tracing or compiling. On an accelerator it would stall every step on
    a host/device synchronisation, so such checks skip its tensors (or read them on the host
    before the batch moves to the device)."""
    return tensor.device.type == "cpu" and not _tracing()


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


# the memories a compiled graph may ask for a kernel, by their `_token`
_MEMORIES: weakref.WeakValueDictionary[int, LegendreMemory] = weakref.WeakValueDictionary()
_TOKENS = itertools.count(1)


# it reads the module's cache on the host, which a CUDA graph's replay would not
_OP_TAGS = {"tags": (torch.Tag.cudagraph_unsafe,)} if hasattr(torch.Tag, "cudagraph_unsafe") else {}
# torch.export must not meet the operator (its graph would name a module of this process)
_is_exporting = getattr(torch.compiler, "is_exporting", None)  # torch >= 2.7


def _compiling_not_exporting() -> bool:
    """Under ``torch.compile`` and not ``torch.export``: a graph that may call this process's
    operators (``plmu::...``; an exported program must name none, and a torch without
    ``is_exporting`` cannot tell the two apart, so it gets none)."""
    return torch.compiler.is_compiling() and _is_exporting is not None and not _is_exporting()


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
    memory = _MEMORIES.get(token)
    if memory is None:
        raise RuntimeError(f"plmu::system_constant: no live LegendreMemory with token {token}")
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


def _compiled_horizon(memory: LegendreMemory, dtype: torch.dtype, generation: int) -> int:
    """:meth:`LegendreMemory.free_horizon` of a fixed-``theta`` memory at compile time (0 for
    none), a Python int baked into the graph: the compiled graph truncates where eager does.
    ``generation`` is the module's ``_generation``, which changes with the discretised system:
    the graph is guarded on it, so a new ``theta`` recompiles."""
    del generation  # only for the guard
    with _building_constant():
        return memory.free_horizon(dtype) or 0


# What torch.compiler.assume_constant_result(_compiled_horizon) does, without importing
# torch._dynamo for it (1.3 s of `import plmu`): the mark Dynamo reads when it traces a call.
# tests/test_torch_func.py checks that the public function still marks a function this way.
_compiled_horizon._dynamo_marked_constant = True  # type: ignore[attr-defined]


def _untransformed() -> bool:
    """No ``torch.func`` transform running and no forward-mode dual level open: then no tensor
    is a transform's or carries a tangent (a check for hot paths, without looking at tensors;
    when torch lacks the attribute it answers False, and the tensors are looked at)."""
    level = getattr(torch.autograd.forward_ad, "_current_level", 0)  # private API, -1: none
    return level < 0 and not _transforms_active()


def _transforms_active() -> bool:
    """Whether a ``torch.func`` transform (``grad``, ``vmap``, ``jvp``, ``jacrev``, ...) is
    running: a custom autograd Function without ``setup_context`` cannot be applied then."""
    active = getattr(torch._C, "_are_functorch_transforms_active", None)  # private API
    return bool(active is not None and active())


def plain_autograd(*tensors: torch.Tensor | None) -> bool:
    """Whether to compute with whole-tensor operations and autograd's own derivatives instead
    of this package's custom autograd Functions (tiled FFTs with hand-written backwards).

    True when traced or compiled (export needs whole-tensor operations), inside a ``torch.func``
    transform, or when one of ``tensors`` carries a forward-mode tangent
    (``torch.autograd.forward_ad``): the Functions define neither ``setup_context`` and a
    batching rule nor ``jvp``. The values are the same either way; only speed and memory differ.
    (Under ``torch.compile`` the fused projection asks :func:`_compiled_kernels` first: its
    graph calls the same tiled kernels as operators.)
    """
    return (
        _tracing() or _transforms_active() or not all(_plain(t) for t in tensors if t is not None)
    )


# ------------------------------------------------------------------------------ validation


def _zeros(
    batch_size: object, size: int, dtype: torch.dtype | None, device: torch.device | str
) -> torch.Tensor:
    """``default_state``'s zeros ``(batch_size, size)``, ``batch_size`` and ``dtype`` checked."""
    batch_size = _check_positive_int(batch_size, "batch_size", 0)
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"dtype must be a floating torch.dtype or None, got {dtype!r}")
    return torch.zeros(batch_size, size, dtype=dtype, device=device)


def check_sequence(x: object, features: int, name: str) -> torch.Tensor:
    """Check a batch-first sequence ``(batch, time, features)`` of floating dtype."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must have a floating dtype, got {x.dtype}")
    if x.dim() != 3:
        raise ValueError(
            f"{name} must have shape (batch, time, {features}), got {tuple(x.shape)} "
            f"(rank {x.dim()}, expected 3; batch-first)"
        )
    if x.shape[2] != features:
        raise ValueError(
            f"{name} must have shape (batch, time, {features}), got {tuple(x.shape)}: "
            f"last dimension {x.shape[2]} != {features}"
        )
    return x


def check_step_input(x: object, features: int, name: str) -> torch.Tensor:
    """Check one time step ``(batch, features)`` of floating dtype."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must have a floating dtype, got {x.dtype}")
    if x.dim() != 2 or x.shape[1] != features:
        raise ValueError(f"{name} must have shape (batch, {features}), got {tuple(x.shape)}")
    return x


def check_input_dtype(x: torch.Tensor, weight: torch.Tensor, name: str) -> None:
    """Raise a ``TypeError`` naming ``name`` when ``x``'s floating dtype is not ``weight``'s.

    A layer with weights runs in their dtype, like ``torch.nn.Linear``: a float64 input to a
    float32 layer is an error on every path (none silently computes in another precision).
    Under ``torch.autocast`` mixed dtypes are legitimate and nothing is checked. Cheap: one
    comparison when the dtypes agree.
    """
    if x.dtype != weight.dtype and not autocast_enabled(x.device.type):
        raise input_dtype_error(name, x.dtype, weight.dtype)


def input_dtype_error(name: str, got: torch.dtype, expected: torch.dtype) -> TypeError:
    """:func:`check_input_dtype`'s error: ``name`` has dtype ``got``, the layer ``expected``."""
    return TypeError(
        f"{name} must have the layer's dtype {expected} (that of its weights), got {got}: "
        f"cast the input, or the layer with .to({got})"
    )


def check_state(
    state: object, batch: int, size: int, name: str, like: torch.Tensor
) -> torch.Tensor:
    """Check a state ``(batch, size)``; ``None`` gives zeros like ``like``."""
    if state is None:
        return like.new_zeros((batch, size))
    if not isinstance(state, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or None, got {type(state).__name__}")
    if not state.is_floating_point():
        raise TypeError(f"{name} must have a floating dtype, got {state.dtype}")
    if tuple(state.shape) != (batch, size):
        raise ValueError(f"{name} must have shape ({batch}, {size}), got {tuple(state.shape)}")
    return state if state.dtype == like.dtype else state.to(like.dtype)


def check_lengths(
    lengths: object, batch: int, time: int, name: str = "lengths"
) -> torch.Tensor | None:
    """Check right-padding ``lengths`` ``(batch,)``: integers in ``[1, time]`` (``name`` is the
    argument the messages name)."""
    if lengths is None:
        return None
    lengths = torch.as_tensor(lengths)
    if lengths.dtype.is_floating_point or lengths.dtype == torch.bool or lengths.is_complex():
        raise TypeError(f"{name} must hold integers, got {lengths.dtype}")
    if tuple(lengths.shape) != (batch,):
        raise ValueError(f"{name} must have shape ({batch},), got {tuple(lengths.shape)}")
    # the values only on the CPU: on an accelerator reading them back would stall every
    # training step on a host/device sync (out-of-range lengths then index out of bounds there)
    if batch and _reads_values(lengths) and (int(lengths.min()) < 1 or int(lengths.max()) > time):
        raise ValueError(f"{name} must lie in [1, {time}] (the time dimension), got {lengths}")
    return lengths.long()


def gather_time(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """``x[b, lengths[b] - 1]`` for ``x`` ``(batch, time, ...)``: the last valid step."""
    index = (lengths.to(x.device) - 1).view(-1, *([1] * (x.dim() - 1)))
    index = index.expand(-1, 1, *x.shape[2:])
    return x.gather(1, index).squeeze(1)


def right_align(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Shift each right-padded sequence ``(batch, time, ...)`` so that it ends at the last step.

    Steps before the shifted start are zero. Differentiable in ``x``.
    """
    T = x.shape[1]
    shift = (T - lengths.to(x.device)).view(-1, 1)
    src = torch.arange(T, device=x.device).view(1, -1) - shift  # (B, T)
    valid = src >= 0
    index = src.clamp(min=0).view(*src.shape, *([1] * (x.dim() - 2))).expand_as(x)
    out = x.gather(1, index)
    return out * valid.view(*valid.shape, *([1] * (x.dim() - 2))).to(x.dtype)


# ------------------------------------------------------------------------------ the module


class LegendreMemory(nn.Module):
    r"""The Legendre memory for ``memory_size`` independent input channels.

    Args:
        memory_size: number of input channels ``C``; each gets its own order-``d`` memory.
        order: Legendre order ``d`` (coefficients per channel).
        theta: window length in time steps (> 0).
        discretizer: ``"zoh"`` (default), ``"euler"`` or ``"bilinear"``.
        trainable_theta: learn ``theta`` (stored as ``log theta``, so it stays positive).
        mode: execution strategy for :meth:`forward`: ``"auto"`` (default), ``"recurrent"``,
            ``"fft"``, ``"direct"`` or ``"chunked"``.
        chunk_size: chunk length for ``mode="chunked"`` (default: chosen from ``order``).

    Shapes:
        - ``u``: ``(batch, time, memory_size)``
        - ``m``: ``(batch, time, memory_size * order)``, channel-major: ``memory_size`` blocks of
          ``order`` Legendre coefficients
        - ``state``: ``(batch, memory_size * order)``; ``None`` means zeros

    Example:
        >>> mem = LegendreMemory(memory_size=2, order=8, theta=50.0)
        >>> m, state = mem(torch.randn(4, 100, 2))
        >>> m.shape, state.shape
        (torch.Size([4, 100, 16]), torch.Size([4, 16]))
    """

    _generation = 0  # changes with the discretised system (compiled graphs guard on it)

    def __init__(
        self,
        memory_size: int,
        order: int,
        theta: float,
        discretizer: str = "zoh",
        trainable_theta: bool = False,
        mode: str = "auto",
        chunk_size: int | None = None,
    ) -> None:
        super().__init__()
        self.memory_size = _check_positive_int(memory_size, "memory_size")
        self.order = _check_order(order)
        theta = _check_theta(theta)
        if discretizer not in DISCRETIZERS:
            raise ValueError(f"discretizer must be one of {DISCRETIZERS}, got {discretizer!r}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if chunk_size is not None:
            _check_positive_int(chunk_size, "chunk_size")
        self.discretizer = discretizer
        self.trainable_theta = bool(trainable_theta)
        self.mode = mode
        self.chunk_size = chunk_size
        self.initial_theta = theta  # what reset_parameters gives a trainable theta back
        if self.trainable_theta:
            # (in the default dtype, as nn.Linear makes its weights)
            self.log_theta = nn.Parameter(torch.tensor(math.log(theta)))
            if discretizer == "euler":
                # a fixed theta is checked where it is discretised (plmu.discretize, when built
                # or loaded); a trainable one is discretised by the differentiable version in
                # every training step, where an eigenvalue check would cost too much, so its
                # initial value is checked once, here
                warn_if_euler_unstable(legendre_delay(self.order)[0], theta, trainable=True)
        else:
            self.register_buffer("theta_", torch.tensor(theta, dtype=torch.float64))
        self._cache: dict[tuple, object] = {}
        self._register()
        # the default device: under `with torch.device(...)` (e.g. Lightning's init_module) the
        # system matrices go where the parameters go
        self._refresh_discrete(theta, torch.empty(()).device)

    # ---------------------------------------------------------------- parameters and kernels

    def reset_parameters(self) -> None:
        """A trainable ``theta`` back to its initial value (a fixed one never changes)."""
        if self.trainable_theta:
            with torch.no_grad():
                self.log_theta.fill_(math.log(self.initial_theta))

    @property
    def state_size(self) -> int:
        """``memory_size * order``, the size of the flat state."""
        return self.memory_size * self.order

    def default_state(
        self,
        batch_size: int,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        """The zero state that ``state=None`` stands for: ``(batch_size, memory_size * order)``,
        in ``dtype`` (default: torch's default float dtype) on ``device`` (default: the
        memory's)."""
        return _zeros(
            batch_size, self.state_size, dtype, self.A.device if device is None else device
        )

    def theta_tensor(self) -> torch.Tensor:
        """``theta`` as a float64 scalar tensor (differentiable when trainable)."""
        if self.trainable_theta:
            return self.log_theta.double().exp()
        return self.theta_

    @property
    def theta(self) -> float:
        """The current window length in time steps."""
        return float(self.theta_tensor().detach())

    def _cacheable(self) -> bool:
        """Whether kernels may come from (and go into) the cache: not while Dynamo traces
        (it can trace neither the cache's inference-mode check nor :meth:`free_horizon`'s
        search; with a fixed ``theta`` the graph reads the cache through
        :func:`_system_constant` instead, see :meth:`_compile_constants`), not while a
        trainable theta records a gradient, nor when it is a ``torch.func`` transform's tensor
        or carries a forward-mode tangent (it has no storage to key on; a cached value would
        hold the transform's tensor or the tangent beyond the call)."""
        if torch.compiler.is_compiling() and not _CONSTANT_BUILD.active:
            return False
        if not self.trainable_theta:
            return True
        return not torch.is_grad_enabled() and _plain(self.log_theta)

    def _register(self) -> None:
        """A token of its own, by which a compiled graph finds this module's kernel cache."""
        self._token = next(_TOKENS)
        _MEMORIES[self._token] = self

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self._register()  # a copy (copy.deepcopy, pickle) must not answer for the original

    def _compile_constants(self) -> bool:
        """Under ``torch.compile`` (not export) with a fixed ``theta``: the graph takes the
        kernels from the module's cache (:func:`_system_constant`) instead of computing them."""
        return (
            _compiling_not_exporting() and not _CONSTANT_BUILD.active and not self.trainable_theta
        )

    def _constant(self, key: tuple) -> torch.Tensor:
        """The cached value of ``key`` (one of :data:`_CONSTANT_KINDS`), built if missing."""
        kind, *args = key
        return getattr(self, _CONSTANT_KINDS[kind])(*args)

    def _forget_stale_theta(self) -> None:
        """Clear the cache if a trainable theta changed since its kernels were built.

        An in-place update (an optimizer step) shows in the version counter; another tensor
        (``torch.func.functional_call``, assignment) in identity: the cache holds the tensor it
        was built from, so a fresh tensor at a reused address cannot pass for it; a tensor
        assigned to ``.data`` in its data's address (the cache keeps the old data alive).
        """
        if not self.trainable_theta:
            return
        theta = self.log_theta
        seen = self._cache.get(("theta",))
        now = (theta._version, theta.data_ptr())
        if seen is None or seen[0] is not theta or seen[1] != now:
            self._cache.clear()
            self._cache[("theta",)] = (theta, now, theta.detach())

    def _cached(self, key: tuple, build) -> torch.Tensor:
        if not self._cacheable():
            if key[0] in _CONSTANT_KINDS and self._compile_constants():
                kind, *sizes, dtype = key
                return torch.ops.plmu.system_constant(self.Abar, self._token, kind, sizes, dtype)
            return build()
        self._forget_stale_theta()
        full_key = (*key, self.A.device)
        value = self._cache.get(full_key)
        if value is None:
            if len(self._cache) > 64:
                self._cache.clear()
            value = _outside_inference_mode(build)
            self._cache[full_key] = value
        return value

    def _discretize(self) -> tuple[torch.Tensor, torch.Tensor]:
        return discretize_torch(
            self.A.double(), self.B.double(), self.theta_tensor().double(), self.discretizer
        )

    def _refresh_discrete(
        self, theta: float | None = None, device: torch.device | None = None
    ) -> None:
        """(Re)build the ``A``/``B`` and fixed-theta ``Abar``/``Bbar`` buffers and forget cached
        kernels.

        ``theta`` defaults to the ``theta_`` buffer's value (given at construction, where the
        buffer may be on a device without values, e.g. ``meta``); ``device`` to ``A``'s.

        A fixed theta is discretised by :func:`plmu.discretize` (``scipy.linalg.expm``):
        ``torch.linalg.matrix_exp`` loses up to ~1e-9 relative accuracy for small-norm
        matrices (e.g. order 1, theta 21), harmless in float32 training but visible against a
        float64 reference. A trainable theta needs the differentiable torch version.
        """
        self._cache.clear()
        self._generation += 1  # a compiled graph's kernels are stale: recompile
        A, B = legendre_delay(self.order)
        device = self.A.device if device is None else device
        # A and B rebuilt on load too: after meta-device init and to_empty() they hold no values
        self.register_buffer("A", torch.from_numpy(A).to(device), persistent=False)
        self.register_buffer("B", torch.from_numpy(B).to(device), persistent=False)
        if not self.trainable_theta:
            theta = float(self.theta_) if theta is None else theta
            Abar, Bbar = discretize(A, B, theta, self.discretizer)
            self.register_buffer("Abar", torch.from_numpy(Abar).to(device), persistent=False)
            self.register_buffer("Bbar", torch.from_numpy(Bbar).to(device), persistent=False)

    def _load_from_state_dict(self, *args, **kwargs) -> None:  # type: ignore[override]
        super()._load_from_state_dict(*args, **kwargs)
        self._refresh_discrete()

    def _apply(self, fn, recurse=True):  # type: ignore[override]
        # .to(device) moves everything; dtype casts (.float(), .half()) must not touch the
        # float64 system matrices: the kernels are always computed in float64, then cast.
        super()._apply(fn, recurse)
        for name in ("A", "B", "theta_", "Abar", "Bbar"):
            buf = self._buffers.get(name)
            if buf is not None and buf.dtype != torch.float64:
                self._buffers[name] = buf.double()
        self._cache.clear()
        self._generation += 1
        return self

    def discrete(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(Abar, Bbar)``: float64 ``(order, order)``, ``(order, 1)`` on the module's device."""
        if not self.trainable_theta:
            return self.Abar, self.Bbar
        return self._cached(("discrete",), self._discretize)

    def _discrete_as(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(Abar, Bbar)`` in ``like``'s dtype (cached; traced as a cast under export)."""
        if torch.compiler.is_compiling() or torch.jit.is_tracing():
            Abar, Bbar = self.discrete()
            return Abar.to(like.dtype), Bbar.to(like.dtype)

        def build():
            Abar, Bbar = self.discrete()
            return torch.cat([Abar, Bbar], dim=1).to(like.dtype)

        AB = self._cached(("discrete_as", like.dtype), build)
        return AB[:, :-1], AB[:, -1:]

    def kernel(self, length: int, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The impulse response ``H`` ``(length, order)`` (computed in float64, then cast)."""
        # checked before the cache is read: its key would take True or 2.0 for 1 or 2
        length = _check_size(length, "length")
        if isinstance(length, torch.Tensor):  # a size under torch.jit.trace
            length = int(length)
        dtype = dtype or torch.float64

        def build():
            Abar, Bbar = self.discrete()
            return impulse_response_torch(Abar, Bbar, length).to(dtype)

        return self._cached(("kernel", length, dtype), build)

    def _kernel_reversed(self, length: int, dtype: torch.dtype) -> torch.Tensor:
        """``H`` flipped in time, ``(length, order)``, contiguous (for :meth:`last_state`)."""
        return self._cached(
            ("kernel_reversed", length, dtype),
            lambda: self.kernel(length, dtype).flip(0).contiguous(),
        )

    def _kernel_sum(self, length: int, dtype: torch.dtype) -> torch.Tensor:
        """``sum_k H[k]`` over ``length`` steps, ``(1, order)`` (the response to a constant 1)."""
        return self._cached(
            ("kernel_sum", length, dtype),
            lambda: self.kernel(length).sum(0, keepdim=True).to(dtype),
        )

    def _kernel_rfft_stacked(self, length: int, n_fft: int, dtype: torch.dtype) -> torch.Tensor:
        """``[Re; Im]`` of ``rfft(H, n_fft)`` along time: ``(2 * (n_fft // 2 + 1), order)``.

        Computed from the float64 kernel, then cast (for :meth:`project`).
        """

        def build():
            Hf = torch.fft.rfft(self.kernel(length), n=n_fft, dim=0)  # (F, d) complex128
            return torch.cat([Hf.real, Hf.imag], dim=0).to(dtype).contiguous()

        return self._cached(("kernel_rfft_stacked", length, n_fft, dtype), build)

    def free_horizon(self, dtype: torch.dtype) -> int | None:
        """Steps after which the zero-input response of any state is negligible in ``dtype``.

        The smallest ``t`` with ``||Abar^t||_F <= eps(dtype) * 1e-6`` (the Frobenius norm bounds
        the spectral norm), found by repeated squaring and bisection in float64. From there on
        ``Abar^t m`` lies six orders of magnitude below the rounding error of ``m`` itself, so
        the free response can stop there exactly to working precision. ``None`` when ``Abar``
        does not decay that far within ``2^24`` steps (or while ``theta`` is trained, or under
        ``torch.export``): then nothing is truncated. Under ``torch.compile`` it is computed
        when the graph is built and baked in (:func:`_compiled_horizon`).
        """
        if self._compile_constants():
            return _compiled_horizon(self, dtype, self._generation) or None
        if not self._cacheable() or self.trainable_theta:
            return None
        tol = torch.finfo(dtype).eps * 1e-6
        key = ("free_horizon", tol)
        hit = self._cache.get(key)
        if hit is not None:
            return int(hit) if hit > 0 else None
        with torch.no_grad():
            Abar = self.discrete()[0].double().cpu()
            power, t, found = Abar, 1, 0
            squares = [(1, Abar)]  # (t, Abar^t) for t = 1, 2, 4, ...
            while t <= 2**24:
                norm = float(torch.linalg.matrix_norm(power))  # Frobenius >= spectral norm
                if not math.isfinite(norm):
                    break
                if norm <= tol:
                    found = t
                    break
                power = power @ power
                t *= 2
                squares.append((t, power))
            if found > 1:  # binary refinement below the first power of two that is small enough
                lo_t, lo_p = squares[-2]
                for step, P in reversed(squares[:-2]):
                    cand = lo_p @ P
                    if float(torch.linalg.matrix_norm(cand)) > tol:
                        lo_t, lo_p = lo_t + step, cand
                found = lo_t + 1
        self._cache[key] = found
        return found or None

    def _kernel_rfft(self, length: int, n_fft: int, dtype: torch.dtype) -> torch.Tensor:
        return self._cached(
            ("kernel_rfft", length, n_fft, dtype),
            lambda: torch.fft.rfft(self.kernel(length, dtype).T, n=n_fft),  # (d, F)
        )

    def _powers(self, length: int, dtype: torch.dtype) -> torch.Tensor:
        """``[Abar^1, ..., Abar^length]`` ``(length, d, d)`` in ``dtype``."""

        def build():
            Abar, _ = self.discrete()
            eye = torch.eye(self.order, dtype=Abar.dtype, device=Abar.device)
            return matrix_powers_apply(Abar, eye, length).transpose(1, 2).to(dtype)

        return self._cached(("powers", length, dtype), build)

    def _powers_apply(self, m0: torch.Tensor, length: int) -> torch.Tensor:
        """``[Abar^1 m0, ..., Abar^length m0]`` ``(length, ..., order)`` by doubling.

        Like :func:`~plmu.legendre.matrix_powers_apply`, but the squares ``Abar^(2^k)`` come from
        a cache (computed in float64), so a stream of chunks pays only the products with ``m0``.
        """
        Abar, _ = self._discrete_as(m0)
        length = int(length)  # under torch.jit.trace a size is a 0-dim tensor
        if length == 0 or not self._cacheable():
            return matrix_powers_apply(Abar, m0, length)
        squares = self._power_squares(1, length, m0.dtype)
        return _doubling(m0 @ Abar.T, squares, length)  # Abar^1 m0, then Abar^(t+1) m0

    def _power_squares(self, step: int, count: int, dtype: torch.dtype) -> torch.Tensor:
        """``[Abar^step, Abar^(2 step), Abar^(4 step), ...]`` ``(K, order, order)``, as many as a
        doubling to ``count`` rows needs; computed in float64, cached."""
        n_squares = max(1, (count - 1).bit_length())

        def build():
            P = [torch.linalg.matrix_power(self.discrete()[0], step)]
            for _ in range(n_squares - 1):
                P.append(P[-1] @ P[-1])
            return torch.stack(P).to(dtype)

        return self._cached(("squares", step, n_squares, dtype), build)

    def _block_states(self, m0: torch.Tensor, step: int, count: int) -> torch.Tensor:
        """``[m0, Abar^step m0, Abar^(2 step) m0, ...]`` ``(count, ..., order)`` by doubling, the
        squares ``Abar^(step 2^k)`` from a cache (:meth:`_power_squares`)."""
        return _doubling(m0, self._power_squares(step, count, m0.dtype), count)

    def free_response(self, state: torch.Tensor, length: int) -> torch.Tensor:
        """Zero-input response of an initial state: ``Abar^(t+1) m_{-1}`` for ``t < length``.

        Args:
            state: ``(batch, memory_size * order)``.

        Returns:
            ``(batch, length, memory_size * order)``.
        """
        length = _check_size(length, "length")
        m0 = state.reshape(state.shape[0], self.memory_size, self.order)
        horizon = self.free_horizon(state.dtype)
        h = length if horizon is None else min(length, horizon)  # later steps: negligible
        X = self._powers_apply(m0, h)  # (h, B, C, d)
        X = X.permute(1, 0, 2, 3).reshape(state.shape[0], h, self.state_size)
        return F.pad(X, (0, 0, 0, length - h)) if h < length else X

    # ---------------------------------------------------------------------------- running

    def resolve_mode(self, time: int, batch: int, device: torch.device | None = None) -> str:
        """The strategy ``mode="auto"`` uses for a sequence of this shape on this device."""
        time, batch = _check_size(time, "time"), _check_size(batch, "batch")
        if self.mode != "auto":
            return self.mode
        # Thresholds from measured training steps of the layer with each memory mode
        # (benchmarks/cpu.json, "modes" and "full_sequence"; `plmu bench --only modes
        # full_sequence`; batch 32, memory_size 16, order 64): the Toeplitz product is the
        # fastest up to 32 steps (T=32: direct 19.7 ms, chunked 21.9, fft 27.4, recurrent 27.8);
        # from 128 steps the recurrence on CPU (T=128: 100.5 vs fft 107.1, direct 113.9, chunked
        # 116.1; T=1024: 1043 vs chunked 1380, fft 2531). Its cost grows with order^2, the
        # FFT's with order, so above the measured order, and on GPUs (sequential steps), the FFT
        # is used.
        if time <= AUTO_DIRECT_MAX_TIME:
            return "direct"
        on_cpu = device is None or torch.device(device).type == "cpu"
        if on_cpu and self.order <= AUTO_RECURRENT_MAX_ORDER:
            return "recurrent"
        return "fft"

    @full_precision_under_autocast
    def forward(
        self,
        u: torch.Tensor,
        state: torch.Tensor | None = None,
        lengths: torch.Tensor | None = None,
        mode: str | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the memory over a whole sequence.

        Args:
            u: ``(batch, time, memory_size)`` input.
            state: ``(batch, memory_size * order)`` initial state, or ``None`` for zeros.
            lengths: ``(batch,)`` valid lengths of right-padded sequences, or ``None``; the
                returned state is then the state after each sequence's last valid step.
            mode: override the module's ``mode`` for this call.

        Returns:
            ``(m, state)``: ``m`` ``(batch, time, memory_size * order)`` and the final state
            ``(batch, memory_size * order)``.
        """
        u = check_sequence(u, self.memory_size, "u")
        Bn, T, _ = u.shape
        has_state = state is not None
        state = check_state(state, Bn, self.state_size, "state", u)
        lengths = check_lengths(lengths, Bn, T)
        mode = mode or self.mode
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if T == 0 or Bn == 0:  # nothing to run (FFTs reject empty batches)
            return u.new_zeros((Bn, T, self.state_size)), state
        if mode == "auto":
            mode = self.resolve_mode(T, Bn, u.device)
        if mode == "recurrent":
            m = self._recurrent(u, state)
        else:
            conv = {"fft": self._fft, "direct": self._direct, "chunked": self._chunked}[mode]
            m = conv(u, state if has_state else None)
        final = m[:, -1] if lengths is None else gather_time(m, lengths)
        return m, final

    @full_precision_under_autocast
    def step(
        self, u_t: torch.Tensor, state: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One step of the recurrence: ``m_t = Abar m_{t-1} + Bbar u_t``.

        Args:
            u_t: ``(batch, memory_size)``.
            state: ``(batch, memory_size * order)`` or ``None`` for zeros.

        Returns:
            ``(m_t, m_t)``: the new memory ``(batch, memory_size * order)``, twice (output and
            state, like ``torch.nn.RNNCell`` users expect from a state-space step).
        """
        u_t = check_step_input(u_t, self.memory_size, "u_t")
        state = check_state(state, u_t.shape[0], self.state_size, "state", u_t)
        Abar, Bbar = self._discrete_as(u_t)
        m = state.view(-1, self.memory_size, self.order) @ Abar.T + u_t.unsqueeze(-1) * Bbar.view(
            1, 1, -1
        )
        m = m.reshape(-1, self.state_size)
        return m, m

    @full_precision_under_autocast
    def last_state(
        self,
        u: torch.Tensor,
        state: torch.Tensor | None = None,
        lengths: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The final state only, by one matrix product (the paper's eq. 25).

        ``m_n = [H[n-1], ..., H[0]] u + Abar^n m_{-1}``; the memory sequence is never built.

        Args:
            u: ``(batch, time, memory_size)``; state: ``(batch, memory_size * order)`` or ``None``;
            lengths: ``(batch,)`` right-padding lengths or ``None``.

        Returns:
            ``(batch, memory_size * order)``.
        """
        u = check_sequence(u, self.memory_size, "u")
        Bn, T, _C = u.shape
        lengths = check_lengths(lengths, Bn, T)
        has_state = state is not None
        state = check_state(state, Bn, self.state_size, "state", u)
        if T == 0:
            return state
        if lengths is not None:
            u = right_align(u, lengths)
        W = self.last_window(T, u.dtype)  # inputs before the last W steps are forgotten
        Hrev = self._kernel_reversed(W, u.dtype)  # (W, d): H[W-1], ..., H[0]
        # one (B*C, W) @ (W, d) product: a plain GEMM, much faster than a batched matmul
        m = u[:, T - W :].transpose(1, 2).reshape(Bn * _C, W) @ Hrev
        m = m.reshape(Bn, self.state_size)
        if has_state:
            if lengths is None:
                m = m + self._power_apply(state, T)
            else:
                free = self.free_response(state, T)  # (B, T, C*d)
                m = m + gather_time(free, lengths)
        return m

    def _matrix_power(self, n: int, dtype: torch.dtype) -> torch.Tensor:
        """``Abar^n`` ``(order, order)`` in ``dtype`` (computed in float64, cached)."""

        def build():
            Abar, _ = self.discrete()
            return torch.linalg.matrix_power(Abar, n).to(dtype)

        return self._cached(("matrix_power", n, dtype), build)

    def _power_apply(self, state: torch.Tensor, n: int) -> torch.Tensor:
        """``Abar^n m`` for a flat state ``(batch, memory_size * order)``."""

        P = self._matrix_power(n, state.dtype)
        m = state.view(-1, self.memory_size, self.order) @ P.T
        return m.reshape(state.shape)

    # ------------------------------------------------------------------------ strategies

    def _recurrent(self, u: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        Abar, Bbar = self._discrete_as(u)
        Bn, T, C = u.shape
        m = state.view(Bn, C, self.order)
        # time-major and unbound once: indexing drive[:, t] in the loop would make backward
        # write a zero gradient of the whole drive for every step (quadratic in T)
        drive = (u.transpose(0, 1).unsqueeze(-1) * Bbar.view(1, 1, 1, -1)).reshape(
            T, Bn * C, self.order
        )
        out = []
        m = m.reshape(-1, self.order)
        AT = Abar.T
        for d_t in drive.unbind(0):
            m = torch.addmm(d_t, m, AT)
            out.append(m.view(Bn, self.state_size))
        return torch.stack(out, dim=1)

    def _with_state(self, m: torch.Tensor, state: torch.Tensor | None) -> torch.Tensor:
        return m if state is None else m + self.free_response(state, m.shape[1])

    def _fft(self, u: torch.Tensor, state: torch.Tensor | None) -> torch.Tensor:
        if u.dtype in _LOW_PRECISION:  # FFTs take neither bfloat16 nor (on CPU) float16
            return self._fft(u.float(), _float32(state)).to(u.dtype)
        Bn, T, _C = u.shape
        n_fft = fft_size(2 * T - 1)
        Hf = self._kernel_rfft(T, n_fft, u.dtype)  # (d, F)
        Uf = torch.fft.rfft(u.transpose(1, 2), n=n_fft)  # (B, C, F)
        m = torch.fft.irfft(Uf.unsqueeze(2) * Hf, n=n_fft)[..., :T]  # (B, C, d, T)
        m = m.permute(0, 3, 1, 2).reshape(Bn, T, self.state_size)
        return self._with_state(m, state)

    def _toeplitz(self, length: int, dtype: torch.dtype) -> torch.Tensor:
        """``W`` ``(length, length * d)`` with ``W[s, t*d + i] = H[t - s, i]`` for ``t >= s``."""

        def build():
            H = self.kernel(length, dtype)  # (L, d)
            idx = torch.arange(length, device=H.device)
            lag = idx.view(1, -1) - idx.view(-1, 1)  # (s, t): t - s
            W = H[lag.clamp(min=0)] * (lag >= 0).unsqueeze(-1).to(dtype)  # (L, L, d)
            return W.reshape(length, length * self.order)

        return self._cached(("toeplitz", length, dtype), build)

    def _direct(self, u: torch.Tensor, state: torch.Tensor | None) -> torch.Tensor:
        Bn, T, C = u.shape
        W = self._toeplitz(T, u.dtype)
        m = u.transpose(1, 2) @ W  # (B, C, T*d)
        m = m.view(Bn, C, T, self.order).transpose(1, 2).reshape(Bn, T, self.state_size)
        return self._with_state(m, state)

    def default_chunk_size(self) -> int:
        """Chunk length used by ``mode="chunked"`` when ``chunk_size`` is not given."""
        return self.chunk_size or max(16, min(256, 4096 // self.order))

    def _chunked(self, u: torch.Tensor, state: torch.Tensor | None) -> torch.Tensor:
        Bn, T, C = u.shape
        d = self.order
        L = min(self.default_chunk_size(), T)
        n_chunks = -(-T // L)
        pad = n_chunks * L - T
        if pad:
            u = F.pad(u, (0, 0, 0, pad))
        W = self._toeplitz(L, u.dtype)  # (L, L*d)
        P = self._powers(L, u.dtype)  # (L, d, d): Abar^(k+1)
        uc = u.view(Bn, n_chunks, L, C).permute(0, 1, 3, 2)  # (B, K, C, L)
        local = (uc @ W).view(Bn, n_chunks, C, L, d)  # zero-state response inside each chunk
        # carry the state across chunks: s_k = local_k[L-1] + Abar^L s_{k-1}
        AL = P[-1]
        s = u.new_zeros((Bn, C, d)) if state is None else state.view(Bn, C, d)
        starts = []
        for k in range(n_chunks):
            starts.append(s)
            s = local[:, k, :, -1] + s @ AL.T
        s0 = torch.stack(starts, dim=1)  # (B, K, C, d): state entering each chunk
        carried = torch.einsum("bkci,tji->bkctj", s0, P)  # Abar^(t+1) s0
        m = (local + carried).permute(0, 1, 3, 2, 4).reshape(Bn, n_chunks * L, self.state_size)
        return m[:, :T]

    # -------------------------------------------------------------------- fused projection

    @full_precision_under_autocast
    def project(
        self,
        u: torch.Tensor,
        weight: torch.Tensor,
        state: torch.Tensor | None = None,
        accumulate: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``W m_t`` for every ``t`` without building the memory sequence.

        The linear map is folded into the impulse response, ``K[j] = W (I_C (x) H[j])``, and the
        ``memory_size`` input channels are convolved with ``K`` by FFT, so the work scales with
        ``out_features`` instead of ``memory_size * order``. ``K`` stops at :meth:`free_horizon`,
        and sequences several horizons long run in overlap-save blocks
        (:meth:`projection_blocks`).

        Args:
            u: ``(batch, time, memory_size)``.
            weight: ``(out_features, memory_size * order)``.
            state: initial state ``(batch, memory_size * order)`` or ``None``.
            accumulate: ``(batch, time, out_features)`` to add the result to in place (the
                output is then written once, straight from the inverse FFT's blocks), or
                ``None``. Use the returned tensor: under autocast, or with float16/bfloat16
                inputs (run in float32), a low-precision ``accumulate`` is first copied.

        Returns:
            ``(batch, time, out_features)``, equal to ``forward(u, state)[0] @ weight.T``
            (plus ``accumulate`` when given).
        """
        u = check_sequence(u, self.memory_size, "u")
        Bn, T, _ = u.shape
        if not isinstance(weight, torch.Tensor) or not weight.is_floating_point():
            got = weight.dtype if isinstance(weight, torch.Tensor) else type(weight).__name__
            raise TypeError(f"weight must be a floating torch.Tensor, got {got}")
        if weight.dim() != 2 or weight.shape[1] != self.state_size:
            raise ValueError(
                f"weight must have shape (out_features, {self.state_size}), "
                f"got {tuple(weight.shape)}"
            )
        if state is not None:  # checked, not cast (a low-precision input runs in float32)
            check_state(state, Bn, self.state_size, "state", state)
        out = weight.shape[0]
        if accumulate is not None and tuple(accumulate.shape) != (Bn, T, out):
            raise ValueError(
                f"accumulate must have shape (batch, time, out_features) = {(Bn, T, out)}, "
                f"got {tuple(accumulate.shape)}"
            )
        if T == 0 or Bn == 0:  # nothing to add (FFTs reject empty batches)
            return u.new_zeros((Bn, T, out)) if accumulate is None else accumulate
        if u.dtype in _LOW_PRECISION:  # FFTs take neither bfloat16 nor (on CPU) float16
            y = self.project(u.float(), weight.float(), _float32(state), _float32(accumulate))
            return y.to(u.dtype)
        if state is not None and state.dtype != u.dtype:  # as check_state does elsewhere
            state = state.to(u.dtype)
        Lk, L = self.projection_blocks(T, u.dtype)
        nb = -(-T // L)  # blocks of L outputs
        n_fft = fft_size(L + Lk - 1)
        lead = n_fft - L  # >= Lk - 1 earlier inputs in front of each block's L new ones
        C = self.memory_size
        if C == 1:  # (out, F): a broadcast product
            Kf = self._folded_kernel_rfft_1(weight, Lk, n_fft, u.dtype)
        else:
            Kf = self._folded_kernel_rfft(weight, Lk, n_fft, u.dtype)  # (F, C, out) complex
        # Layout: every FFT runs over a contiguous last axis (strided FFTs cost 2-4x more here,
        # in forward and in backward). One channel: the product, inverse FFT and add into the
        # output run in tiles of frames (_BlockConvolution). Several: the per-frequency channel
        # contraction runs in tiles of frequencies (_SpectralMix), so its transposes stay in
        # cache, over the whole batch (a tile of frames would re-read the whole kernel); the
        # inverse FFTs and the add into the output then run in tiles of frames (_BlockSynthesis).
        ut = u.transpose(1, 2)  # (B, C, T)
        if nb == 1:  # one block: linear convolution by zero padding after the sequence
            frames = ut.unsqueeze(1)  # (B, 1, C, T)
        else:  # overlap-save: block k sees inputs [k L - lead, k L + L), keeps its last L
            frames = F.pad(ut, (lead, nb * L - T)).unfold(-1, n_fft, L).transpose(1, 2)
        Uf = torch.fft.rfft(frames.contiguous(), n=n_fft)  # (B, nb, C, F)
        first = 0 if nb == 1 else lead  # where each block's valid outputs start
        if _compiled_kernels():  # torch.compile: the same tiled kernels, as operators
            blocks = _compiled_blocks(Uf, Kf, T, n_fft, first, L)
            acc = blocks if accumulate is None else accumulate + blocks
            return self._add_free(acc, state, weight)
        plain = plain_autograd(Uf, Kf, accumulate)
        if C == 1 and not plain:
            acc = u.new_zeros((Bn, T, out)) if accumulate is None else accumulate
            acc = _BlockConvolution.apply(acc, Uf, Kf, n_fft, first, L)
            return self._add_free(acc, state, weight)
        acc = u.new_zeros((Bn, T, out)) if accumulate is None else accumulate
        if plain:  # export, torch.func, forward-mode AD: whole-tensor operations, plain autograd
            return self._add_free(_plain_blocks(acc, Uf, Kf, n_fft, first, L), state, weight)
        Y = _block_spectra(Uf, Kf)  # (B, nb, out, F): the channel contraction, whole batch
        acc = _BlockSynthesis.apply(acc, Y, n_fft, first, L)
        return self._add_free(acc, state, weight)

    def last_window(self, time: int, dtype: torch.dtype) -> int:
        """How many of the last ``time`` inputs the final state depends on in ``dtype``.

        ``min(time, free_horizon)``: an input ``h`` or more steps back reaches the state through
        ``Abar^h``, below working precision (see :meth:`free_horizon`).
        """
        time = _check_size(time, "time")
        horizon = self.free_horizon(dtype)
        return time if horizon is None else min(time, horizon)

    def projection_blocks(self, time: int, dtype: torch.dtype) -> tuple[int, int]:
        """Kernel length and block length :meth:`project` uses for ``time`` steps.

        The impulse response is cut at :meth:`free_horizon` ``h`` (``H[j] = Abar^j Bbar`` is below
        working precision beyond it, the same bound as for the free response), so the
        convolution needs only ``min(time, h)`` kernel steps. Sequences longer than
        ``BLOCK_RATIO * h`` run in blocks (overlap-save): the batch-independent kernel work and
        the FFT lengths then stop growing with ``time``.

        Returns:
            ``(kernel_length, block_length)``; ``block_length == time`` means one block.
        """
        time = _check_size(time, "time")
        Lk = self.last_window(time, dtype)
        longest = BLOCK_RATIO * Lk
        if time <= longest:
            return Lk, time
        blocks = -(-time // longest)
        return Lk, -(-time // blocks)

    def _weight_cached(
        self, kind: str, weight: torch.Tensor, extra: tuple, build: Callable[[], torch.Tensor]
    ) -> torch.Tensor:
        """``build()``, cached (one entry per ``kind``) while ``weight`` is unchanged and no
        gradient is recorded for it: streaming inference then pays for it once, not per chunk.

        The weight is usually a fresh view of a parameter, so the key holds its address, version,
        shape and strides, and the entry the base tensor it was built from: an address alone
        can be reused by a new tensor (``torch.func.functional_call`` with fresh weights). The
        entry also keeps the weight's data alive, so a tensor assigned to the parameter's
        ``.data`` (as ``vector_to_parameters`` does) never lands at the cached address.
        """
        key = None
        base = weight if weight._base is None else weight._base
        recording = torch.is_grad_enabled() and weight.requires_grad
        if not recording and self._cacheable() and _plain(weight) and not _tracing():
            self._forget_stale_theta()
            try:
                key = (
                    kind,
                    weight.data_ptr(),
                    weight._version,
                    tuple(weight.shape),
                    weight.stride(),
                    *extra,
                )
            except RuntimeError:  # inference tensors carry no version counter
                key = None
        if key is None:
            return build()
        hit = self._cache.get(key)
        if hit is not None and hit[0] is base:
            return hit[1]
        value = _outside_inference_mode(build)
        # the stale entries of this kind, from a snapshot of the keys: another thread calling
        # the module may add an entry meanwhile (iterating the dict itself would then fail)
        for stale in [k for k in list(self._cache) if k[0] == kind]:
            self._cache.pop(stale, None)
        self._cache[key] = (base, value, weight.detach())
        return value

    def _folded_kernel_rfft(
        self, weight: torch.Tensor, T: int, n_fft: int, dtype: torch.dtype
    ) -> torch.Tensor:
        """``rfft`` of ``K[j] = W (I_C (x) H[j])`` as ``(F, C, out)`` complex.

        ``[Re; Im] rfft(H) @ W`` with ``W`` laid out ``(order, C * out)``: one real GEMM, no FFT of
        the folded kernel. Cached while ``weight`` is unchanged and no gradient is recorded
        (:meth:`_weight_cached`).
        """
        out, d, C = weight.shape[0], self.order, self.memory_size
        Fq = n_fft // 2 + 1

        def build() -> torch.Tensor:
            Hs = self._kernel_rfft_stacked(T, n_fft, dtype)  # (2F, d)
            Wp = weight.to(dtype).reshape(out, C, d).permute(2, 1, 0).reshape(d, C * out)
            if _compiled_kernels():  # torch.compile: the same kernel, as an operator
                return torch.ops.plmu.fold(Hs, Wp).view(Fq, C, out)
            if plain_autograd(Hs, Wp):  # export, torch.func, forward-mode AD
                return _fold(Hs, Wp).view(Fq, C, out)
            return _FoldedKernel.apply(Hs, Wp).view(Fq, C, out)

        return self._weight_cached("folded", weight, (T, n_fft, dtype), build)

    def _folded_kernel_rfft_1(
        self, weight: torch.Tensor, T: int, n_fft: int, dtype: torch.dtype
    ) -> torch.Tensor:
        """:meth:`_folded_kernel_rfft` of one channel as ``(out, F)``, contiguous (cached too:
        the transposing copy cost as much as the rest of a short chunk's product)."""
        return self._weight_cached(
            "folded_1",
            weight,
            (T, n_fft, dtype),
            lambda: self._folded_kernel_rfft(weight, T, n_fft, dtype)[:, 0].T.contiguous(),
        )

    def _add_free(
        self, acc: torch.Tensor, state: torch.Tensor | None, weight: torch.Tensor
    ) -> torch.Tensor:
        """``acc`` ``(B, T, out)`` plus the projected free response of ``state``,
        ``W Abar^(t+1) m_{-1}``, in place (a new tensor under export and ``torch.func``
        transforms, see :func:`_add_leading`).

        Only the first :meth:`free_horizon` steps ``h`` are added; the later ones are below
        working precision (see there), i.e. zero. Unless the weight records a gradient, the
        response comes in blocks of ``s`` steps: ``W Abar^(q s + r + 1) m = R[r] Abar^(q s) m``
        with ``R[r] = W Abar^(r + 1)`` cached (:meth:`_projected_powers`, ``s`` as long as
        :data:`FREE_PROJECTED_MAX_ELEMENTS` allows, up to ``h``), so only every ``s``-th state is
        formed and one product projects them all. Otherwise the state's whole trajectory is
        formed and projected (``order`` times as much work per step as the projection alone).
        """
        if state is None:
            return acc
        T = acc.shape[1]
        horizon = self.free_horizon(state.dtype)
        h = T if horizon is None else min(T, horizon)
        Bn, out, S = state.shape[0], weight.shape[0], self.state_size
        m0 = state.reshape(Bn, self.memory_size, self.order)
        step = 0
        if (
            horizon is not None
            and not (torch.is_grad_enabled() and weight.requires_grad)
            and self._cacheable()
            and _plain(weight)  # a tangent of W reaches the response only through the trajectory
            and not _tracing()  # a graph forms the trajectory from the weight each call
        ):
            step = min(horizon, FREE_PROJECTED_MAX_ELEMENTS // (out * S))
        if step < 1:  # the trajectory, projected: (B, out, h)
            X = self._powers_apply(m0, h).reshape(h, Bn, S)
            free = torch.matmul(weight.to(X.dtype), X.permute(1, 2, 0)).transpose(1, 2)
            return _add_leading(acc, free)
        R = self._projected_powers(weight, step, state.dtype)  # (step, out, S)
        if h <= step:  # one block: the state itself
            Y = (R[:h].reshape(h * out, S) @ state.T).view(h, out, Bn)
            return _add_leading(acc, Y.permute(2, 0, 1))
        blocks = -(-h // step)
        Z = self._block_states(m0, step, blocks).reshape(blocks * Bn, S)
        Y = (R.reshape(step * out, S) @ Z.T).view(step, out, blocks, Bn)  # [r, o, q, b]
        if plain_autograd(acc, Y):  # vmap over the state: Y batched, acc perhaps not
            free = Y.permute(3, 2, 0, 1).reshape(Bn, blocks * step, out)[:, :h]
            return _add_leading(acc, free)
        full = h // step
        acc[:, : full * step].view(Bn, full, step, out).add_(Y[:, :, :full].permute(3, 2, 0, 1))
        if full < blocks:
            rest = h - full * step
            acc[:, full * step : h].add_(Y[:rest, :, full].permute(2, 0, 1))
        return acc

    def _projected_powers(
        self, weight: torch.Tensor, length: int, dtype: torch.dtype
    ) -> torch.Tensor:
        """``W (I_C (x) Abar^(t+1))`` for ``t < length``: ``(length, out, memory_size * order)``.

        Built by doubling in float64 (``R[n + t] = R[t] (I_C (x) Abar^n)``), then cast; cached
        while ``weight`` is unchanged (:meth:`_weight_cached`); for :meth:`_add_free`.
        """
        out, C, d = weight.shape[0], self.memory_size, self.order

        def build() -> torch.Tensor:
            Abar = self.discrete()[0].double()
            R = weight.detach().double().reshape(out * C, d) @ Abar  # t = 0: W Abar
            blocks, n, P = [R], 1, Abar
            while n < length:
                take = min(n, length - n)
                P = P @ P if n > 1 else P  # Abar^n
                blocks.append(torch.cat(blocks)[: take * out * C] @ P)
                n += take
            R = torch.cat(blocks)[: length * out * C]
            return R.view(length, out, C * d).to(dtype)

        return self._weight_cached("projected_powers", weight, (length, dtype), build)

    def extra_repr(self) -> str:
        # the current theta (a trained one too; a float32 log_theta holds ~7 digits); a meta
        # tensor has no value: the theta it was built with
        held = self.log_theta if self.trainable_theta else self.theta_
        value = self.initial_theta if held.is_meta else self.theta
        theta = f"{value:.6g} (trainable)" if self.trainable_theta else f"{value:.10g}"
        chunk = "" if self.chunk_size is None else f", chunk_size={self.chunk_size}"
        return (
            f"memory_size={self.memory_size}, order={self.order}, theta={theta}, "
            f"discretizer={self.discretizer!r}, mode={self.mode!r}{chunk}"
        )


def _add_leading(acc: torch.Tensor, free: torch.Tensor) -> torch.Tensor:
    """``acc`` ``(B, T, out)`` plus ``free`` ``(B, h, out)`` on its first ``h <= T`` steps: in
    place, or as a new tensor where :func:`plain_autograd` says so (under ``vmap`` ``free`` can
    be batched, by a batched state or weight, while ``acc`` is not)."""
    h = free.shape[1]
    if plain_autograd(acc, free):
        return acc + (F.pad(free, (0, 0, 0, acc.shape[1] - h)) if h < acc.shape[1] else free)
    acc[:, :h].add_(free)
    return acc


def _doubling(first: torch.Tensor, squares: torch.Tensor, length: int) -> torch.Tensor:
    """``[first, first P^T, first (P^T)^2, ...]`` ``(length, *first.shape)``, with ``squares[k]``
    ``= P^(2^k)``: rows ``n..2n-1`` are rows ``0..n-1`` times ``P^n``. Without a gradient to
    record (and no forward-mode tangent or ``torch.func`` transform, which ``out=`` operations
    do not support) each doubling writes into one buffer; else the rows are concatenated."""
    recording = torch.is_grad_enabled() and (first.requires_grad or squares.requires_grad)
    if recording or not (_plain(first) and _plain(squares)):
        X = first.unsqueeze(0)
        k = 0
        while X.shape[0] < length:
            take = min(X.shape[0], length - X.shape[0])
            X = torch.cat([X, X[:take] @ squares[k].T], dim=0)
            k += 1
        return X
    X = first.new_empty((length, *first.shape))
    X[0] = first
    n, k = 1, 0
    while n < length:
        take = min(n, length - n)
        torch.matmul(X[:take], squares[k].T, out=X[n : n + take])
        n += take
        k += 1
    return X


def create_graph_backward(
    forward: Callable[..., torch.Tensor | tuple[torch.Tensor, ...]],
    inputs: Sequence[object],
    needs: Sequence[bool],
    grads: Sequence[torch.Tensor | None],
) -> tuple[torch.Tensor | None, ...]:
    """A custom Function's backward by autograd of its plain ``forward(*inputs)``.

    The hand-written backward passes are first-order: their results are computed from values
    saved in forward, which do not carry their dependence on the inputs. When the gradient is
    itself to be differentiated (``create_graph=True``: gradient penalties, Hessian-vector
    products, meta-learning) the Functions call this instead, which recomputes the forward from
    the saved inputs with plain operations and differentiates that, keeping the graph.

    Args:
        forward: the Function's computation as plain differentiable operations.
        inputs: the Function's inputs as saved (tensors keep their graph), non-tensors as is.
        needs: ``ctx.needs_input_grad``.
        grads: the incoming gradients, one per output of ``forward`` (``None`` for none).

    Returns:
        One gradient (or ``None``) per input.
    """
    with torch.enable_grad():
        outs = forward(*inputs)
    outs = outs if isinstance(outs, tuple) else (outs,)
    pairs = [(o, g) for o, g in zip(outs, grads) if g is not None and o.requires_grad]
    wrt = [t for t, n in zip(inputs, needs) if n]
    if not pairs or not wrt:
        return tuple(None for _ in inputs)
    got = iter(
        torch.autograd.grad(
            [o for o, _ in pairs],
            wrt,
            [g for _, g in pairs],
            create_graph=True,
            allow_unused=True,
        )
    )
    return tuple(next(got) if n else None for n in needs)


def _fold(Hs: torch.Tensor, Wp: torch.Tensor) -> torch.Tensor:
    """``(F, n)`` complex ``K[:F] + i K[F:]`` with ``K = Hs @ Wp`` (``Hs`` stacks ``[Re; Im]``)."""
    K = Hs @ Wp
    Fq = K.shape[0] // 2
    return torch.complex(K[:Fq], K[Fq:])


class _FoldedKernel(torch.autograd.Function):
    """``[Re; Im] rfft(H) @ W`` as one complex ``(F, C * out)`` tensor: ``Kf = K[:F] + i K[F:]``.

    Autograd of ``torch.complex(K[:F], K[F:])`` zero-fills a ``(2F, C * out)`` gradient for
    each half and adds them; the kernel is batch-independent but as large as the batch work at
    small batches, so backward here makes one ``[Re; Im]`` copy of the gradient and one GEMM.

    Shapes: ``Hs`` ``(2F, d)``, ``Wp`` ``(d, C * out)``; returns ``(F, C * out)`` complex.
    """

    @staticmethod
    def forward(ctx, Hs: torch.Tensor, Wp: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(Hs, Wp)
        return _fold(Hs, Wp)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        Hs, Wp = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph: a gradient to differentiate again
            return create_graph_backward(_fold, (Hs, Wp), ctx.needs_input_grad, (grad,))
        return _fold_backward(grad, Hs, Wp, *ctx.needs_input_grad[:2])


def _fold_backward(
    grad: torch.Tensor, Hs: torch.Tensor, Wp: torch.Tensor, need_hs: bool, need_wp: bool
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """:class:`_FoldedKernel`'s first-order backward: the gradients of ``Hs`` and ``Wp``."""
    # (F, n, 2) -> (2, F, n) -> (2F, n): [Re; Im], matching the rows of Hs
    G = torch.view_as_real(grad.resolve_conj()).permute(2, 0, 1).reshape(Hs.shape[0], -1)
    g_hs = G @ Wp.T if need_hs else None  # trainable theta
    g_wp = Hs.T @ G if need_wp else None
    return g_hs, g_wp


# frequencies per tile of _SpectralMix on CPU: 16 was the fastest of 16, 32, 64 and 128 for the
# forward product at batch 32, 16 channels, 128 outputs and 2049 frequencies; smaller products get
# wider tiles of about the same size in memory (batch * (channels + outputs) * tile values), so
# the Python loop stays short
MIX_TILE = 16
MIX_TILE_VALUES = MIX_TILE * 32 * (16 + 128)


def _mix(U: torch.Tensor, K: torch.Tensor, f0: int, f1: int) -> torch.Tensor:
    """``(f1 - f0, B, out)``: ``U[:, :, f] @ K[f]`` for the frequencies ``f0 <= f < f1``."""
    return torch.bmm(_tile(U, f0, f1), K[f0:f1])


def _tile(X: torch.Tensor, f0: int, f1: int) -> torch.Tensor:
    """``X[:, :, f0:f1]`` as a contiguous ``(f1 - f0, X.shape[0], X.shape[1])`` tile.

    One copy of the tile: ``bmm`` on the strided view would copy each of its matrices apart.
    """
    return X[:, :, f0:f1].permute(2, 0, 1).contiguous()


class _SpectralMix(torch.autograd.Function):
    """``Y[b, o, f] = sum_c U[b, c, f] K[f, c, o]``, the per-frequency channel contraction.

    A batched GEMM over frequencies needs the frequency axis first, the FFTs need it last; whole-
    array transposes of ``(B, out, F)`` cost more than the GEMMs themselves on CPU. So the
    product runs in tiles of at least :data:`MIX_TILE` frequencies (:func:`_tiles`), whose
    transposes stay in cache (one tile on CUDA, where a launch per tile would cost more).

    Shapes: ``U`` ``(B, C, F)``, ``K`` ``(F, C, out)`` (complex); returns ``(B, out, F)``.
    """

    @staticmethod
    def forward(ctx, U: torch.Tensor, K: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(U, K)
        return _mix_forward(U, K)

    @staticmethod
    def backward(ctx, gY: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        U, K = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph: a gradient to differentiate again
            return create_graph_backward(_plain_mix, (U, K), ctx.needs_input_grad, (gY,))
        return _mix_backward(gY, U, K, *ctx.needs_input_grad[:2])


def _mix_forward(U: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """:class:`_SpectralMix`'s forward, in tiles of frequencies: ``(B, out, F)``."""
    Bn, Fq, out = U.shape[0], U.shape[2], K.shape[2]
    Y = U.new_empty((Bn, out, Fq))
    for f0, f1 in _tiles(U, K):
        Y[:, :, f0:f1] = _mix(U, K, f0, f1).permute(1, 2, 0)
    return Y


def _mix_backward(
    gY: torch.Tensor, U: torch.Tensor, K: torch.Tensor, need_u: bool, need_k: bool
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """:class:`_SpectralMix`'s first-order backward, in tiles of frequencies: ``(gU, gK)``."""
    gU = torch.empty_like(U) if need_u else None
    gK = torch.empty_like(K) if need_k else None
    for f0, f1 in _tiles(U, K):
        g = _tile(gY, f0, f1)  # (t, B, out)
        if gU is not None:  # gU[b, c, f] = sum_o gY[b, o, f] conj(K[f, c, o])
            gU[:, :, f0:f1] = torch.bmm(g, K[f0:f1].mH).permute(1, 2, 0)
        if gK is not None:  # gK[f, c, o] = sum_b conj(U[b, c, f]) gY[b, o, f]
            gK[f0:f1] = torch.bmm(_tile(U, f0, f1).mH, g)
    return gU, gK


class _BlockConvolution(torch.autograd.Function):
    """Add the projected overlap-save blocks of one memory channel to ``acc`` in place, a tile
    of frames at a time.

    ``acc[b, k L + t, o] += irfft(Uf[b, k, 0] Kf[o], n)[first + t]`` for ``0 <= t < L`` (cut at
    ``T``). Each tile's spectra, inverse FFT and, in backward, the
    zero-padded gradient and its FFT hold about :data:`BLOCK_TILE_ELEMENTS` values: whole-batch
    intermediates of ``(B, nb, out, n_fft)`` are hundreds of MB, fresh pages each step, and
    cost more than the FFTs themselves. The backward is the exact adjoint: ``irfft``'s
    adjoint is ``rfft`` scaled by ``1/n`` (DC and Nyquist) or ``2/n`` (the rest).

    With several channels the kernel ``(F, C, out)`` is as large as many frames' outputs and a
    tile would re-read all of it; their contraction runs whole-batch (:class:`_SpectralMix`),
    and only the inverse FFTs run in tiles (:class:`_BlockSynthesis`).

    Shapes: ``acc`` ``(B, T, out)``; ``Uf`` ``(B, nb, 1, F)`` and ``Kf`` ``(out, F)``, complex.
    Returns ``acc``.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx, acc: torch.Tensor, Uf: torch.Tensor, Kf: torch.Tensor, n_fft: int, first: int, L: int
    ) -> torch.Tensor:
        ctx.mark_dirty(acc)
        ctx.save_for_backward(Uf, Kf)
        ctx.geometry = (acc.shape[1], n_fft, first, L)
        return _convolution_forward(acc, Uf, Kf, n_fft, first, L)

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        Uf, Kf = ctx.saved_tensors
        T, n_fft, first, L = ctx.geometry
        need_u, need_k = ctx.needs_input_grad[1:3]
        if not (need_u or need_k):
            return g, None, None, None, None, None
        if torch.is_grad_enabled():  # create_graph: a gradient to differentiate again

            def plain(Uf: torch.Tensor, Kf: torch.Tensor) -> torch.Tensor:
                acc = g.new_zeros((Uf.shape[0], T, Kf.shape[0]))
                return _plain_blocks(acc, Uf, Kf, n_fft, first, L)

            gU, gK = create_graph_backward(plain, (Uf, Kf), (need_u, need_k), (g,))
            return g, gU, gK, None, None, None
        gU, gK = _convolution_backward(g, Uf, Kf, n_fft, first, L, need_u, need_k)
        return g, gU, gK, None, None, None


def _convolution_forward(
    acc: torch.Tensor, Uf: torch.Tensor, Kf: torch.Tensor, n_fft: int, first: int, L: int
) -> torch.Tensor:
    """:class:`_BlockConvolution`'s forward: the blocks added to ``acc`` in place, a tile of
    frames at a time. Returns ``acc``."""
    out = acc.shape[2]
    for b0, b1, k0, k1 in _frame_tiles(Uf.shape[0], Uf.shape[1], out * n_fft, Uf.device):
        y = torch.fft.irfft(Uf[b0:b1, k0:k1] * Kf, n=n_fft)  # (b, g, out, n_fft)
        _add_blocks(acc[b0:b1], y, k0, first, L)
    return acc


def _convolution_backward(
    g: torch.Tensor,
    Uf: torch.Tensor,
    Kf: torch.Tensor,
    n_fft: int,
    first: int,
    L: int,
    need_u: bool,
    need_k: bool,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """:class:`_BlockConvolution`'s first-order backward for the gradient ``g`` ``(B, T, out)``
    of the output: ``(gU, gK)``, a tile of frames at a time."""
    Bn, nb = Uf.shape[:2]
    out = g.shape[2]
    gU = torch.empty_like(Uf) if need_u else None
    gK = torch.zeros_like(Kf) if need_k else None
    # physical conjugates, not lazy ``.conj()`` views: a product with a conjugate view inside
    # a custom operator gave wrong numbers on a compiled graph's first call (torch 2.13 runs
    # it under an aliasing check there; ``plmu::block_convolution_backward`` failed opcheck
    # and a training step under compiled autograd got wrong gradients on its first call).
    # The eager product materialised the conjugate anyway, once per tile for ``Kf``.
    Kc = Kf.conj_physical() if need_u else None
    for b0, b1, k0, k1 in _frame_tiles(Bn, nb, out * n_fft, Uf.device):
        frames = g.new_zeros((b1 - b0, k1 - k0, out, n_fft))
        _add_blocks(g[b0:b1], frames, k0, first, L, gather=True)
        gY = _irfft_adjoint(frames, n_fft)  # (b, k, out, F)
        if gU is not None:
            gU[b0:b1, k0:k1] = (gY * Kc).sum(2, keepdim=True)
        if gK is not None:
            gK += (gY * Uf[b0:b1, k0:k1].conj_physical()).sum((0, 1))
    return gU, gK


class _BlockSynthesis(torch.autograd.Function):
    """Add the inverse FFTs of block spectra to ``acc`` in place, a tile of frames at a time.

    ``acc[b, k L + t, o] += irfft(Y[b, k, o], n)[first + t]`` for ``0 <= t < L`` (cut at ``T``):
    the output stage of :meth:`LegendreMemory.project` with several channels, after the
    whole-batch channel contraction (:class:`_SpectralMix`). As in :class:`_BlockConvolution`,
    the inverse FFTs and, in backward, the zero-padded gradient frames and their FFTs run in
    tiles of about :data:`BLOCK_TILE_ELEMENTS` values instead of whole-batch ``(B, nb, out,
    n_fft)`` buffers (fresh pages each step). Linear in ``Y``, so nothing is saved.

    Shapes: ``acc`` ``(B, T, out)``; ``Y`` ``(B, nb, out, F)`` complex. Returns ``acc``.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx, acc: torch.Tensor, Y: torch.Tensor, n_fft: int, first: int, L: int
    ) -> torch.Tensor:
        ctx.mark_dirty(acc)
        ctx.geometry = (n_fft, first, L, Y.shape)
        return _synthesis_forward(acc, Y, n_fft, first, L)

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        n_fft, first, L, shape = ctx.geometry
        if not ctx.needs_input_grad[1]:
            return g, None, None, None, None
        if torch.is_grad_enabled():  # create_graph: the adjoint as differentiable operations
            gY = _irfft_adjoint(_gather_blocks(g, shape, n_fft, first, L), n_fft)
            return g, gY, None, None, None
        return g, _synthesis_backward(g, shape, n_fft, first, L), None, None, None


def _synthesis_forward(
    acc: torch.Tensor, Y: torch.Tensor, n_fft: int, first: int, L: int
) -> torch.Tensor:
    """:class:`_BlockSynthesis`'s forward: the inverse FFTs of ``Y`` added to ``acc`` in place,
    a tile of frames at a time. Returns ``acc``."""
    for b0, b1, k0, k1 in _frame_tiles(Y.shape[0], Y.shape[1], Y.shape[2] * n_fft, Y.device):
        _add_blocks(acc[b0:b1], torch.fft.irfft(Y[b0:b1, k0:k1], n=n_fft), k0, first, L)
    return acc


def _synthesis_backward(
    g: torch.Tensor, shape: Sequence[int], n_fft: int, first: int, L: int
) -> torch.Tensor:
    """:class:`_BlockSynthesis`'s first-order backward: the gradient of ``Y`` (of ``shape``
    ``(B, nb, out, F)``) for the gradient ``g`` ``(B, T, out)`` of the output, in tiles."""
    Bn, nb, out, _ = shape
    gY = g.new_empty(tuple(shape), dtype=torch.promote_types(g.dtype, torch.complex64))
    for b0, b1, k0, k1 in _frame_tiles(Bn, nb, out * n_fft, g.device):
        frames = g.new_zeros((b1 - b0, k1 - k0, out, n_fft))
        _add_blocks(g[b0:b1], frames, k0, first, L, gather=True)
        gY[b0:b1, k0:k1] = _irfft_adjoint(frames, n_fft)
    return gY


def _gather_blocks(
    g: torch.Tensor, shape: torch.Size, n_fft: int, first: int, L: int
) -> torch.Tensor:
    """The frames ``(B, nb, out, n_fft)`` whose entries ``[first, first + L)`` of block ``k``
    hold steps ``[k L, k L + L)`` of ``g`` ``(B, T, out)`` (zeros elsewhere): the adjoint of
    :func:`_add_blocks`, as differentiable operations."""
    Bn, nb, out, _ = shape
    T = g.shape[1]
    gt = F.pad(g.transpose(1, 2), (0, nb * L - T)).reshape(Bn, out, nb, L).transpose(1, 2)
    return F.pad(gt, (first, n_fft - first - L))


def _irfft_adjoint(frames: torch.Tensor, n_fft: int) -> torch.Tensor:
    """The adjoint of ``irfft(., n=n_fft)`` over the last axis: ``rfft`` scaled by ``1/n`` at DC
    (and Nyquist for even ``n``), ``2/n`` elsewhere."""
    Fq = n_fft // 2 + 1
    scale = frames.new_full((Fq,), 2.0 / n_fft)
    scale[0] = 1.0 / n_fft
    if n_fft % 2 == 0:
        scale[-1] = 1.0 / n_fft
    return torch.fft.rfft(frames) * scale


def _plain_blocks(
    acc: torch.Tensor, Uf: torch.Tensor, Kf: torch.Tensor, n_fft: int, first: int, L: int
) -> torch.Tensor:
    """What :class:`_BlockConvolution` computes, as whole-tensor operations (plain autograd):
    for export and ``torch.func`` transforms, and for its backward when that is differentiated
    again. Returns a new tensor, ``acc`` plus the blocks: not in place, since under ``vmap``
    the blocks can be batched (a batched weight or state) while ``acc`` is not."""
    y = torch.fft.irfft(_block_spectra(Uf, Kf), n=n_fft)  # (B, nb, out, n_fft)
    Bn, nb, out, _ = y.shape
    blocks = y[..., first : first + L].transpose(-1, -2).reshape(Bn, nb * L, out)
    return acc + blocks[:, : acc.shape[1]]


def _block_spectra(Uf: torch.Tensor, Kf: torch.Tensor) -> torch.Tensor:
    """``(B, nb, C, F)`` block spectra times the folded kernel: ``(B, nb, out, F)`` complex.

    ``Kf`` is ``(F, C, out)``, or ``(out, F)`` when ``C == 1`` (then a broadcast product)."""
    Bn, nb, C, Fq = Uf.shape
    if C == 1:
        return Uf * Kf
    return _spectral_mix(Uf.reshape(Bn * nb, C, Fq), Kf).view(Bn, nb, Kf.shape[-1], Fq)


def _frame_tiles(
    Bn: int, nb: int, per_frame: int, device: torch.device
) -> list[tuple[int, int, int, int]]:
    """Tiles ``(b0, b1, k0, k1)`` of the ``Bn x nb`` frames, about :data:`BLOCK_TILE_ELEMENTS`
    values (``per_frame`` each) a tile: whole rows of blocks while they fit, else part of one
    sequence's blocks. One tile on CUDA: its caching allocator reuses memory without page
    faults, and a launch per tile would cost more."""
    if device.type == "cuda":
        return [(0, Bn, 0, nb)]
    frames = max(1, BLOCK_TILE_ELEMENTS // per_frame)
    if frames >= nb:
        step = frames // nb
        return [(b, min(Bn, b + step), 0, nb) for b in range(0, Bn, step)]
    return [(b, b + 1, k, min(nb, k + frames)) for b in range(Bn) for k in range(0, nb, frames)]


def _add_blocks(
    acc: torch.Tensor, y: torch.Tensor, k0: int, first: int, L: int, gather: bool = False
) -> None:
    """Add blocks ``k0, k0 + 1, ...`` of ``y`` ``(B, g, out, n_fft)`` to ``acc`` ``(B, T, out)``
    in place: block ``k`` gives steps ``[k L, k L + L)`` (cut at ``T``) from its entries
    ``[first, first + L)``. With ``gather`` the other way: those steps of ``acc`` are added to
    those entries of ``y``. One transposing pass, no intermediate copy."""
    Bn, T, out = acc.shape
    start = k0 * L
    g = min(y.shape[1], -(-(T - start) // L))
    full = min(g, (T - start) // L)  # blocks that fit whole
    pairs = []
    if start == 0 and T <= L:  # one block: acc itself, not a view (autograd copies less)
        pairs.append((acc, y[:, 0, :, first : first + T].mT))
    elif full:
        pairs.append(
            (
                acc[:, start : start + full * L].view(Bn, full, L, out),
                y[:, :full, :, first : first + L].transpose(-1, -2),
            )
        )
    if full < g:
        rest = T - start - full * L
        pairs.append((acc[:, start + full * L :], y[:, full, :, first : first + rest].mT))
    for a, b in pairs:
        if gather:
            b.add_(a)
        else:
            a.add_(b)


def _plain_mix(U: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """:class:`_SpectralMix` as one ``einsum`` (plain autograd)."""
    return torch.einsum("bcf,fco->bof", U, K)


def _tiles(U: torch.Tensor, K: torch.Tensor) -> list[tuple[int, int]]:
    """Frequency ranges ``[f0, f1)`` for ``U`` ``(B, C, F)`` and ``K`` ``(F, C, out)``."""
    n = U.shape[2]
    if U.device.type == "cuda":
        return [(0, n)]
    tile = max(MIX_TILE, MIX_TILE_VALUES // (U.shape[0] * (U.shape[1] + K.shape[2])))
    return [(f0, min(n, f0 + tile)) for f0 in range(0, n, tile)]


def _spectral_mix(U: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """:class:`_SpectralMix` (one ``einsum`` where :func:`plain_autograd` says so)."""
    if plain_autograd(U, K):
        return _plain_mix(U, K)
    return _SpectralMix.apply(U, K)


# ------------------------------------------------------- the tiled kernels as graph operators
#
# Under torch.compile the custom Functions above are neither traced (Dynamo would unroll their
# tile loops into the graph: 2.9 s a training step) nor replaced by whole-tensor operations
# (whole-batch (B, nb, out, n_fft) intermediates: a compiled full-sequence step took 360 ms
# against 183 ms eager). The graph calls the same tiled kernels instead, as custom operators
# with their hand-written backwards (registered with ``register_autograd``): opaque to the
# compiler, which sees only the shapes their fakes give. Each returns a new tensor (an
# inductor graph may reuse an operator's output buffer, and a functional graph has no in-place
# ``acc``); the caller adds the blocks to its accumulator, which inductor fuses with the ops
# that follow. A first-order backward whose input needs no gradient returns an empty tensor
# (an operator returns no ``None``), dropped again before autograd sees it.


def _compiled_kernels() -> bool:
    """Under ``torch.compile`` (not ``torch.export``, whose program must name no operator of
    this process, nor ``torch.jit.trace``, nor inside a ``torch.func`` transform, for which the
    operators have no rules): the fused projection calls its tiled kernels as the operators
    ``plmu::fold``, ``plmu::spectral_mix``, ``plmu::block_convolution`` and
    ``plmu::block_synthesis``."""
    return _compiling_not_exporting() and not torch.jit.is_tracing() and not _transforms_active()


def _real_dtype(dtype: torch.dtype) -> torch.dtype:
    """The real dtype of a complex one (``complex64 -> float32``, ``complex128 -> float64``)."""
    return torch.float64 if dtype == torch.complex128 else torch.float32


def _or_empty(t: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """``t``, or an empty tensor like ``like`` for a gradient that was not asked for."""
    return like.new_empty((0,)) if t is None else t


def _gradients_like(
    a: torch.Tensor, b: torch.Tensor, need_a: bool, need_b: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """A backward operator's fake: gradients shaped like ``a`` and ``b``, empty where not asked
    for."""
    return (
        torch.empty_like(a) if need_a else a.new_empty((0,)),
        torch.empty_like(b) if need_b else b.new_empty((0,)),
    )


def _pair_backward(plain: Callable, backward_op: Callable) -> Callable:
    """``register_autograd``'s backward for an operator of two tensors ``(a, b)`` whose
    first-order gradients ``backward_op(grad, a, b, need_a, need_b)`` computes, and whose
    second order differentiates ``plain(a, b)`` (under ``create_graph``)."""

    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        a, b = ctx.saved_tensors
        need = ctx.needs_input_grad
        if torch.is_grad_enabled():  # create_graph: a gradient to differentiate again
            return create_graph_backward(plain, (a, b), need, (grad,))
        g_a, g_b = backward_op(grad, a, b, need[0], need[1])
        return _asked(g_a, need[0]), _asked(g_b, need[1])

    return backward


def _asked(t: torch.Tensor, need: bool) -> torch.Tensor | None:
    """A backward operator's gradient for autograd: ``None`` where it was not asked for."""
    return t if need else None


# plmu::fold: _FoldedKernel


@torch.library.custom_op("plmu::fold", mutates_args=())
def _fold_op(Hs: torch.Tensor, Wp: torch.Tensor) -> torch.Tensor:
    """:class:`_FoldedKernel` as an operator: ``(F, n)`` complex for ``Hs`` ``(2F, d)`` and
    ``Wp`` ``(d, n)``."""
    return _fold(Hs, Wp)


@_fold_op.register_fake
def _(Hs: torch.Tensor, Wp: torch.Tensor) -> torch.Tensor:
    dtype = torch.promote_types(torch.promote_types(Hs.dtype, Wp.dtype), torch.complex64)
    return Hs.new_empty((Hs.shape[0] // 2, Wp.shape[1]), dtype=dtype)


@torch.library.custom_op("plmu::fold_backward", mutates_args=())
def _fold_backward_op(
    grad: torch.Tensor, Hs: torch.Tensor, Wp: torch.Tensor, need_hs: bool, need_wp: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`_fold_backward` as an operator (empty tensors for gradients not asked for)."""
    g_hs, g_wp = _fold_backward(grad, Hs, Wp, need_hs, need_wp)
    return _or_empty(g_hs, Hs), _or_empty(g_wp, Wp)


@_fold_backward_op.register_fake
def _(grad, Hs, Wp, need_hs, need_wp):
    return _gradients_like(Hs, Wp, need_hs, need_wp)


def _save_inputs(ctx, inputs: tuple, output: torch.Tensor) -> None:
    ctx.save_for_backward(*inputs)


_fold_op.register_autograd(_pair_backward(_fold, _fold_backward_op), setup_context=_save_inputs)


# plmu::spectral_mix: _SpectralMix


@torch.library.custom_op("plmu::spectral_mix", mutates_args=())
def _spectral_mix_op(U: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """:class:`_SpectralMix` as an operator: ``(B, out, F)`` for ``U`` ``(B, C, F)`` and ``K``
    ``(F, C, out)``."""
    return _mix_forward(U, K)


@_spectral_mix_op.register_fake
def _(U: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    return U.new_empty((U.shape[0], K.shape[2], U.shape[2]))


@torch.library.custom_op("plmu::spectral_mix_backward", mutates_args=())
def _spectral_mix_backward_op(
    gY: torch.Tensor, U: torch.Tensor, K: torch.Tensor, need_u: bool, need_k: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`_mix_backward` as an operator (empty tensors for gradients not asked for)."""
    gU, gK = _mix_backward(gY, U, K, need_u, need_k)
    return _or_empty(gU, U), _or_empty(gK, K)


@_spectral_mix_backward_op.register_fake
def _(gY, U, K, need_u, need_k):
    return _gradients_like(U, K, need_u, need_k)


_spectral_mix_op.register_autograd(
    _pair_backward(_plain_mix, _spectral_mix_backward_op), setup_context=_save_inputs
)


# plmu::block_convolution: _BlockConvolution, the blocks alone (no accumulator)


@torch.library.custom_op("plmu::block_convolution", mutates_args=())
def _block_convolution_op(
    Uf: torch.Tensor, Kf: torch.Tensor, T: int, n_fft: int, first: int, L: int
) -> torch.Tensor:
    """:class:`_BlockConvolution`'s blocks as an operator: ``(B, T, out)`` for ``Uf``
    ``(B, nb, 1, F)`` and ``Kf`` ``(out, F)``."""
    acc = Uf.new_zeros((Uf.shape[0], T, Kf.shape[0]), dtype=_real_dtype(Uf.dtype))
    return _convolution_forward(acc, Uf, Kf, n_fft, first, L)


@_block_convolution_op.register_fake
def _(Uf, Kf, T, n_fft, first, L):
    return Uf.new_empty((Uf.shape[0], T, Kf.shape[0]), dtype=_real_dtype(Uf.dtype))


@torch.library.custom_op("plmu::block_convolution_backward", mutates_args=())
def _block_convolution_backward_op(
    g: torch.Tensor,
    Uf: torch.Tensor,
    Kf: torch.Tensor,
    n_fft: int,
    first: int,
    L: int,
    need_u: bool,
    need_k: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`_convolution_backward` as an operator (empty tensors for gradients not asked
    for)."""
    gU, gK = _convolution_backward(g, Uf, Kf, n_fft, first, L, need_u, need_k)
    return _or_empty(gU, Uf), _or_empty(gK, Kf)


@_block_convolution_backward_op.register_fake
def _(g, Uf, Kf, n_fft, first, L, need_u, need_k):
    return _gradients_like(Uf, Kf, need_u, need_k)


def _block_convolution_setup(ctx, inputs: tuple, output: torch.Tensor) -> None:
    Uf, Kf, _T, n_fft, first, L = inputs
    ctx.save_for_backward(Uf, Kf)
    ctx.geometry = (n_fft, first, L)


def _block_convolution_op_backward(ctx, g: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
    Uf, Kf = ctx.saved_tensors
    n_fft, first, L = ctx.geometry
    need_u, need_k = ctx.needs_input_grad[:2]
    if not (need_u or need_k):
        return None, None, None, None, None, None
    if torch.is_grad_enabled():  # create_graph: a gradient to differentiate again

        def plain(Uf: torch.Tensor, Kf: torch.Tensor) -> torch.Tensor:
            acc = g.new_zeros((Uf.shape[0], g.shape[1], Kf.shape[0]))
            return _plain_blocks(acc, Uf, Kf, n_fft, first, L)

        gU, gK = create_graph_backward(plain, (Uf, Kf), (need_u, need_k), (g,))
        return gU, gK, None, None, None, None
    gU, gK = torch.ops.plmu.block_convolution_backward(g, Uf, Kf, n_fft, first, L, need_u, need_k)
    return _asked(gU, need_u), _asked(gK, need_k), None, None, None, None


_block_convolution_op.register_autograd(
    _block_convolution_op_backward, setup_context=_block_convolution_setup
)


# plmu::block_synthesis: _BlockSynthesis, the blocks alone (no accumulator)


@torch.library.custom_op("plmu::block_synthesis", mutates_args=())
def _block_synthesis_op(Y: torch.Tensor, T: int, n_fft: int, first: int, L: int) -> torch.Tensor:
    """:class:`_BlockSynthesis`'s blocks as an operator: ``(B, T, out)`` for ``Y``
    ``(B, nb, out, F)``."""
    acc = Y.new_zeros((Y.shape[0], T, Y.shape[2]), dtype=_real_dtype(Y.dtype))
    return _synthesis_forward(acc, Y, n_fft, first, L)


@_block_synthesis_op.register_fake
def _(Y, T, n_fft, first, L):
    return Y.new_empty((Y.shape[0], T, Y.shape[2]), dtype=_real_dtype(Y.dtype))


@torch.library.custom_op("plmu::block_synthesis_backward", mutates_args=())
def _block_synthesis_backward_op(
    g: torch.Tensor, shape: list[int], n_fft: int, first: int, L: int
) -> torch.Tensor:
    """:func:`_synthesis_backward` as an operator."""
    return _synthesis_backward(g, shape, n_fft, first, L)


@_block_synthesis_backward_op.register_fake
def _(g, shape, n_fft, first, L):
    return g.new_empty(shape, dtype=torch.promote_types(g.dtype, torch.complex64))


def _block_synthesis_setup(ctx, inputs: tuple, output: torch.Tensor) -> None:
    Y, _T, n_fft, first, L = inputs
    ctx.geometry = (list(Y.shape), n_fft, first, L)


def _block_synthesis_op_backward(ctx, g: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
    shape, n_fft, first, L = ctx.geometry
    if not ctx.needs_input_grad[0]:
        return None, None, None, None, None
    if torch.is_grad_enabled():  # create_graph: the adjoint as differentiable operations
        gY = _irfft_adjoint(_gather_blocks(g, torch.Size(shape), n_fft, first, L), n_fft)
    else:
        gY = torch.ops.plmu.block_synthesis_backward(g, shape, n_fft, first, L)
    return gY, None, None, None, None


_block_synthesis_op.register_autograd(
    _block_synthesis_op_backward, setup_context=_block_synthesis_setup
)


def _compiled_blocks(
    Uf: torch.Tensor, Kf: torch.Tensor, T: int, n_fft: int, first: int, L: int
) -> torch.Tensor:
    """The projected blocks ``(B, T, out)`` of :meth:`LegendreMemory.project` through the
    operators (:func:`_compiled_kernels`): ``Uf`` ``(B, nb, C, F)``, ``Kf`` ``(out, F)`` for
    ``C == 1``, else ``(F, C, out)``."""
    Bn, nb, C, Fq = Uf.shape
    if C == 1:
        return torch.ops.plmu.block_convolution(Uf, Kf, T, n_fft, first, L)
    Y = torch.ops.plmu.spectral_mix(Uf.reshape(Bn * nb, C, Fq), Kf)
    return torch.ops.plmu.block_synthesis(Y.view(Bn, nb, Kf.shape[-1], Fq), T, n_fft, first, L)


def fft_size(n: int) -> int:
    """Smallest ``2^a 3^b 5^c >= n`` with ``a >= min(5, log2 n)``: an FFT length that is fast.

    pocketfft (CPU) runs a real FFT whose length has a small power-of-two factor up to about
    twice as slow per element (``11250 = 2 * 3^2 * 5^4`` against ``11520 = 2^8 * 3^2 * 5``,
    ``12500`` against ``12800``), so the factor of two is kept at least ``2^5`` (measured:
    ``scripts/fft_lengths.py``, docs/performance.md).
    """
    n = int(n)  # under torch.jit.trace a size is a 0-dim tensor
    if n <= 1:
        return 1
    min_two = 1 << min(FFT_MIN_TWO_POWER, n.bit_length() - 1)
    best = 1 << (n - 1).bit_length()
    p5 = min_two
    while p5 < best:
        p35 = p5
        while p35 < best:
            p = p35
            while p < n:
                p *= 2
            best = min(best, p)
            p35 *= 3
        p5 *= 5
    return best

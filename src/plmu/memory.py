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

import ctypes
import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from plmu.checks import _zeros, check_lengths, check_sequence, check_state, check_step_input
from plmu.graph_constants import (
    _CONSTANT_BUILD,
    _CONSTANT_KINDS,
    _compiled_horizon,
    _register,
)
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
from plmu.padding import gather_time, right_align
from plmu.precision import _LOW_PRECISION, _float32, full_precision_under_autocast
from plmu.saved_config import _SavedConfig
from plmu.spectral import (
    _block_spectra,
    _BlockConvolution,
    _BlockSynthesis,
    _fold,
    _FoldedKernel,
    _plain_blocks,
    fft_size,
)
from plmu.spectral_ops import _compiled_blocks, _compiled_kernels
from plmu.tracing import _compiling_not_exporting, _plain, _tracing, plain_autograd

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
# the free response of a carried state comes from cached projected powers W Abar^(r+1), r < s,
# of at most this many values (s x outputs x state size; s up to the free horizon): 2 MB in
# float32, built (in float64) with this many times `order` multiply-adds, about 0.1 s at order 256
FREE_PROJECTED_MAX_ELEMENTS = 1 << 19
# each memory's kernel cache drops its oldest entries past these bounds. Batches
# padded to their longest sequence come in many lengths, each with a few entries (IWSLT: about
# 150 lengths, 600 entries and 18 MB a memory at order 64); the cache was cleared whenever it
# passed 64 entries, and rebuilt its kernels in nearly every batch
CACHE_MAX_ENTRIES = 1024
CACHE_MAX_BYTES = 32 << 20

# the float64 buffers of the system (theta_ the fixed theta; the rest built from it, not saved)
_SYSTEM_BUFFERS = ("A", "B", "theta_", "Abar", "Bbar")


def _storages(value: object, found: dict[tuple, int] | None = None) -> dict[tuple, int]:
    """The storages of the tensors in a cache entry (a tensor, or a tuple or list of them):
    ``{(device, address): bytes}``, each storage once. An entry of ``_weight_cached`` holds a
    weight's base tensor and its ``detach()``, which share one storage; a view keeps its whole
    storage alive."""
    found = {} if found is None else found
    if isinstance(value, torch.Tensor):
        try:
            storage = value.untyped_storage()
            found[(value.device, storage.data_ptr())] = storage.nbytes()
        except (NotImplementedError, RuntimeError):  # a torch.func wrapper: no storage to see
            found[(value.device, id(value))] = value.numel() * value.element_size()
    elif isinstance(value, (tuple, list)):
        for v in value:
            _storages(v, found)
    return found


def _nbytes(value: object) -> int:
    """The bytes a cache entry keeps alive: each storage of its tensors counted once."""
    return sum(_storages(value).values())


def _load_memcmp() -> Callable[[int, int, int], int] | None:
    """libc's ``memcmp`` through :mod:`ctypes` (``None`` where the C library has none)."""
    try:
        memcmp = ctypes.CDLL(None).memcmp
    except (OSError, TypeError, AttributeError):  # e.g. Windows: no CDLL(None)
        try:
            memcmp = ctypes.cdll.msvcrt.memcmp  # type: ignore[attr-defined]
        except (OSError, AttributeError):
            return None
    memcmp.restype = ctypes.c_int
    memcmp.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
    return memcmp


_MEMCMP = _load_memcmp()
# the integer dtype of each element size: their equality is the floats' bits' equality
_BITS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


# a tensor's storage span up to this many elements is compared whole (64 KB of float32), however
# sparse the tensor lies in it; a longer one only where it holds at least half the span's elements
_SPAN_SMALL = 1 << 14


def _span(t: torch.Tensor) -> int | None:
    """The elements from ``t``'s first to its last in storage order, where that span is short
    or holds at least half of them (a dense tensor, or a slice of one, e.g. ``W[:, :S]``), else
    ``None``."""
    span = 1 + sum((n - 1) * s for n, s in zip(t.shape, t.stride())) if t.numel() else 0
    return span if span <= max(2 * t.numel(), _SPAN_SMALL) else None


def _snapshot(t: torch.Tensor) -> torch.Tensor | None:
    """A copy of what ``t`` holds, for :func:`_unchanged`: the span of storage from its first
    element to its last (1-D) where :func:`_span` gives one, else ``t``'s elements; ``None`` off
    the CPU (not compared, see there)."""
    if not t.is_cpu:
        return None
    t = t.detach()
    span = _span(t)
    return (t if span is None else t.as_strided((span,), (1,))).clone()


def _unchanged(t: torch.Tensor, snapshot: torch.Tensor | None) -> bool:
    """Whether ``t`` still holds, bit for bit, what :func:`_snapshot` copied.

    A write into a parameter's ``.data`` in place (``p.data.mul_(2)``) bumps no version counter;
    only the content shows it. One ``memcmp`` over the span (about 5 us for a 212 x 257 float32
    weight, against 50 us for ``torch.equal``), else NumPy's ``array_equal`` of the bits (as
    integers: NaN equals itself, -0.0 differs from 0.0; no torch operation, none that would wait
    for an accelerator). Off the CPU nothing is compared (``True``): the host would wait for the
    device on every call that reads a cache (tests/test_host_sync.py).
    """
    if snapshot is None:
        return True
    if not t.is_cpu or t.dtype != snapshot.dtype:
        return False
    span = _span(t)
    if span is not None and span == snapshot.numel():
        if _MEMCMP is not None:
            return _MEMCMP(t.data_ptr(), snapshot.data_ptr(), span * t.element_size()) == 0
        t = t.detach().as_strided((span,), (1,))
    elif t.shape != snapshot.shape:
        return False
    t = t.detach()
    if t.is_complex():
        t, snapshot = torch.view_as_real(t), torch.view_as_real(snapshot)
    bits = _BITS[t.element_size()]
    return bool(np.array_equal(t.view(bits).numpy(), snapshot.view(bits).numpy()))


def _outside_inference_mode(build: Callable[[], torch.Tensor]) -> torch.Tensor:
    """``build()`` for a cache: under ``torch.inference_mode`` it runs with inference mode off
    (and no gradient), so the cached tensor is a normal one. A cached inference tensor would make
    every later call that records a gradient fail ("Inference tensors cannot be saved for
    backward")."""
    if not torch.is_inference_mode_enabled():
        return build()
    with torch.inference_mode(False), torch.no_grad():
        return build()


# ------------------------------------------------------------------------------ the module


class LegendreMemory(_SavedConfig, nn.Module):
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

    # the theta Abar/Bbar were discretised with (fixed theta; set by _refresh_discrete)
    _system_theta: float | None = None

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
        # oldest first (see _cache_put)
        self._cache: dict[tuple, object] = {}
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
        :func:`~plmu.graph_constants._system_constant` instead, see :meth:`_compile_constants`), not
        while a trainable theta records a gradient, nor when it is a ``torch.func`` transform's
        tensor or carries a forward-mode tangent (it has no storage to key on; a cached value would
        hold the transform's tensor or the tangent beyond the call)."""
        if torch.compiler.is_compiling() and not _CONSTANT_BUILD.active:
            return False
        if not self.trainable_theta:
            return True
        return not torch.is_grad_enabled() and _plain(self.log_theta)

    def _register(self) -> None:
        """The token by which a compiled graph finds this module's kernel cache, and on which it
        is guarded: with a fixed ``theta`` that of its discretised system, shared by modules with
        the same order, discretizer, ``theta`` and device (:func:`~plmu.graph_constants._register`);
        else one of its own."""
        theta = self._system_theta
        system = (
            None
            if self.trainable_theta or theta is None
            else (self.order, self.discretizer, theta, self.A.device)
        )
        _register(self, system)

    def __getstate__(self) -> dict:
        # the kernel cache is not part of a copy or a pickle (copy.deepcopy, torch.save(module),
        # torch.multiprocessing): it may hold megabytes of kernels, and tensors that cannot be
        # copied (torch.func.functional_call's fast weights, non-leaf); the copy builds its own
        state = super().__getstate__()
        state.pop("_cache", None)
        return state

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self._cache = {}  # (a module pickled by an earlier plmu brings its cache: dropped)
        self._register()  # (a copy made before _system_theta existed gets a token of its own)

    def _compile_constants(self) -> bool:
        """Under ``torch.compile`` (not export) with a fixed ``theta``: the graph takes the
        kernels from the module's cache (:func:`~plmu.graph_constants._system_constant`) instead of
        computing them."""
        return (
            _compiling_not_exporting() and not _CONSTANT_BUILD.active and not self.trainable_theta
        )

    def _constant(self, key: tuple) -> torch.Tensor:
        """The cached value of ``key`` (one of :data:`~plmu.graph_constants._CONSTANT_KINDS`), built
        if missing."""
        kind, *args = key
        return getattr(self, _CONSTANT_KINDS[kind])(*args)

    def _forget_stale_theta(self) -> None:
        """Clear the cache if a trainable theta changed since its kernels were built.

        An in-place update (an optimizer step) shows in the version counter; another tensor
        (``torch.func.functional_call``, assignment) in identity: the cache holds the tensor it
        was built from, so a fresh tensor at a reused address cannot pass for it; a tensor
        assigned to ``.data`` in its data's address (the cache keeps the old data alive); a write
        into ``.data`` in place (``log_theta.data.add_(1)``) in its content, compared with a copy
        (:func:`_unchanged`).
        """
        if not self.trainable_theta:
            return
        theta = self.log_theta
        seen = self._cache.get(("theta",))
        now = (theta._version, theta.data_ptr())
        if seen is None or seen[0] is not theta or seen[1] != now or not _unchanged(theta, seen[3]):
            self._cache.clear()
            snapshot = _outside_inference_mode(lambda: _snapshot(theta))
            self._cache[("theta",)] = (theta, now, theta.detach(), snapshot)

    def _cache_put(self, key: tuple, value: object) -> None:
        """Cache ``value`` under ``key``, then drop the oldest entries (never this one, nor the
        ``theta`` marker) while there are more than :data:`CACHE_MAX_ENTRIES` or their tensors
        hold more than :data:`CACHE_MAX_BYTES`. Oldest, not least recently used: a hit then
        costs no more than the lookup (an entry dropped while in use is rebuilt once)."""
        self._cache[key] = value
        # a snapshot: another thread calling the module may add an entry meanwhile
        entries = list(self._cache.items())
        # each storage counted once, however many entries (or tensors of one) hold it; dropping
        # an entry frees the storages no other entry holds
        held = [_storages(v) for _, v in entries]
        holders: dict[tuple, int] = {}
        sizes: dict[tuple, int] = {}
        for storages in held:
            for storage, size in storages.items():
                holders[storage] = holders.get(storage, 0) + 1
                sizes[storage] = size
        count, total = len(entries), sum(sizes.values())
        for (old, _), storages in zip(entries, held):
            if count <= CACHE_MAX_ENTRIES and total <= CACHE_MAX_BYTES:
                break
            if old is key or old == key or old == ("theta",):
                continue
            if self._cache.pop(old, None) is not None:
                count -= 1
                for storage in storages:
                    holders[storage] -= 1
                    if not holders[storage]:
                        total -= sizes[storage]

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
            value = _outside_inference_mode(build)
            self._cache_put(full_key, value)
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
            self._system_theta = float(theta)
        self._register()  # a new theta: a compiled graph's kernels are stale, it recompiles

    def _saved_config(self) -> dict[str, object]:
        # saved in the state dict and checked on loading (plmu.saved_config): no tensor's shape
        # shows them (theta is the theta_ buffer or log_theta)
        return {
            "memory_size": self.memory_size,
            "order": self.order,
            "discretizer": self.discretizer,
        }

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:  # type: ignore[override]
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        name = "log_theta" if self.trainable_theta else "theta_"
        if prefix + name not in state_dict:
            # no theta loaded (strict=False, the weights in parts): the system stays as it is;
            # discretising the theta there may be impossible (meta) or garbage (to_empty)
            self._cache.clear()
            return
        # the system matrices go where theta is: load_state_dict(assign=True) into a module
        # built on the meta device gives theta the state dict's tensor while A is still meta
        theta = getattr(self, name)
        self._refresh_discrete(device=theta.device)

    def _apply(self, fn, recurse=True):  # type: ignore[override]
        # .to(device) moves everything; dtype casts (.float(), .half()) must not touch the
        # float64 system (theta_, the matrices): the kernels are always computed in float64,
        # then cast. Of fn's result only the device is taken: cast and cast back, the values
        # were rounded (.half(): theta 3.1 became 3.099609375, Abar rounded alike, and the
        # token shared with the exact system), and to_empty() left them without values.
        before = {name: self._buffers.get(name) for name in _SYSTEM_BUFFERS}
        was_meta = self.A.is_meta
        super()._apply(fn, recurse)
        for name, old in before.items():
            buf = self._buffers.get(name)
            if buf is None or old is None:
                continue
            if old.is_meta or buf.is_meta:  # no values to keep (to_empty() off meta, or to meta)
                self._buffers[name] = buf.double()
            else:
                self._buffers[name] = old.to(device=buf.device, dtype=torch.float64)
        self._cache.clear()
        if was_meta:  # to_empty(): no system until load_state_dict discretises one (its kernels
            self._system_theta = None  # must not answer for a real system's token meanwhile)
        self._register()  # the device is part of the system's token
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
        when the graph is built and baked in (:func:`~plmu.graph_constants._compiled_horizon`).
        """
        if self._compile_constants():
            return _compiled_horizon(self._token, dtype) or None
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
        self._cache_put(key, found)
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
        ``.data`` (as ``vector_to_parameters`` does) never lands at the cached address. A write
        into ``.data`` in place (``p.data.mul_(2)``, ``p.data.copy_(ema)``) changes neither address
        nor version: a hit also compares the weight with a copy of the content it was built from
        (:func:`_unchanged`, one ``memcmp`` on the CPU).
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
        if hit is not None and hit[0] is base and _unchanged(weight, hit[3]):
            return hit[1]
        snapshot = _outside_inference_mode(lambda: _snapshot(weight))  # what it is built from
        value = _outside_inference_mode(build)
        # the stale entries of this kind, from a snapshot of the keys: another thread calling
        # the module may add an entry meanwhile (iterating the dict itself would then fail)
        for stale in [k for k in list(self._cache) if k[0] == kind]:
            self._cache.pop(stale, None)
        self._cache_put(key, (base, value, weight.detach(), snapshot))
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
    place, or as a new tensor where :func:`~plmu.tracing.plain_autograd` says so (under ``vmap``
    ``free`` can be batched, by a batched state or weight, while ``acc`` is not)."""
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

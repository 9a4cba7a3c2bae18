"""The Legendre delay network: continuous LegT matrices, discretisation, impulse responses.

The memory of a Legendre Memory Unit is the linear time-invariant system

    theta * dm/dt = A m + B u

whose state ``m`` (``order`` values) holds a Legendre-polynomial summary of the last ``theta``
time units of the scalar input ``u`` (Voelker et al. 2019). Discretised with a step of one time
step it becomes ``m_t = Abar m_{t-1} + Bbar u_t``.

Two families of functions live here:

* float64 NumPy functions (``legendre_delay``, ``discretize``, ``impulse_response``), the public
  reference math, checked against ``scipy.signal.cont2discrete`` in the tests;
* their torch counterparts (``discretize_torch``, ``impulse_response_torch``,
  ``matrix_powers_apply``), used by the layers and differentiable in ``theta``.

Conventions: ``A`` is ``(order, order)``, ``B`` is ``(order, 1)`` (a state-space column, as in
``scipy.signal``); the time step is one sample; ``theta`` is in samples.
"""

from __future__ import annotations

import hashlib
import math
import numbers
import os
import sys
import warnings

import numpy as np
import scipy.linalg
import torch

__all__ = [
    "DISCRETIZERS",
    "UnstableDiscretizationWarning",
    "decode",
    "discretize",
    "discretize_torch",
    "euler_stability",
    "impulse_response",
    "impulse_response_torch",
    "legendre_delay",
    "matrix_powers_apply",
    "warn_if_euler_unstable",
]

DISCRETIZERS = ("zoh", "euler", "bilinear")


def _check_positive_int(value: object, name: str, minimum: int = 1) -> int:
    """``value`` as an ``int`` (NumPy integers too), checked ``>= minimum``: a TypeError naming
    ``name`` for another type (``bool`` too), a ValueError for a smaller value."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int >= {minimum}, got {type(value).__name__}")
    value = int(value)
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def _check_size(value: object, name: str) -> int | torch.Tensor | torch.SymInt:
    """A time length or batch size given to a public method: an ``int >= 0`` (NumPy integers
    too; ``bool`` and ``float`` are a TypeError naming ``name``). A traced size passes as it is:
    ``torch.jit.trace`` gives a 0-dim tensor, ``torch.compile`` with dynamic shapes a
    ``SymInt``."""
    if type(value) is int and value >= 0:  # the common case, kept cheap for the forward paths
        return value
    if isinstance(value, (torch.Tensor, torch.SymInt)):
        return value
    return _check_positive_int(value, name, 0)


def _check_order(order: object) -> int:
    return _check_positive_int(order, "order")


def _check_length(length: object) -> int:
    return _check_positive_int(length, "length", 0)


def _check_theta(theta: object) -> float:
    """``theta`` as a float: a real number (``int``, ``float``, a NumPy scalar or 0-dim array, a
    0-dim tensor), positive and finite. ``str`` and ``bool`` are rejected (``float("10")`` and
    ``float(True)`` would pass silently), and so is anything with more than one element."""
    if isinstance(theta, torch.Tensor):
        ok = theta.dim() == 0 and theta.dtype != torch.bool and not theta.is_complex()
    elif isinstance(theta, np.ndarray):
        ok = theta.ndim == 0 and theta.dtype.kind in "iuf"
    else:
        ok = isinstance(theta, numbers.Real) and not isinstance(theta, (bool, np.bool_))
    if not ok:
        got = type(theta).__name__
        if isinstance(theta, (torch.Tensor, np.ndarray)):
            got = f"{got} of shape {tuple(theta.shape)} and dtype {theta.dtype}"
        raise TypeError(
            "theta must be a positive number of time steps (int, float, NumPy scalar or 0-dim "
            f"tensor), got {got}: {theta!r}"
        )
    value = float(theta)  # type: ignore[arg-type]
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"theta must be a positive finite number of time steps, got {theta!r}")
    return value


class UnstableDiscretizationWarning(UserWarning):
    """Forward Euler with this ``theta`` and ``order`` gives an unstable memory (see
    :func:`euler_stability`); filter it with ``warnings.filterwarnings``."""


_EIGVALS: dict[tuple, np.ndarray] = {}  # eigenvalues of continuous A, by A's bytes


def _eigvals(A: np.ndarray) -> np.ndarray:
    """``np.linalg.eigvals(A)``, cached (order 468 takes about half a second)."""
    key = (A.shape, hashlib.sha1(np.ascontiguousarray(A).tobytes()).hexdigest())
    ev = _EIGVALS.get(key)
    if ev is None:
        if len(_EIGVALS) > 32:
            _EIGVALS.clear()
        ev = _EIGVALS[key] = np.linalg.eigvals(A)
    return ev


def euler_stability(A: np.ndarray, theta: float) -> tuple[float, float]:
    """Stability of forward Euler, ``Abar = I + A/theta``, in float64.

    The eigenvalues of ``Abar`` are ``1 + lambda/theta`` for the eigenvalues ``lambda`` of
    ``A``, so the memory is stable (``m_t`` stays bounded for bounded input) when all of them lie
    in the unit disc: ``theta >= |lambda|^2 / (-2 Re lambda)`` for every ``lambda``. For the
    Legendre delay that bound grows about quadratically with the order (order 4: 5.2, order 16:
    60, order 64: 639, order 256: 6542), whereas ``"zoh"`` and ``"bilinear"`` are stable for
    every ``theta > 0``.

    Args:
        A: ``(order, order)`` continuous state matrix (for ``theta = 1``).
        theta: window length in time steps (> 0).

    Returns:
        ``(rho, theta_min)``: the spectral radius of ``Abar`` (> 1: unstable, the memory grows
        by up to that factor per step) and the smallest stable ``theta`` (``inf`` if ``A``
        has an eigenvalue with a real part >= 0: then no ``theta`` is stable).
    """
    theta = _check_theta(theta)
    A = np.asarray(A, dtype=np.float64)
    if A.ndim != 2 or A.shape[0] != A.shape[1]:
        raise ValueError(f"A must have shape (order, order), got {A.shape}")
    ev = _eigvals(A)
    rho = float(np.abs(1.0 + ev / theta).max())
    re = ev.real
    theta_min = float((np.abs(ev) ** 2 / -re).max() / 2) if np.all(re < 0) else math.inf
    return rho, theta_min


def _outside_stacklevel() -> int:
    """The ``stacklevel`` of ``warnings.warn`` (called by the caller of this function) that
    names the first frame outside plmu and torch: the user's line, wherever plmu warns from."""
    skip = tuple(os.path.dirname(path) + os.sep for path in (__file__, torch.__file__))
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_code.co_filename.startswith(skip):
        frame, level = frame.f_back, level + 1
    return level


def warn_if_euler_unstable(A: np.ndarray, theta: float, trainable: bool = False) -> bool:
    """Warn (:class:`UnstableDiscretizationWarning`) if forward Euler with ``theta`` is unstable.

    Called where the matrices are discretised (:func:`discretize`, so a fixed ``theta`` of a
    layer is checked when the layer is built or loaded) and, for a trainable ``theta``, once
    at construction with its initial value (``trainable=True``); never in a forward pass.

    Returns:
        whether it warned.
    """
    rho, theta_min = euler_stability(A, theta)
    if rho <= 1.0 + 1e-10:  # rounding of the eigenvalues; 1 + 1e-10 doubles in 7e9 steps
        return False
    order = np.asarray(A).shape[0]
    which = "the initial trainable theta" if trainable else "theta"
    steps = math.log(float(np.finfo(np.float32).max)) / math.log(rho)
    fix = f"or theta >= {theta_min:.4g}" if math.isfinite(theta_min) else "(no theta helps)"
    warnings.warn(
        f"discretizer='euler' is unstable for order={order} and {which}={float(theta):g}: "
        f"Abar = I + A/theta has spectral radius {rho:.6g} > 1, so the memory grows by about "
        f"that factor per step and long sequences overflow to inf/NaN (float32 after roughly "
        f"{steps:,.0f} steps). Use discretizer='zoh' (the default) {fix}."
        + (" A trainable theta is not checked again while it is trained." if trainable else ""),
        UnstableDiscretizationWarning,
        stacklevel=_outside_stacklevel(),
    )
    return True


def _check_system(A: object, B: object, names: tuple[str, str]) -> tuple[np.ndarray, np.ndarray]:
    """``A`` as a float64 ``(order, order)`` array and ``B`` as ``(order, 1)``."""
    A = np.asarray(A, dtype=np.float64)
    if A.ndim != 2 or A.shape[0] != A.shape[1]:
        raise ValueError(f"{names[0]} must have shape (order, order), got {A.shape}")
    d = A.shape[0]
    B = np.asarray(B, dtype=np.float64)
    if B.size != d or B.ndim > 2:
        raise ValueError(f"{names[1]} must have shape ({d}, 1) or ({d},), got {B.shape}")
    return A, B.reshape(d, 1)


def _check_method(method: str) -> str:
    if method not in DISCRETIZERS:
        raise ValueError(f"method must be one of {DISCRETIZERS}, got {method!r}")
    return method


def legendre_delay(order: int) -> tuple[np.ndarray, np.ndarray]:
    """Continuous-time LegT matrices of the Legendre delay network, for ``theta = 1``.

    ``A[i, j] = (2i + 1) * (-1 if i < j else (-1)^(i - j + 1))`` and
    ``B[i] = (2i + 1) * (-1)^i``: the Pade approximant of a unit delay in the Legendre basis.

    Args:
        order: number of Legendre coefficients ``d`` kept in the memory (>= 1).

    Returns:
        ``(A, B)``: float64 arrays of shape ``(order, order)`` and ``(order, 1)``.
    """
    d = _check_order(order)
    i = np.arange(d)[:, None]
    j = np.arange(d)[None, :]
    scale = (2 * np.arange(d) + 1.0)[:, None]
    A = np.where(i < j, -1.0, (-1.0) ** (i - j + 1)) * scale
    B = scale * ((-1.0) ** np.arange(d))[:, None]
    return A, B


def discretize(
    A: np.ndarray, B: np.ndarray, theta: float, method: str = "zoh"
) -> tuple[np.ndarray, np.ndarray]:
    """Discretise ``theta dm/dt = A m + B u`` with a step of one time step.

    Args:
        A: ``(order, order)`` continuous state matrix (for ``theta = 1``).
        B: ``(order, 1)`` or ``(order,)`` continuous input matrix.
        theta: window length in time steps (> 0).
        method: ``"zoh"`` (zero-order hold, exact for piecewise-constant input; the default),
            ``"euler"`` (forward Euler, ``I + A/theta``; stable only for ``theta`` above a bound
            that grows about quadratically with the order, see :func:`euler_stability`: an
            :class:`UnstableDiscretizationWarning` below it) or ``"bilinear"`` (Tustin).

    Returns:
        ``(Abar, Bbar)``: float64 arrays of shape ``(order, order)`` and ``(order, 1)``, equal to
        ``scipy.signal.cont2discrete((A/theta, B/theta, C, D), dt=1, method=method)``.
    """
    theta = _check_theta(theta)
    method = _check_method(method)
    A, B = _check_system(A, B, ("A", "B"))
    d = A.shape[0]
    Ac, Bc = A / theta, B / theta
    if method == "zoh":
        M = np.zeros((d + 1, d + 1))
        M[:d, :d] = Ac
        M[:d, d:] = Bc
        E = scipy.linalg.expm(M)
        return E[:d, :d], E[:d, d:]
    if method == "euler":
        warn_if_euler_unstable(A, theta)
        return np.eye(d) + Ac, Bc.copy()
    lhs = np.eye(d) - 0.5 * Ac
    return np.linalg.solve(lhs, np.eye(d) + 0.5 * Ac), np.linalg.solve(lhs, Bc)


def impulse_response(Abar: np.ndarray, Bbar: np.ndarray, length: int) -> np.ndarray:
    """Impulse response of the discrete memory, ``H[k] = Abar^k Bbar``.

    The memory of a zero-state system is the causal convolution
    ``m_t = sum_{j <= t} H[t - j] u_j``.

    Args:
        Abar: ``(order, order)`` discrete state matrix.
        Bbar: ``(order, 1)`` or ``(order,)`` discrete input matrix.
        length: number of steps ``n`` (>= 0).

    Returns:
        float64 array of shape ``(length, order)``.
    """
    length = _check_length(length)
    Abar, Bbar = _check_system(Abar, Bbar, ("Abar", "Bbar"))
    Bbar = Bbar.reshape(-1)
    H = np.empty((length, Bbar.shape[0]))
    if length == 0:
        return H
    H[0] = Bbar
    done, power = 1, Abar.copy()  # power = Abar^done
    while done < length:  # doubling: H[done:2 done] = Abar^done H[0:done]
        take = min(done, length - done)
        H[done : done + take] = H[:take] @ power.T
        done += take
        if done < length:
            power = power @ power
    return H


def decode(m: np.ndarray, r: np.ndarray | float) -> np.ndarray:
    """Read the delayed input out of a Legendre memory.

    ``u(t - r theta) ~= sum_i P_i(2r - 1) m_i(t)`` for ``r`` in ``[0, 1]``.

    Args:
        m: ``(..., order)`` memory states.
        r: delays as fractions of ``theta`` (scalar or array of shape ``(k,)``).

    Returns:
        ``(...)`` for a scalar ``r``, else ``(..., k)``.
    """
    m = np.asarray(m, dtype=np.float64)
    if m.ndim < 1 or m.shape[-1] < 1:
        raise ValueError(f"m must have shape (..., order) with order >= 1, got {m.shape}")
    order = m.shape[-1]
    r = np.asarray(r, dtype=np.float64)
    if r.ndim > 1:
        raise ValueError(f"r must be a scalar or have shape (k,), got {r.shape}")
    if not np.all((r >= 0) & (r <= 1)):
        raise ValueError(f"r must lie in [0, 1] (fractions of theta), got {r}")
    x = 2 * r - 1
    P = np.stack([np.polynomial.legendre.Legendre.basis(i)(x) for i in range(order)], axis=-1)
    return m @ P.T if P.ndim == 2 else m @ P


# --------------------------------------------------------------------------- torch versions


def discretize_torch(
    A: torch.Tensor, B: torch.Tensor, theta: torch.Tensor, method: str = "zoh"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Torch version of :func:`discretize`, differentiable in ``theta``.

    Args:
        A: ``(order, order)``; B: ``(order, 1)``; theta: 0-dim tensor or number (> 0).
        method: ``"zoh"``, ``"euler"`` or ``"bilinear"``.

    Returns:
        ``(Abar, Bbar)`` of shape ``(order, order)`` and ``(order, 1)``, in ``A``'s dtype.
    """
    method = _check_method(method)
    if not isinstance(theta, torch.Tensor):
        theta = _check_theta(theta)
    elif theta.dim() != 0 or theta.dtype == torch.bool or theta.is_complex():
        # a tensor's value is not checked: that would sync with the device on every training
        # step of a trainable theta (whose log-parametrisation keeps it positive anyway)
        raise TypeError(
            f"theta must be a 0-dim real tensor or a number, got a tensor of shape "
            f"{tuple(theta.shape)} and dtype {theta.dtype}"
        )
    d = A.shape[0]
    Ac, Bc = A / theta, B.reshape(d, 1) / theta
    eye = torch.eye(d, dtype=A.dtype, device=A.device)
    if method == "zoh":
        top = torch.cat([Ac, Bc], dim=1)
        M = torch.cat([top, torch.zeros(1, d + 1, dtype=A.dtype, device=A.device)], dim=0)
        E = torch.linalg.matrix_exp(M)
        return E[:d, :d], E[:d, d:]
    if method == "euler":
        return eye + Ac, Bc
    lhs = eye - 0.5 * Ac
    return torch.linalg.solve(lhs, eye + 0.5 * Ac), torch.linalg.solve(lhs, Bc)


def matrix_powers_apply(Abar: torch.Tensor, x: torch.Tensor, length: int) -> torch.Tensor:
    """``[Abar^1 x, Abar^2 x, ..., Abar^length x]`` by repeated doubling.

    Args:
        Abar: ``(order, order)``.
        x: ``(..., order)`` vectors (row convention: entry ``k`` is ``x @ (Abar^(k+1))^T``).
        length: number of powers ``n`` (>= 0).

    Returns:
        ``(n, ..., order)``, using ``O(log n)`` matrix products. Differentiable.
    """
    length = _check_size(length, "length")
    if length == 0:
        return x.new_zeros((0, *x.shape))
    X = (x @ Abar.T).unsqueeze(0)  # powers 1..n, n = X.shape[0]
    power = Abar  # Abar^n
    while X.shape[0] < length:
        take = min(X.shape[0], length - X.shape[0])
        X = torch.cat([X, X[:take] @ power.T], dim=0)
        if X.shape[0] < length:
            power = power @ power
    return X


def impulse_response_torch(Abar: torch.Tensor, Bbar: torch.Tensor, length: int) -> torch.Tensor:
    """Torch version of :func:`impulse_response`: ``(length, order)``, ``H[k] = Abar^k Bbar``.

    Differentiable in ``Abar`` and ``Bbar``; ``O(log length)`` matrix products.
    """
    if isinstance(length, torch.Tensor):  # a size under torch.jit.trace
        length = int(length)
    length = _check_length(length)
    b = Bbar.reshape(-1)
    if length == 0:
        return b.new_zeros((0, b.shape[0]))
    return torch.cat([b.unsqueeze(0), matrix_powers_apply(Abar, b, length - 1)], dim=0)

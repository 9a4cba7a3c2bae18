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

import math
import numbers

import numpy as np
import scipy.linalg
import torch

__all__ = [
    "DISCRETIZERS",
    "decode",
    "discretize",
    "discretize_torch",
    "impulse_response",
    "impulse_response_torch",
    "legendre_delay",
    "matrix_powers_apply",
]

DISCRETIZERS = ("zoh", "euler", "bilinear")


def _check_order(order: object) -> int:
    if isinstance(order, bool) or not isinstance(order, (int, np.integer)):
        raise TypeError(f"order must be an int >= 1, got {type(order).__name__}")
    if order < 1:
        raise ValueError(f"order must be >= 1, got {order}")
    return int(order)


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
            ``"euler"`` (forward Euler, ``I + A/theta``; needs ``theta`` well above the order) or
            ``"bilinear"`` (Tustin).

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
    if isinstance(length, bool) or not isinstance(length, (int, np.integer)) or length < 0:
        raise ValueError(f"length must be an int >= 0, got {length!r}")
    Abar, Bbar = _check_system(Abar, Bbar, ("Abar", "Bbar"))
    Bbar = Bbar.reshape(-1)
    H = np.empty((int(length), Bbar.shape[0]))
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
    if isinstance(length, bool) or not isinstance(length, (int, np.integer)) or length < 0:
        raise ValueError(f"length must be an int >= 0, got {length!r}")
    length = int(length)
    b = Bbar.reshape(-1)
    if length == 0:
        return b.new_zeros((0, b.shape[0]))
    return torch.cat([b.unsqueeze(0), matrix_powers_apply(Abar, b, length - 1)], dim=0)

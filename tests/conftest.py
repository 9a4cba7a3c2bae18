"""Shared test helpers: a float64 NumPy reference of the Legendre memory recurrence."""

import numpy as np
import pytest
import torch

import plmu


def reference_memory(u, order, theta, state=None, method="zoh"):
    """Plain float64 recurrence ``m_t = Abar m_{t-1} + Bbar u_t`` in NumPy.

    Args:
        u: ``(batch, time, channels)``; state: ``(batch, channels * order)`` or None.

    Returns:
        ``(batch, time, channels * order)`` float64.
    """
    u = np.asarray(u, dtype=np.float64)
    Bn, T, C = u.shape
    Abar, Bbar = plmu.discretize(*plmu.legendre_delay(order), theta, method=method)
    m = (
        np.zeros((Bn, C, order))
        if state is None
        else np.asarray(state, np.float64).reshape(Bn, C, order)
    )
    out = np.empty((Bn, T, C, order))
    for t in range(T):
        m = m @ Abar.T + u[:, t, :, None] * Bbar[:, 0]
        out[:, t] = m
    return out.reshape(Bn, T, C * order)


def assert_close_to_reference(actual, reference, rel=1e-4):
    """fp32 precision: max |actual - reference| <= rel * max |reference|."""
    actual = actual.detach().double().cpu().numpy() if isinstance(actual, torch.Tensor) else actual
    scale = max(np.abs(reference).max(), 1e-12)
    err = np.abs(actual - reference).max() if reference.size else 0.0
    assert err <= rel * scale, f"max abs error {err:.3g} > {rel:g} * {scale:.3g}"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    np.random.seed(0)

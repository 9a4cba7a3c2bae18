"""The Legendre math: LegT matrices, discretisation, impulse responses, decoding."""

import warnings

import numpy as np
import pytest
import scipy.signal
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import plmu
from plmu.legendre import (
    UnstableDiscretizationWarning,
    discretize_torch,
    euler_stability,
    impulse_response_torch,
    matrix_powers_apply,
)


def reference_A_B(order):
    """The LegT matrices written entry by entry from PAPER.md section 1."""
    A = np.zeros((order, order))
    B = np.zeros((order, 1))
    for i in range(order):
        B[i, 0] = (2 * i + 1) * (-1) ** i
        for j in range(order):
            A[i, j] = (2 * i + 1) * (-1 if i < j else (-1) ** (i - j + 1))
    return A, B


@pytest.mark.parametrize("order", [1, 2, 5, 32])
def test_legendre_delay_matches_definition(order):
    A, B = plmu.legendre_delay(order)
    A_ref, B_ref = reference_A_B(order)
    assert A.shape == (order, order) and B.shape == (order, 1)
    assert A.dtype == np.float64
    np.testing.assert_array_equal(A, A_ref)
    np.testing.assert_array_equal(B, B_ref)


@pytest.mark.parametrize("method", ["zoh", "euler", "bilinear"])
@pytest.mark.parametrize(("order", "theta"), [(1, 3.0), (6, 10.0), (24, 100.0), (64, 784.0)])
def test_discretize_matches_scipy(method, order, theta):
    A, B = plmu.legendre_delay(order)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        Abar, Bbar = plmu.discretize(A, B, theta, method=method)
    unstable = method == "euler" and theta < euler_stability(A, theta)[1]  # (6, 10), (24, 100)
    assert [w.category for w in record] == [UnstableDiscretizationWarning] * unstable
    C, D = np.eye(order), np.zeros((order, 1))
    Ar, Br, *_ = scipy.signal.cont2discrete((A / theta, B / theta, C, D), dt=1, method=method)
    np.testing.assert_allclose(Abar, Ar, rtol=0, atol=1e-12)
    np.testing.assert_allclose(Bbar, Br, rtol=0, atol=1e-12)


@pytest.mark.parametrize("method", ["zoh", "euler", "bilinear"])
def test_discretize_torch_matches_numpy(method):
    A, B = plmu.legendre_delay(12)
    Abar, Bbar = plmu.discretize(A, B, 37.5, method=method)
    At, Bt = discretize_torch(
        torch.from_numpy(A), torch.from_numpy(B), torch.tensor(37.5, dtype=torch.float64), method
    )
    np.testing.assert_allclose(At.numpy(), Abar, atol=1e-12)
    np.testing.assert_allclose(Bt.numpy(), Bbar, atol=1e-12)


@settings(max_examples=25, deadline=None)
@given(order=st.integers(1, 12), length=st.integers(0, 70), theta=st.floats(2.0, 500.0))
def test_impulse_response_is_powers_times_B(order, length, theta):
    Abar, Bbar = plmu.discretize(*plmu.legendre_delay(order), theta)
    H = plmu.impulse_response(Abar, Bbar, length)
    assert H.shape == (length, order)
    x = Bbar[:, 0].copy()
    for k in range(length):
        np.testing.assert_allclose(H[k], x, rtol=1e-10, atol=1e-13)
        x = Abar @ x
    Ht = impulse_response_torch(torch.from_numpy(Abar), torch.from_numpy(Bbar), length)
    np.testing.assert_allclose(Ht.numpy(), H, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize(
    ("length", "error", "message"),
    [
        (-1, ValueError, "length must be >= 0, got -1"),
        (-5, ValueError, "length must be >= 0, got -5"),
        # a wrong type is a TypeError, as for order (was a ValueError)
        (2.5, TypeError, "length must be an int >= 0, got float"),
        (True, TypeError, "length must be an int >= 0, got bool"),
        ("3", TypeError, "length must be an int >= 0, got str"),
    ],
)
def test_a_bad_kernel_length_is_refused(length, error, message):
    """``LegendreMemory.kernel(-1)`` returned two rows (``impulse_response_torch`` did not check
    ``length`` as ``impulse_response`` does)."""
    Abar, Bbar = plmu.discretize(*plmu.legendre_delay(3), 9.0)
    with pytest.raises(error, match=message):
        plmu.impulse_response(Abar, Bbar, length)
    with pytest.raises(error, match=message):
        impulse_response_torch(torch.from_numpy(Abar), torch.from_numpy(Bbar), length)
    with pytest.raises(error, match=message):
        plmu.LegendreMemory(1, 3, 9.0).kernel(length)


@pytest.mark.parametrize("length", [True, 2.0, np.float64(2.0)], ids=repr)
def test_a_bad_length_after_a_cached_kernel_is_refused(length):
    """``kernel(True)`` (and ``kernel(2.0)``) returned the cached ``kernel(1)`` (``kernel(2)``):
    the cache key compared ``True == 1``. The other public methods taking a length or size
    took a bool as 1."""
    memory = plmu.LegendreMemory(1, 3, 9.0)
    memory.kernel(1), memory.kernel(2)  # cached
    with pytest.raises(TypeError, match="length must be an int >= 0"):
        memory.kernel(length)
    with pytest.raises(TypeError, match="length must be an int >= 0"):
        memory.free_response(torch.zeros(2, 3), length)
    with pytest.raises(TypeError, match="length must be an int >= 0"):
        matrix_powers_apply(memory.discrete()[0], torch.zeros(3, dtype=torch.float64), length)
    for call in (
        lambda: memory.last_window(length, torch.float32),
        lambda: memory.projection_blocks(length, torch.float32),
        lambda: memory.resolve_mode(length, 4),
        lambda: plmu.ParallelLMU(1, 2, 3, 9.0).use_fused(length, 4),
    ):
        with pytest.raises(TypeError, match="time must be an int >= 0"):
            call()
    with pytest.raises(TypeError, match="batch must be an int >= 0"):
        memory.resolve_mode(4, length)
    # NumPy integers and (under torch.jit.trace) 0-dim tensors are lengths
    torch.testing.assert_close(memory.kernel(np.int64(2)), memory.kernel(2))
    torch.testing.assert_close(memory.kernel(torch.tensor(2)), memory.kernel(2))


def test_matrix_powers_apply():
    rng = np.random.default_rng(0)
    A = rng.normal(size=(5, 5)) / 3
    x = rng.normal(size=(2, 5))
    P = matrix_powers_apply(torch.from_numpy(A), torch.from_numpy(x), 9).numpy()
    assert P.shape == (9, 2, 5)
    for k in range(9):
        np.testing.assert_allclose(P[k], x @ np.linalg.matrix_power(A, k + 1).T, atol=1e-12)
    assert matrix_powers_apply(torch.from_numpy(A), torch.from_numpy(x), 0).shape == (0, 2, 5)


def test_legendre_decoding_reproduces_delayed_signal():
    """PAPER.md section 1: u(t - r theta) ~= sum_i P_i(2r - 1) m_i(t) (order 12, theta 200)."""
    order, theta, n = 12, 200.0, 2000
    t = np.arange(n)
    u = 0.6 * np.sin(2 * np.pi * t / 400) + 0.4 * np.sin(2 * np.pi * t / 290 + 1.0)
    Abar, Bbar = plmu.discretize(*plmu.legendre_delay(order), theta)
    m = np.zeros(order)
    states = np.empty((n, order))
    for k in range(n):
        m = Abar @ m + Bbar[:, 0] * u[k]
        states[k] = m
    r = np.linspace(0, 1, 11)
    decoded = plmu.decode(states[1000:], r)  # (n - 1000, 11)
    delays = np.rint(r * theta).astype(int)
    truth = np.stack([u[1000 - dk : n - dk] for dk in delays], axis=1)
    err = np.abs(decoded - truth)
    assert err.max() < 0.05
    assert np.sqrt((err**2).mean()) < 0.02


@pytest.mark.parametrize("bad", [0, -3])
def test_legendre_delay_rejects_small_order(bad):
    with pytest.raises(ValueError, match="order"):
        plmu.legendre_delay(bad)


def test_legendre_delay_rejects_non_int_order():
    with pytest.raises(TypeError, match="order"):
        plmu.legendre_delay(3.5)


@pytest.mark.parametrize("theta", [0.0, -1.0, float("nan"), float("inf")])
def test_discretize_rejects_bad_theta(theta):
    with pytest.raises(ValueError, match="theta"):
        plmu.discretize(*plmu.legendre_delay(3), theta)


def test_discretize_rejects_unknown_method():
    with pytest.raises(ValueError, match="method"):
        plmu.discretize(*plmu.legendre_delay(3), 5.0, method="rk4")


def test_impulse_response_rejects_negative_length():
    Abar, Bbar = plmu.discretize(*plmu.legendre_delay(3), 5.0)
    with pytest.raises(ValueError, match="length"):
        plmu.impulse_response(Abar, Bbar, -1)


def test_system_matrices_of_the_wrong_shape_are_named():
    A, B = plmu.legendre_delay(4)
    with pytest.raises(ValueError, match=r"A must have shape \(order, order\), got \(4, 3\)"):
        plmu.discretize(A[:, :3], B, 10.0)
    with pytest.raises(ValueError, match=r"B must have shape \(4, 1\) or \(4,\), got \(5,\)"):
        plmu.discretize(A, np.ones(5), 10.0)
    Abar, Bbar = plmu.discretize(A, B, 10.0)
    with pytest.raises(ValueError, match=r"Bbar must have shape \(3, 1\) or \(3,\), got \(4, 1\)"):
        plmu.impulse_response(Abar[:3, :3], Bbar, 5)
    with pytest.raises(ValueError, match=r"Abar must have shape \(order, order\)"):
        plmu.impulse_response(Abar[0], Bbar, 5)
    assert plmu.impulse_response(Abar, Bbar[:, 0], 5).shape == (5, 4)  # (order,) is fine


# ------------------------------------------------------------------ forward Euler stability


@pytest.mark.parametrize(
    ("order", "theta_min"), [(1, 0.5), (2, 1.5), (4, 5.152), (16, 59.72), (64, 638.65)]
)
def test_euler_stability_bound(order, theta_min):
    """theta_min = max |lambda|^2 / (-2 Re lambda) over A's eigenvalues; the spectral radius of
    I + A/theta, computed directly, crosses 1 there."""
    A = plmu.legendre_delay(order)[0]
    rho, bound = euler_stability(A, 100.0)
    assert bound == pytest.approx(theta_min, rel=1e-3)
    for theta in (0.99 * bound, 1.01 * bound, 10 * bound):
        rho, _ = euler_stability(A, theta)
        direct = np.abs(np.linalg.eigvals(np.eye(order) + A / theta)).max()
        assert rho == pytest.approx(direct, rel=1e-9)
        assert (rho > 1) == (theta < bound)
    # zoh and bilinear are stable for every theta
    for method in ("zoh", "bilinear"):
        Abar, _ = plmu.discretize(A, plmu.legendre_delay(order)[1], 0.1 * bound, method)
        assert np.abs(np.linalg.eigvals(Abar)).max() < 1


def test_euler_stability_without_a_stable_theta():
    assert euler_stability(np.array([[0.5]]), 3.0) == (pytest.approx(7 / 6), float("inf"))
    with pytest.warns(UnstableDiscretizationWarning, match="no theta helps"):
        plmu.discretize(np.array([[0.5]]), np.ones(1), 3.0, "euler")


def test_unstable_euler_warns_and_blows_up():
    """order 8 needs theta >= 17.7: theta 10 warns (naming theta, order and the discretizer,
    suggesting zoh or the bound), and a long sequence indeed overflows; theta 20 is quiet and
    bounded, as is zoh at theta 10."""
    A, B = plmu.legendre_delay(8)
    with pytest.warns(UnstableDiscretizationWarning) as record:
        Abar, Bbar = plmu.discretize(A, B, 10.0, "euler")
    message = str(record[0].message)
    for part in ("discretizer='euler'", "order=8", "theta=10", "zoh", "theta >= 17.74"):
        assert part in message
    assert record[0].filename == __file__  # attributed to the caller's line
    with np.errstate(over="ignore", invalid="ignore"):
        assert not np.isfinite(plmu.impulse_response(Abar, Bbar, 3000)).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for theta, method in ((20.0, "euler"), (10.0, "zoh")):
            Abar, Bbar = plmu.discretize(A, B, theta, method)
            assert np.abs(plmu.impulse_response(Abar, Bbar, 3000)).max() < 10

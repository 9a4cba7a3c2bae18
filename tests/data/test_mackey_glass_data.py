import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from plmu.data.mackey_glass import ForecastWindows, forecast_splits, mackey_glass


def test_series_is_deterministic_and_on_the_attractor() -> None:
    a = mackey_glass(2000, seed=0)
    assert np.array_equal(a, mackey_glass(2000, seed=0))
    assert not np.allclose(a, mackey_glass(2000, seed=1))
    # the classic tau = 17 attractor stays within about [0.2, 1.4] with mean near 0.9
    assert 0.2 < a.min() < a.max() < 1.45
    assert 0.8 < a.mean() < 1.0


def test_rk4_step_is_converged() -> None:
    # halving the step changes the early trajectory by far less than its scale
    coarse = mackey_glass(60, washout=0.0, dt=0.1)
    fine = mackey_glass(60, washout=0.0, dt=0.05)
    assert np.max(np.abs(coarse - fine)) < 1e-4


def _heun_reference(history: float, length: int, dt: float = 0.001) -> np.ndarray:
    """The equation (tau 17, beta 0.2, gamma 0.1, n 10) from a constant history, by Heun's
    method on a grid 100 times finer than the generator's (no delayed value between grid
    points needed): one sample per time unit from t = 0."""
    delay, every = round(17.0 / dt), round(1.0 / dt)
    x = [history] * (delay + 1) + [0.0] * ((length - 1) * every)
    for k in range(delay, len(x) - 1):
        now, lag, lag_next = x[k], x[k - delay], x[k - delay + 1]
        k1 = 0.2 * lag / (1.0 + lag**10) - 0.1 * now
        k2 = 0.2 * lag_next / (1.0 + lag_next**10) - 0.1 * (now + dt * k1)
        x[k + 1] = now + 0.5 * dt * (k1 + k2)
    return np.array(x[delay::every])


def test_series_solves_the_equation() -> None:
    """Against an independent integration: the range checks above pass for other exponents
    (n = 9 did), and the convergence check for a scheme that solves another equation."""
    series = mackey_glass(80, seed=0, washout=0.0)  # x(0) is the constant history
    assert np.max(np.abs(series - _heun_reference(series[0], 80))) < 1e-4


def _rk4_reference(history: float, length: int, tau: float, n: float, dt: float) -> np.ndarray:
    """The generator's scheme written plainly: four evaluations of the right-hand side per
    step, the delayed value at the half step the mean of its neighbours; no washout."""
    delay = round(tau / dt)
    every = round(1.0 / dt)
    x = [history] * (delay + 1) + [0.0] * ((length - 1) * every)

    def f(value: float, delayed: float) -> float:
        return 0.2 * delayed / (1.0 + delayed**n) - 0.1 * value

    for k in range(delay, len(x) - 1):
        now, lag, lag_next = x[k], x[k - delay], x[k - delay + 1]
        lag_mid = 0.5 * (lag + lag_next)
        k1 = f(now, lag)
        k2 = f(now + 0.5 * dt * k1, lag_mid)
        k3 = f(now + 0.5 * dt * k2, lag_mid)
        k4 = f(now + dt * k3, lag_next)
        x[k + 1] = now + dt / 6.0 * (k1 + 2.0 * k2 + 2.0 * k3 + k4)
    return np.array(x[delay::every])


@pytest.mark.parametrize(("tau", "n", "dt"), [(17.0, 10.0, 0.1), (30.0, 9.65, 0.05)])
def test_series_is_the_plain_rk4_bit_for_bit(tau: float, n: float, dt: float) -> None:
    """The generator reuses each delayed feedback term it computed (a third less time); the
    series stays exactly the one of four right-hand-side evaluations per step."""
    series = mackey_glass(300, seed=3, tau=tau, n=n, dt=dt, washout=0.0)
    assert np.array_equal(series, _rk4_reference(series[0], 300, tau, n, dt))


def test_washout_drops_the_first_time_units() -> None:
    assert np.array_equal(mackey_glass(20, washout=5.0), mackey_glass(25, washout=0.0)[5:])


def test_integration_arguments_checked() -> None:
    with pytest.raises(ValueError, match="tau"):
        mackey_glass(10, tau=17.05)
    with pytest.raises(ValueError, match="length"):
        mackey_glass(0)


@settings(max_examples=25, deadline=None)
@given(
    length=st.integers(20, 80),
    horizon=st.integers(1, 10),
    window=st.integers(2, 10),
    stride=st.integers(1, 5),
)
def test_windows_pair_inputs_with_future_targets(length, horizon, window, stride) -> None:
    series = np.arange(length, dtype=np.float64)
    data = ForecastWindows(series, horizon, window, stride, warmup=1)
    assert len(data) == (length - horizon - window) // stride + 1
    for i in (0, len(data) - 1):
        x, y, mask = data[i]
        assert x.shape == y.shape == (window, 1)
        assert torch.equal(y - x, torch.full_like(x, float(horizon)))
        assert x[0, 0] == i * stride
        assert not mask[0] and mask[1:].all()


def test_windows_reject_short_series() -> None:
    with pytest.raises(ValueError, match="too short"):
        ForecastWindows(np.zeros(20), horizon=15, window=10)


def test_splits_are_standardised_by_train() -> None:
    train, val, test, norm = forecast_splits(600, 300, 300, window=64, stride=16, warmup=8)
    assert len(val) == len(test) == 1
    x, _, mask = test[0]
    assert x.shape == (285, 1) and mask.sum() == 285 - 8
    assert abs(float(train.inputs.mean())) < 0.05
    assert 0.1 < norm["std"] < 0.4


@pytest.mark.parametrize(
    ("lengths", "message"),
    [
        ((400, 5, 120), r"val_length must be >= 20 \(horizon 15 \+ warmup 4 \+ 1\), got 5"),
        ((400, 120, 19), r"test_length must be >= 20 \(horizon 15 \+ warmup 4 \+ 1\), got 19"),
        ((40, 120, 120), r"train_length must be >= 47 \(horizon 15 \+ window 32\), got 40"),
    ],
)
def test_splits_too_short_name_their_length(lengths, message) -> None:
    """A split too short for the task names its config key (a short val_length was "window
    must be >= 1, got -10", a derived window the user never set)."""
    with pytest.raises(ValueError, match=message):
        forecast_splits(*lengths, horizon=15, window=32, stride=16, warmup=4)

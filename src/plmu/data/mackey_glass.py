"""The Mackey-Glass chaotic series, generated here from its delay differential equation.

    dx/dt = beta * x(t - tau) / (1 + x(t - tau)^n) - gamma * x(t)

with ``tau = 17``, ``beta = 0.2``, ``gamma = 0.1``, ``n = 10`` (the classic chaotic regime).

Integration (:func:`mackey_glass`): fourth-order Runge-Kutta with step ``dt = 0.1`` time units;
the delayed value at the half step is the mean of the two neighbouring grid values (linear
interpolation; ``tau / dt`` must be an integer). The history on ``[-tau, 0]`` is a constant drawn
uniformly from ``[0.5, 1.3]`` by the seed, so every seed gives another trajectory on the same
attractor. The first ``washout = 1000`` time units are dropped (the transient), then one sample
is kept every ``sample_every = 1`` time unit.

Task (:func:`forecast_splits`): three independent trajectories (seeds ``seed``, ``seed + 1``,
``seed + 2``) are the train, validation and test series, so no split ever sees another's future.
All three are standardised with the mean and standard deviation of the training series. The input
at step ``t`` is ``x_t``; the target is ``x_{t + horizon}`` with ``horizon = 15`` steps (the
protocol of Voelker et al. 2019). Training uses windows of ``window`` steps; validation and test
are each one long sequence. The first ``warmup`` steps of every sequence (too little history to
predict from) are masked out of the loss and of the NRMSE.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = ["ForecastWindows", "check_forecast_settings", "forecast_splits", "mackey_glass"]


def mackey_glass(
    length: int,
    seed: int = 0,
    *,
    tau: float = 17.0,
    beta: float = 0.2,
    gamma: float = 0.1,
    n: float = 10.0,
    dt: float = 0.1,
    sample_every: float = 1.0,
    washout: float = 1000.0,
) -> np.ndarray:
    """Integrate the Mackey-Glass equation and return ``length`` samples, float64 ``(length,)``.

    Args:
        length: samples to return (after the washout), one every ``sample_every`` time units.
        seed: picks the constant initial history in ``[0.5, 1.3]``.
        tau, beta, gamma, n: the equation's parameters.
        dt: the Runge-Kutta step (time units); ``tau``, ``sample_every`` and ``washout`` must be
            whole multiples of it.
        sample_every: time units between returned samples.
        washout: time units integrated and dropped before the first returned sample.
    """
    if length < 1:
        raise ValueError(f"length must be >= 1, got {length}")
    if dt <= 0:
        raise ValueError(f"dt must be > 0, got {dt}")
    steps = {}
    for name, value in (("tau", tau), ("sample_every", sample_every), ("washout", washout)):
        ratio = value / dt
        if value < 0 or not math.isclose(ratio, round(ratio), abs_tol=1e-9):
            raise ValueError(f"{name} must be a non-negative multiple of dt={dt}, got {value}")
        steps[name] = round(ratio)
    delay, every = steps["tau"], steps["sample_every"]
    if delay < 1 or every < 1:
        raise ValueError("tau and sample_every must be at least one step dt")
    total = steps["washout"] + (length - 1) * every + 1
    history = float(np.random.default_rng(seed).uniform(0.5, 1.3))

    x = [history] * (delay + 1) + [0.0] * (total - 1)  # x[k] is x at time (k - delay) * dt
    half = 0.5 * dt

    # RK4 of dx/dt = beta * x(t - tau) / (1 + x(t - tau)^n) - gamma * x(t). The delayed
    # feedback term is computed once per delayed value: k2 and k3 share the midpoint's, and the
    # end point's is the next step's start (the same operations on the same values, so the
    # series is bit for bit the one of four evaluations per step, in a third less time).
    feedback = beta * x[0] / (1.0 + x[0] ** n)  # at the first step's delayed value
    for k in range(delay, delay + total - 1):
        now, lag_next = x[k], x[k - delay + 1]
        lag_mid = 0.5 * (x[k - delay] + lag_next)
        feedback_mid = beta * lag_mid / (1.0 + lag_mid**n)
        feedback_next = beta * lag_next / (1.0 + lag_next**n)
        k1 = feedback - gamma * now
        k2 = feedback_mid - gamma * (now + half * k1)
        k3 = feedback_mid - gamma * (now + half * k2)
        k4 = feedback_next - gamma * (now + dt * k3)
        x[k + 1] = now + dt / 6.0 * (k1 + 2.0 * k2 + 2.0 * k3 + k4)
        feedback = feedback_next
    series = np.asarray(x[delay + steps["washout"] :: every], dtype=np.float64)
    return series[:length]


class ForecastWindows(Dataset):
    """Windows of a series for ``horizon``-step-ahead forecasting.

    Item ``i`` covers steps ``[s, s + window)`` with ``s = i * stride`` and returns
    ``(x, y, mask)``: ``x`` (window, 1) the series, ``y`` (window, 1) the series ``horizon``
    steps later, ``mask`` (window,) bool, False on the first ``warmup`` steps.

    Args:
        series: float ``(length,)``.
        horizon: steps ahead to predict.
        window: steps per item (``None``: one item covering the whole series).
        stride: steps between window starts (default ``window``).
        warmup: leading steps of each window masked out.
    """

    def __init__(
        self,
        series: np.ndarray | torch.Tensor,
        horizon: int,
        window: int | None = None,
        stride: int | None = None,
        warmup: int = 0,
    ) -> None:
        series = torch.as_tensor(np.asarray(series), dtype=torch.float32)
        usable = series.numel() - horizon
        window = usable if window is None else window
        stride = window if stride is None else stride
        _check_windows(horizon, window, stride, warmup)
        if usable < window:
            raise ValueError(
                f"series of {series.numel()} samples is too short for window {window} "
                f"and horizon {horizon}"
            )
        self.inputs = series[:usable].unsqueeze(-1)
        self.targets = series[horizon:].unsqueeze(-1)
        self.window, self.stride, self.warmup = window, stride, warmup
        self.mask = torch.arange(window) >= warmup

    def __len__(self) -> int:
        return (self.inputs.shape[0] - self.window) // self.stride + 1

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} windows")
        start = (index % len(self)) * self.stride
        span = slice(start, start + self.window)
        return self.inputs[span], self.targets[span], self.mask


def _check_windows(horizon: int, window: int, stride: int, warmup: int) -> None:
    for name, value in (("horizon", horizon), ("window", window), ("stride", stride)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if not 0 <= warmup < window:
        raise ValueError(f"warmup must lie in [0, window={window}), got {warmup}")


def check_forecast_settings(
    train_length: int,
    val_length: int,
    test_length: int,
    *,
    horizon: int,
    window: int,
    stride: int,
    warmup: int,
) -> None:
    """The checks of :func:`forecast_splits`, without generating anything.

    Raises:
        ValueError: whose message starts with the argument's name (``"train_length must be >=
            47 (horizon 15 + window 32), got 0"``).
    """
    _check_windows(horizon, window, stride, warmup)
    scored = (horizon + warmup + 1, f"horizon {horizon} + warmup {warmup} + 1")
    needs = {
        "train_length": (train_length, horizon + window, f"horizon {horizon} + window {window}"),
        "val_length": (val_length, *scored),
        "test_length": (test_length, *scored),
    }
    for name, (length, least, why) in needs.items():
        if length < least:
            raise ValueError(f"{name} must be >= {least} ({why}), got {length}")


def forecast_splits(
    train_length: int,
    val_length: int,
    test_length: int,
    *,
    horizon: int = 15,
    window: int = 128,
    stride: int = 32,
    warmup: int = 32,
    seed: int = 0,
) -> tuple[ForecastWindows, ForecastWindows, ForecastWindows, dict[str, float]]:
    """Train windows, one validation and one test sequence, and the normaliser ``{mean, std}``.

    Each split is its own trajectory (seeds ``seed``, ``seed + 1``, ``seed + 2``) of
    ``*_length`` samples; see the module docstring for the protocol.

    Raises:
        ValueError: naming the setting: ``train_length`` shorter than ``horizon + window``, a
            ``val_length`` or ``test_length`` leaving no step past ``warmup`` to score, ...
    """
    check_forecast_settings(
        train_length,
        val_length,
        test_length,
        horizon=horizon,
        window=window,
        stride=stride,
        warmup=warmup,
    )
    train, val, test = (
        mackey_glass(length, seed=seed + i)
        for i, length in enumerate((train_length, val_length, test_length))
    )
    mean, std = float(train.mean()), float(train.std())
    train, val, test = ((s - mean) / std for s in (train, val, test))
    return (
        ForecastWindows(train, horizon, window, stride, warmup),
        ForecastWindows(val, horizon, warmup=warmup),
        ForecastWindows(test, horizon, warmup=warmup),
        {"mean": mean, "std": std},
    )

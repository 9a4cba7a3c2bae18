"""Metrics for the benchmarks, as functions and as distributed-safe ``torchmetrics`` metrics.

:class:`WeightedMean` is the epoch mean of batch means (a loss) weighted by what each averages
over, summed over DDP processes.

NRMSE (normalised root-mean-square error) is ``sqrt(mean((y - yhat)^2)) / std(y)``: the RMSE in
units of the target's standard deviation over the evaluated set (0 is perfect, 1 is what
predicting the mean scores). It is the Mackey-Glass metric of Voelker et al. 2019.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn
from torchmetrics import Metric

from plmu.precision import widest_float

__all__ = ["NRMSE", "WeightedMean", "nrmse"]


def nrmse(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """NRMSE of ``prediction`` against ``target`` (same shape, any), a scalar tensor, computed in
    float64 (float32 on MPS, which has no float64)."""
    if prediction.shape != target.shape:
        raise ValueError(
            f"prediction and target must have the same shape, got {tuple(prediction.shape)} "
            f"and {tuple(target.shape)}"
        )
    dtype = widest_float(prediction.device)
    error = (prediction - target).to(dtype)
    target = target.to(dtype)
    rmse = error.pow(2).mean().sqrt()
    return (rmse / target.std(unbiased=False)).to(prediction.dtype)


class _WidestFloatSums(Metric):
    """A metric of summed scalar states (``sums``, added over DDP processes) kept in float64,
    float32 once the metric moves to MPS (which has no float64): moving the metric casts them
    to :func:`~plmu.precision.widest_float` of the new device."""

    sums: tuple[str, ...] = ()

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        for name in self.sums:
            self.add_state(name, default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def _apply(self, fn: Callable, exclude_state: Sequence[str] = "") -> nn.Module:
        # cast the sums to the widest float of the device fn moves them to, before they move
        # (float64 cannot reach MPS); torchmetrics learns the device from such a probe too
        dtype = widest_float(fn(torch.zeros((), device=self.device)).device)
        self._cast_sums(dtype)
        module = super()._apply(fn, exclude_state)
        # and after: a dtype cast of the module (``.to(torch.bfloat16)``, as Lightning's
        # "bf16-true" precision makes it) casts the states too, which must stay wide
        self._cast_sums(dtype)
        return module

    def _cast_sums(self, dtype: torch.dtype) -> None:
        for name in self.sums:
            if self._defaults[name].dtype != dtype:
                self._defaults[name] = self._defaults[name].to(dtype)
            if getattr(self, name).dtype != dtype:
                setattr(self, name, getattr(self, name).to(dtype))


class NRMSE(_WidestFloatSums):
    """Accumulated NRMSE (sums of squared error, target and target squared, synced over DDP).

    ``update(prediction, target, mask=None)``: tensors of one shape; ``mask`` (same shape or
    broadcastable, bool) selects the entries that count.

    The sums are float64, float32 once the metric moves to MPS (which has no float64): moving
    the metric casts them to :func:`~plmu.precision.widest_float` of the new device.
    """

    full_state_update = False
    higher_is_better = False
    sums = ("squared_error", "target_sum", "target_squared", "count")

    def update(
        self, prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None
    ) -> None:
        if prediction.shape != target.shape:
            raise ValueError(
                f"prediction and target must have the same shape, got "
                f"{tuple(prediction.shape)} and {tuple(target.shape)}"
            )
        dtype = self.squared_error.dtype
        prediction, target = prediction.to(dtype), target.to(dtype)
        error = prediction - target
        if mask is not None:
            # zeros where the mask is False, not a boolean index (a host/device sync)
            mask = mask.expand_as(target)
            error, target = torch.where(mask, error, 0.0), torch.where(mask, target, 0.0)
            self.count += mask.sum()
        else:
            self.count += target.numel()
        self.squared_error += error.pow(2).sum()
        self.target_sum += target.sum()
        self.target_squared += target.pow(2).sum()

    def compute(self) -> torch.Tensor:
        mean = self.target_sum / self.count
        variance = (self.target_squared / self.count - mean.pow(2)).clamp_min(0)
        return ((self.squared_error / self.count) / variance).sqrt().float()


class WeightedMean(_WidestFloatSums):
    """The mean of scalar batch means ``value`` weighted by ``weight`` (the examples or tokens
    each averages over): ``sum(value * weight) / sum(weight)``, the sums added over DDP
    processes, so the result is the mean over the whole split however it was batched or
    sharded. A NaN value makes it NaN (torchmetrics' ``MeanMetric`` drops NaNs, or with
    ``nan_strategy="disable"`` ignores the weights). With no weight at all (every batch weighed
    0: nothing scored, e.g. every target masked out or padding, over all processes) the mean
    is undefined: :meth:`compute` raises a ValueError naming the metric (``name``), where it
    gave NaN, which Lightning logged as the epoch's value (early stopping then ended the run as
    diverged, and the best checkpoint skipped the epoch as if it were worse).

    The sums are float64 (float32 on MPS, as :class:`NRMSE`'s). In float32 a 90M-token split
    (the size of text8's training split; 3,000 batches of 30,000 tokens) had its token count,
    past 2^24, come out 17 short and its mean 5e-7 off; text8's 5M-character validation and
    test splits were off by about 1e-7, as much as the float32 result's own rounding. The mean
    is returned in float32.

    ``update(value, weight)``: ``value`` a scalar tensor; ``weight`` a number or scalar tensor.
    """

    full_state_update = False
    sums = ("weighted_sum", "weight")

    def __init__(self, name: str = "WeightedMean", **kwargs) -> None:
        super().__init__(**kwargs)
        self.name = name

    def update(self, value: torch.Tensor, weight: int | float | torch.Tensor) -> None:
        value = torch.as_tensor(value, device=self.weight.device)
        if value.numel() != 1:
            raise ValueError(f"value must be a scalar, got shape {tuple(value.shape)}")
        if not isinstance(weight, torch.Tensor):
            # added as a number: a device tensor made from it is a blocking host-to-device
            # copy on an accelerator (the sums' arithmetic all the same)
            weight = float(weight)
        else:
            weight = weight.to(device=self.weight.device, dtype=self.weight.dtype)
        self.weighted_sum += value.detach().to(self.weight.dtype).reshape(()) * weight
        self.weight += weight

    def compute(self) -> torch.Tensor:
        if not self.weight:  # at an epoch's end: the logged value is read anyway
            raise ValueError(
                f"{self.name}: every batch of the epoch weighed 0 (nothing was scored: every "
                f"target masked out or padding), so its mean is undefined; check the evaluation "
                f"data (Lightning's sanity check evaluates only its first batches)"
            )
        return (self.weighted_sum / self.weight).float()

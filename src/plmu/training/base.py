"""The base LightningModule of the objectives: an optimizer, what to monitor, exact means."""

from __future__ import annotations

import math
import time
from collections import deque

import lightning as L
import torch
from torch import nn

from plmu.checks import _check_real
from plmu.training.metrics import WeightedMean

__all__ = ["PlmuModule", "StepTimer", "count_parameters"]


def count_parameters(module: nn.Module) -> int:
    """The number of trainable parameters of ``module``."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


class PlmuModule(L.LightningModule):
    """Wraps a network ``net`` with Adam(W) and names the validation metric to monitor.

    Subclasses set ``monitor`` (a key logged in ``validation_step``) and ``monitor_mode``
    (``"min"`` or ``"max"``); the runner keeps the best checkpoint by it (and early-stops on it
    when ``patience`` is set). They log the validation and test means named in ``means`` with
    :meth:`log_mean`.

    Args:
        net: the network.
        lr: the learning rate (finite, > 0).
        weight_decay: decoupled weight decay (AdamW); 0 gives plain Adam (finite, >= 0).

    A number of the wrong type (``lr="1e-3"``, ``weight_decay=True``) is a TypeError naming it.
    """

    monitor: str = "val_loss"
    monitor_mode: str = "min"
    means: tuple[str, ...] = ("val_loss", "test_loss")  # the names log_mean takes

    def __init__(self, net: nn.Module, lr: float, weight_decay: float = 0.0) -> None:
        super().__init__()
        lr = _check_real(lr, "lr")
        weight_decay = _check_real(weight_decay, "weight_decay")
        if not (math.isfinite(lr) and lr > 0):
            raise ValueError(f"lr must be finite and > 0, got {lr}")
        if not (math.isfinite(weight_decay) and weight_decay >= 0):
            raise ValueError(f"weight_decay must be finite and >= 0, got {weight_decay}")
        self.net = net
        self.lr = lr
        self.weight_decay = weight_decay
        # metric states are not saved: no state_dict keys
        self.epoch_means = nn.ModuleDict({name: WeightedMean(name) for name in self.means})

    def log_mean(
        self,
        name: str,
        value: torch.Tensor,
        weight: int | float | torch.Tensor,
        prog_bar: bool = False,
    ) -> None:
        """Log ``name`` (one of :attr:`means`): over the epoch, the mean of the scalar ``value``
        (a batch mean) weighted by ``weight`` (what it averages over: examples, tokens).

        Under DDP the weighted sums are added over the processes
        (:class:`~plmu.training.metrics.WeightedMean`), so the epoch value is the mean over the
        whole split, also when the processes evaluate shards of unequal sizes
        (:class:`~plmu.training.datamodule.ShardSampler`). ``self.log(..., sync_dist=True)``
        averages the processes' batch-size totals as integers (Lightning 2.6: 11 and 10
        examples gave 10, not 10.5) and was off for such shards. Every process must log
        ``name`` at least once per epoch. An epoch whose batches all weigh 0 (no token scored
        on any process) ends in a ValueError naming ``name``: its mean is undefined (it was
        logged as NaN).
        """
        metric = self.epoch_means[name]
        metric.update(value.detach(), weight)
        self.log(name, metric, prog_bar=prog_bar, on_step=False, on_epoch=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        params = [p for p in self.parameters() if p.requires_grad]
        if self.weight_decay:
            return torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)
        return torch.optim.Adam(params, lr=self.lr)


class StepTimer:
    """Seconds spent in training steps, measured without a host/device sync per step.

    Call :meth:`start` at a step's start and :meth:`stop` at its end (``on_train_batch_start``
    and ``on_train_batch_end``: forward, backward and optimiser step; data loading excluded).
    On CUDA each step records a pair of timing events on the device's current stream: the time
    the GPU took from the step's first queued work to its last. Their elapsed times are added
    once the GPU has passed them (asked without waiting at each start); reading
    :attr:`seconds` waits for the last step, the one sync. Elsewhere: host wall time.
    """

    def __init__(self) -> None:
        self._seconds = 0.0
        self._pending: deque = deque()  # (start, end) CUDA events not yet added
        self._start: float | torch.cuda.Event | None = None

    def start(self, device: torch.device) -> None:
        """A step begins on ``device``."""
        self._add_finished(wait=False)
        if device.type == "cuda":
            self._start = torch.cuda.Event(enable_timing=True)
            self._start.record(torch.cuda.current_stream(device))
        else:
            self._start = time.perf_counter()

    def stop(self, device: torch.device) -> None:
        """The step begun by :meth:`start` ends (nothing if none began)."""
        start, self._start = self._start, None
        if isinstance(start, float):
            self._seconds += time.perf_counter() - start
        elif start is not None:
            end = torch.cuda.Event(enable_timing=True)
            end.record(torch.cuda.current_stream(device))
            self._pending.append((start, end))

    def _add_finished(self, wait: bool) -> None:
        while self._pending:
            start, end = self._pending[0]
            if not end.query():
                if not wait:
                    return
                end.synchronize()
            self._seconds += start.elapsed_time(end) / 1000.0
            self._pending.popleft()

    @property
    def seconds(self) -> float:
        """The training-step seconds so far (waits for the GPU to finish the last step)."""
        self._add_finished(wait=True)
        return self._seconds

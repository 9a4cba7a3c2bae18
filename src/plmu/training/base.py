"""The base LightningModule of the objectives: an optimizer, what to monitor, exact means."""

from __future__ import annotations

import lightning as L
import torch
from torch import nn

from plmu.training.metrics import WeightedMean

__all__ = ["PlmuModule", "count_parameters"]


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
        lr: the learning rate.
        weight_decay: decoupled weight decay (AdamW); 0 gives plain Adam.
    """

    monitor: str = "val_loss"
    monitor_mode: str = "min"
    means: tuple[str, ...] = ("val_loss", "test_loss")  # the names log_mean takes

    def __init__(self, net: nn.Module, lr: float, weight_decay: float = 0.0) -> None:
        super().__init__()
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        self.net = net
        self.lr = lr
        self.weight_decay = weight_decay
        # metric states are not saved: no state_dict keys
        self.epoch_means = nn.ModuleDict({name: WeightedMean() for name in self.means})

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
        ``name`` at least once per epoch.
        """
        metric = self.epoch_means[name]
        metric.update(value.detach(), weight)
        self.log(name, metric, prog_bar=prog_bar, on_step=False, on_epoch=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        params = [p for p in self.parameters() if p.requires_grad]
        if self.weight_decay:
            return torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)
        return torch.optim.Adam(params, lr=self.lr)

"""The base LightningModule of the objectives: an optimizer and what to monitor."""

from __future__ import annotations

import lightning as L
import torch
from torch import nn

__all__ = ["PlmuModule", "count_parameters"]


def count_parameters(module: nn.Module) -> int:
    """The number of trainable parameters of ``module``."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


class PlmuModule(L.LightningModule):
    """Wraps a network ``net`` with Adam(W) and names the validation metric to monitor.

    Subclasses set ``monitor`` (a key logged in ``validation_step``) and ``monitor_mode``
    (``"min"`` or ``"max"``); the runner keeps the best checkpoint by it (and early-stops on it
    when ``patience`` is set).

    Args:
        net: the network.
        lr: the learning rate.
        weight_decay: decoupled weight decay (AdamW); 0 gives plain Adam.
    """

    monitor: str = "val_loss"
    monitor_mode: str = "min"

    def __init__(self, net: nn.Module, lr: float, weight_decay: float = 0.0) -> None:
        super().__init__()
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        self.net = net
        self.lr = lr
        self.weight_decay = weight_decay

    def configure_optimizers(self) -> torch.optim.Optimizer:
        params = [p for p in self.parameters() if p.requires_grad]
        if self.weight_decay:
            return torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)
        return torch.optim.Adam(params, lr=self.lr)

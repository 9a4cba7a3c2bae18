"""Sequence-to-sequence regression (Mackey-Glass): MSE loss, NRMSE metric."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from plmu.training.base import PlmuModule
from plmu.training.metrics import NRMSE

__all__ = ["SequenceRegression", "masked_mse"]


def masked_mse(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The mean squared error over the entries ``mask`` selects, a scalar tensor.

    ``prediction``, ``target`` and ``mask`` (bool) share one shape. It equals
    ``F.mse_loss(prediction[mask], target[mask])`` to float rounding (nan for an empty mask,
    float32 under autocast) without the boolean index, whose data-dependent shape is a
    host/device sync on an accelerator: the masked-out entries of both are set to zero, so
    their error and their gradient are exactly zero (a nan or inf there counts as before: not).
    """
    kept = torch.where(mask, prediction, 0), torch.where(mask, target, 0)
    return F.mse_loss(*kept, reduction="sum") / mask.sum()


class SequenceRegression(PlmuModule):
    """Trains ``net: (B, T, in) -> (B, T, out)`` to predict a target sequence.

    Batches are ``(x, y)`` or ``(x, y, mask)``: ``x`` (B, T, in), ``y`` (B, T, out) and ``mask``
    (B, T) bool, True where a step counts in the loss and the metrics (e.g. False on the warm-up
    steps where the network has seen too little history). Logs ``{stage}_loss`` (masked MSE) and
    ``{stage}_nrmse`` for stage ``train``/``val``/``test`` (``val_loss`` and ``test_loss`` are
    the MSE over the split's counted steps; ``train_loss`` is per batch); monitors ``val_nrmse``.
    """

    monitor = "val_nrmse"
    monitor_mode = "min"

    def __init__(self, net: nn.Module, lr: float, weight_decay: float = 0.0) -> None:
        super().__init__(net, lr, weight_decay)
        self.val_nrmse = NRMSE()
        self.test_nrmse = NRMSE()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, T, in) -> prediction (B, T, out)."""
        return self.net(x)

    def _shared(
        self, batch, stage: str
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        x, y, *rest = batch
        mask = rest[0] if rest else torch.ones(y.shape[:2], dtype=torch.bool, device=y.device)
        prediction = self(x)
        mask = mask.unsqueeze(-1).expand_as(y)
        loss = masked_mse(prediction, y, mask)
        if stage == "train":
            self.log("train_loss", loss, prog_bar=True)
        else:  # the mean over the split's counted steps, however they are batched
            self.log_mean(f"{stage}_loss", loss, mask.sum())
        return loss, prediction, y, mask

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        loss, *_ = self._shared(batch, "train")
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        _, prediction, y, mask = self._shared(batch, "val")
        self.val_nrmse.update(prediction, y, mask)
        self.log("val_nrmse", self.val_nrmse, prog_bar=True)

    def test_step(self, batch, batch_idx: int) -> None:
        _, prediction, y, mask = self._shared(batch, "test")
        self.test_nrmse.update(prediction, y, mask)
        self.log("test_nrmse", self.test_nrmse)

"""Sequence classification (psMNIST, sentiment, ...): cross-entropy loss, accuracy metric."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from plmu.checks import _check_positive_int
from plmu.training.base import PlmuModule

__all__ = ["SequenceClassification"]


class SequenceClassification(PlmuModule):
    """Trains ``net(*inputs) -> logits (B, num_classes)``.

    Batches are ``(*inputs, labels)``: every element but the last is passed to ``net`` (e.g.
    ``(x, labels)`` or ``(tokens, lengths, labels)``); ``labels`` (B,) int64. Logs
    ``{stage}_loss`` and ``{stage}_accuracy`` (a fraction in [0, 1]); monitors ``val_accuracy``.
    """

    monitor = "val_accuracy"
    monitor_mode = "max"

    def __init__(
        self, net: nn.Module, num_classes: int, lr: float, weight_decay: float = 0.0
    ) -> None:
        super().__init__(net, lr, weight_decay)
        num_classes = _check_positive_int(num_classes, "num_classes", 2)
        self.num_classes = num_classes
        self.train_accuracy = MulticlassAccuracy(num_classes, average="micro")
        self.val_accuracy = MulticlassAccuracy(num_classes, average="micro")
        self.test_accuracy = MulticlassAccuracy(num_classes, average="micro")

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        """inputs -> logits (B, num_classes)."""
        return self.net(*inputs)

    def _step(self, batch, stage: str, accuracy: MulticlassAccuracy) -> torch.Tensor:
        *inputs, labels = batch
        logits = self(*inputs)
        loss = F.cross_entropy(logits, labels)
        accuracy.update(logits.detach(), labels)
        if stage == "train":
            self.log("train_loss", loss, prog_bar=True)
        else:  # weighted by the batch's examples, a tensor made on the device: a Python int
            # would be copied from the host at every step, a sync (torch.tensor(n, device=...))
            self.log_mean(f"{stage}_loss", loss, labels.new_full((), labels.shape[0]))
        self.log(f"{stage}_accuracy", accuracy, prog_bar=True, on_step=False, on_epoch=True)
        return loss

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train", self.train_accuracy)

    def validation_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "val", self.val_accuracy)

    def test_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "test", self.test_accuracy)

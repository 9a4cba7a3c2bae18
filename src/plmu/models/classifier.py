"""A sequence classifier: a recurrent stack read at the last step, then a linear head."""

from __future__ import annotations

import torch
from torch import nn

from plmu.checks import _check_positive_int
from plmu.models.stack import RecurrentStack

__all__ = ["SequenceClassifier"]


class SequenceClassifier(nn.Module):
    """``x`` ``(B, T, input_size)`` (and optional ``lengths`` ``(B,)``) -> logits ``(B, C)``.

    With the parallel LMU the last layer computes only its final memory state, one matrix
    product over the sequence (the paper's eq. 25); the memory sequence is never built.

    Args:
        input_size: features per step (1 for psMNIST pixels).
        num_classes: ``C``.
        model, hidden_size, num_layers, order, theta, memory_size, dropout, **layer_kwargs:
            the :class:`~plmu.models.RecurrentStack`.
    """

    def __init__(
        self,
        input_size: int,
        num_classes: int,
        model: str,
        hidden_size: int,
        num_layers: int = 1,
        order: int | None = None,
        theta: float | None = None,
        memory_size: int = 1,
        dropout: float = 0.0,
        **layer_kwargs: object,
    ) -> None:
        super().__init__()
        num_classes = _check_positive_int(num_classes, "num_classes")
        self.stack = RecurrentStack(
            model,
            input_size,
            hidden_size,
            num_layers,
            order,
            theta,
            memory_size,
            dropout,
            return_sequences=False,
            **layer_kwargs,
        )
        self.head = nn.Linear(self.stack.hidden_size, num_classes)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.stack(x, lengths))

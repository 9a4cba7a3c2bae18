"""A sequence-to-sequence regressor: a recurrent stack and a linear read-out at every step."""

from __future__ import annotations

import torch
from torch import nn

from plmu.checks import _check_positive_int
from plmu.models.stack import RecurrentStack

__all__ = ["SequenceRegressor"]


class SequenceRegressor(nn.Module):
    """``x`` ``(B, T, input_size)`` -> prediction ``(B, T, output_size)``, causal in time.

    Args:
        input_size, output_size: features in and out.
        model, hidden_size, num_layers, order, theta, memory_size, dropout, **layer_kwargs:
            the :class:`~plmu.models.RecurrentStack`.
    """

    def __init__(
        self,
        input_size: int,
        output_size: int,
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
        output_size = _check_positive_int(output_size, "output_size")
        self.stack = RecurrentStack(
            model,
            input_size,
            hidden_size,
            num_layers,
            order,
            theta,
            memory_size,
            dropout,
            return_sequences=True,
            **layer_kwargs,
        )
        self.head = nn.Linear(self.stack.hidden_size, output_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stack(x))

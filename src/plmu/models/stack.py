"""Stacks of recurrent layers of one kind: the parallel LMU, the original LMU, or an LSTM."""

from __future__ import annotations

import torch
from torch import nn

from plmu.checks import _check_positive_int
from plmu.layers import LMU, ParallelLMU
from plmu.padding import gather_time

__all__ = ["MODELS", "RecurrentStack"]

MODELS = ("parallel-lmu", "lmu", "lstm")


class RecurrentStack(nn.Module):
    """``num_layers`` recurrent layers of the kind ``model``, each feeding the next.

    Args:
        model: ``"parallel-lmu"`` (:class:`plmu.ParallelLMU`, the paper's layer), ``"lmu"``
            (:class:`plmu.LMU`, Voelker 2019) or ``"lstm"`` (:class:`torch.nn.LSTM`).
        input_size: features of ``x``.
        hidden_size: features of every layer's output.
        num_layers: layers in the stack.
        order, theta, memory_size: the Legendre memory of each LMU layer (ignored by ``lstm``).
        dropout: dropout between layers.
        return_sequences: the last layer returns every step ``(B, T, H)`` or only each
            sequence's last step ``(B, H)`` (a final parallel LMU then uses the last-state
            product, the paper's eq. 25).
        **layer_kwargs: passed to every LMU layer (e.g. ``hidden_activation``, ``init``).

    Shapes:
        ``forward(x, lengths=None)``: ``x`` ``(B, T, input_size)``, ``lengths`` ``(B,)`` or
        ``None`` -> ``(B, T, hidden_size)`` or ``(B, hidden_size)``.
    """

    def __init__(
        self,
        model: str,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        order: int | None = None,
        theta: float | None = None,
        memory_size: int = 1,
        dropout: float = 0.0,
        return_sequences: bool = True,
        **layer_kwargs: object,
    ) -> None:
        super().__init__()
        if model not in MODELS:
            raise ValueError(f"model must be one of {MODELS}, got {model!r}")
        input_size = _check_positive_int(input_size, "input_size")
        hidden_size = _check_positive_int(hidden_size, "hidden_size")
        num_layers = _check_positive_int(num_layers, "num_layers")
        if model != "lstm" and (order is None or theta is None):
            raise ValueError(f"model {model!r} needs order and theta")
        self.model = model
        self.hidden_size = hidden_size
        self.return_sequences = return_sequences
        self.dropout = nn.Dropout(dropout)
        if model == "lstm":
            self.layers = nn.ModuleList(
                [
                    nn.LSTM(
                        input_size,
                        hidden_size,
                        num_layers=num_layers,
                        batch_first=True,
                        dropout=dropout if num_layers > 1 else 0.0,
                    )
                ]
            )
            return
        layer_type = ParallelLMU if model == "parallel-lmu" else LMU
        self.layers = nn.ModuleList(
            layer_type(
                input_size if i == 0 else hidden_size,
                hidden_size,
                order,
                theta,
                memory_size=memory_size,
                return_sequences=return_sequences or i < num_layers - 1,
                **layer_kwargs,
            )
            for i in range(num_layers)
        )

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        if self.model == "lstm":
            y, _ = self.layers[0](x)
            if self.return_sequences:
                return y
            if lengths is None:
                return y[:, -1]
            return gather_time(y, lengths.to(y.device))
        for i, layer in enumerate(self.layers):
            if i:
                x = self.dropout(x)
            x, _ = layer(x, lengths=lengths)
        return x

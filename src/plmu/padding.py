"""Right-padded sequences ``(batch, time, ...)`` with their ``lengths``: the last valid step
(:func:`gather_time`) and the sequences shifted to end at the last step (:func:`right_align`).
"""

from __future__ import annotations

import torch


def gather_time(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """``x[b, lengths[b] - 1]`` for ``x`` ``(batch, time, ...)``: the last valid step."""
    index = (lengths.to(x.device) - 1).view(-1, *([1] * (x.dim() - 1)))
    index = index.expand(-1, 1, *x.shape[2:])
    return x.gather(1, index).squeeze(1)


def right_align(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Shift each right-padded sequence ``(batch, time, ...)`` so that it ends at the last step.

    Steps before the shifted start are zero. Differentiable in ``x``.
    """
    T = x.shape[1]
    shift = (T - lengths.to(x.device)).view(-1, 1)
    src = torch.arange(T, device=x.device).view(1, -1) - shift  # (B, T)
    valid = src >= 0
    index = src.clamp(min=0).view(*src.shape, *([1] * (x.dim() - 2))).expand_as(x)
    out = x.gather(1, index)
    return out * valid.view(*valid.shape, *([1] * (x.dim() - 2))).to(x.dtype)

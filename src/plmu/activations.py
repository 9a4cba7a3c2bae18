"""The activations the LMU layers take by name (``hidden_activation``, ``memory_activation``):
:data:`ACTIVATIONS`, and the in-place forms the inference paths apply to fresh buffers."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ACTIVATIONS"]

ACTIVATIONS = {
    "identity": nn.Identity,
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
    "sigmoid": nn.Sigmoid,
    "silu": nn.SiLU,
}
# in-place forms used at inference (the folded step, the fused forward), on fresh buffers
_INPLACE_ACTIVATIONS = {
    nn.Identity: None,
    nn.ReLU: torch.relu_,
    nn.Tanh: torch.tanh_,
    nn.Sigmoid: torch.sigmoid_,
}


def _activation(name: str | None, argument: str) -> nn.Module:
    key = "identity" if name is None else name
    if key not in ACTIVATIONS:
        raise ValueError(f"{argument} must be one of {sorted(ACTIVATIONS)}, got {name!r}")
    return ACTIVATIONS[key]()


def _activation_name(module: nn.Module) -> str:
    """The name :data:`ACTIVATIONS` gives ``module``'s type (its class name if none does: a
    module put in its place after construction)."""
    for name, cls in ACTIVATIONS.items():
        if type(module) is cls:
            return name
    return type(module).__qualname__


class _ReLUSavingOutput(torch.autograd.Function):
    """ReLU whose backward reads its float output: ``grad * sign(out)``, for ``torch.compile`` on
    the CPU (:meth:`plmu.ParallelLMU._activate`).

    Autograd's ReLU backward (``threshold_backward``: ``where(out <= 0, 0, grad)``) lets
    inductor's partitioner save the comparison, a bool tensor, beside the output, and inductor's
    vectorised bool stores are slow on some CPUs (AMD EPYC: a compiled full-sequence training
    step took 1.3x eager's time, docs/performance.md). ``sign(out)`` is a float the size of the
    output, so the partitioner saves the output itself, which the graph returns anyway. The same
    numbers for a finite ``grad`` (``sign(out)`` is 1 where ``out > 0``, else 0; a negative
    ``grad`` gives ``-0.0`` where ReLU's gives ``0.0``); where ``out`` is 0 an infinite or NaN
    ``grad`` gives NaN instead of 0.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return torch.relu(x)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:  # type: ignore[override]
        ctx.save_for_backward(output)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        (out,) = ctx.saved_tensors
        return grad * torch.sign(out)

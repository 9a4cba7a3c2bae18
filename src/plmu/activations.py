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

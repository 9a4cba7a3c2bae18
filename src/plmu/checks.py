"""Argument and tensor validation shared by the memory, the layers and the models: clear
errors that name the argument.
"""

from __future__ import annotations

import numbers

import numpy as np
import torch

from plmu.legendre import _check_positive_int  # also for the models
from plmu.precision import autocast_enabled
from plmu.tracing import _tracing

__all__ = [
    "check_input_dtype",
    "check_lengths",
    "check_sequence",
    "check_state",
    "check_step_input",
    "input_dtype_error",
]


def _check_real(value: object, name: str) -> float:
    """``value`` as a float: a real number (``int``, ``float``, a NumPy scalar); a ``str``, a
    ``bool`` or another type is a TypeError naming ``name`` (``float("1")`` and ``float(True)``
    would pass silently)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}: {value!r}")
    return float(value)


def _check_int(value: object, name: str) -> int:
    """``value`` as an ``int`` (NumPy integers too), any sign; a ``float``, ``str``, ``bool`` or
    another type is a TypeError naming ``name``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}: {value!r}")
    return int(value)


def _reads_values(tensor: torch.Tensor) -> bool:
    """Whether an input check may read ``tensor``'s values: on the CPU only, where that is
    free, and never while tracing or compiling. On an accelerator it would stall every step on
    a host/device synchronisation, so such checks skip its tensors (or read them on the host
    before the batch moves to the device)."""
    return tensor.device.type == "cpu" and not _tracing()


def _zeros(
    batch_size: object, size: int, dtype: torch.dtype | None, device: torch.device | str
) -> torch.Tensor:
    """``default_state``'s zeros ``(batch_size, size)``, ``batch_size`` and ``dtype`` checked."""
    batch_size = _check_positive_int(batch_size, "batch_size", 0)
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"dtype must be a floating torch.dtype or None, got {dtype!r}")
    return torch.zeros(batch_size, size, dtype=dtype, device=device)


def check_sequence(x: object, features: int, name: str) -> torch.Tensor:
    """Check a batch-first sequence ``(batch, time, features)`` of floating dtype."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must have a floating dtype, got {x.dtype}")
    if x.dim() != 3:
        raise ValueError(
            f"{name} must have shape (batch, time, {features}), got {tuple(x.shape)} "
            f"(rank {x.dim()}, expected 3; batch-first)"
        )
    if x.shape[2] != features:
        raise ValueError(
            f"{name} must have shape (batch, time, {features}), got {tuple(x.shape)}: "
            f"last dimension {x.shape[2]} != {features}"
        )
    return x


def check_step_input(x: object, features: int, name: str) -> torch.Tensor:
    """Check one time step ``(batch, features)`` of floating dtype."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must have a floating dtype, got {x.dtype}")
    if x.dim() != 2 or x.shape[1] != features:
        raise ValueError(f"{name} must have shape (batch, {features}), got {tuple(x.shape)}")
    return x


def check_input_dtype(x: torch.Tensor, weight: torch.Tensor, name: str) -> None:
    """Raise a ``TypeError`` naming ``name`` when ``x``'s floating dtype is not ``weight``'s.

    A layer with weights runs in their dtype, like ``torch.nn.Linear``: a float64 input to a
    float32 layer is an error on every path (none silently computes in another precision).
    Under ``torch.autocast`` mixed dtypes are legitimate and nothing is checked. Cheap: one
    comparison when the dtypes agree.
    """
    if x.dtype != weight.dtype and not autocast_enabled(x.device.type):
        raise input_dtype_error(name, x.dtype, weight.dtype)


def input_dtype_error(name: str, got: torch.dtype, expected: torch.dtype) -> TypeError:
    """:func:`check_input_dtype`'s error: ``name`` has dtype ``got``, the layer ``expected``."""
    return TypeError(
        f"{name} must have the layer's dtype {expected} (that of its weights), got {got}: "
        f"cast the input, or the layer with .to({got})"
    )


def check_state(
    state: object, batch: int, size: int, name: str, like: torch.Tensor
) -> torch.Tensor:
    """Check a state ``(batch, size)``; ``None`` gives zeros like ``like``."""
    if state is None:
        return like.new_zeros((batch, size))
    if not isinstance(state, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or None, got {type(state).__name__}")
    if not state.is_floating_point():
        raise TypeError(f"{name} must have a floating dtype, got {state.dtype}")
    if tuple(state.shape) != (batch, size):
        raise ValueError(f"{name} must have shape ({batch}, {size}), got {tuple(state.shape)}")
    return state if state.dtype == like.dtype else state.to(like.dtype)


def check_lengths(
    lengths: object, batch: int, time: int, name: str = "lengths"
) -> torch.Tensor | None:
    """Check right-padding ``lengths`` ``(batch,)``: integers in ``[1, time]`` (``name`` is the
    argument the messages name)."""
    if lengths is None:
        return None
    lengths = torch.as_tensor(lengths)
    if lengths.dtype.is_floating_point or lengths.dtype == torch.bool or lengths.is_complex():
        raise TypeError(f"{name} must hold integers, got {lengths.dtype}")
    if tuple(lengths.shape) != (batch,):
        raise ValueError(f"{name} must have shape ({batch},), got {tuple(lengths.shape)}")
    # the values only on the CPU: on an accelerator reading them back would stall every
    # training step on a host/device sync (out-of-range lengths then index out of bounds there)
    if batch and _reads_values(lengths) and (int(lengths.min()) < 1 or int(lengths.max()) > time):
        raise ValueError(f"{name} must lie in [1, {time}] (the time dimension), got {lengths}")
    return lengths.long()

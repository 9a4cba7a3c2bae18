"""Precision: the memory computes in float32 whenever ``torch.autocast`` is on, and the widest
float a device has.

FFTs take neither ``bfloat16`` nor (on CPU) ``float16``, and a state carried through thousands of
steps must not be rounded to 8 bits each step (:func:`full_precision_under_autocast`). Sums and
ranking keys that need more than float32 use :func:`widest_float` (MPS has no float64).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

import torch

_Method = TypeVar("_Method", bound=Callable)
_LOW_PRECISION = (torch.float16, torch.bfloat16)


def autocast_enabled(device_type: str) -> bool:
    """Whether ``torch.autocast`` is on for ``device_type`` (any torch >= 2.2); False for a
    device type autocast does not know (``meta``: shape inference, deferred initialisation)."""
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4: no device argument
        if device_type == "cpu":
            return torch.is_autocast_cpu_enabled()
        return torch.is_autocast_enabled()
    except RuntimeError:  # "unknown device type for autocast"
        return False


def widest_float(device: torch.device | str) -> torch.dtype:
    """float64, or float32 on Apple's MPS (which has no float64): the dtype for accumulators and
    keys on ``device`` that want more than float32."""
    return torch.float32 if torch.device(device).type == "mps" else torch.float64


def _float32(value: object) -> object:
    if isinstance(value, torch.Tensor) and value.dtype in _LOW_PRECISION:
        return value.float()
    return value


def full_precision_under_autocast(method: _Method) -> _Method:
    """Run a memory method in float32, with autocast off, whenever autocast is on.

    Under mixed precision the encoder hands the memory ``float16``/``bfloat16`` inputs: FFTs do
    not take ``bfloat16`` (nor, on CPU, ``float16``), and a state carried through thousands of
    steps must not be rounded to 8 bits each step. So, like ``torch.amp.custom_fwd(cast_inputs=
    torch.float32)``, low-precision tensor arguments become float32 and the result stays float32;
    autocast then casts it again where the next operation wants. Without autocast nothing changes.
    """

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        device_type = self.A.device.type
        if not autocast_enabled(device_type):
            return method(self, *args, **kwargs)
        with torch.autocast(device_type, enabled=False):
            args = tuple(_float32(a) for a in args)
            kwargs = {k: _float32(v) for k, v in kwargs.items()}
            return method(self, *args, **kwargs)

    return wrapper  # type: ignore[return-value]

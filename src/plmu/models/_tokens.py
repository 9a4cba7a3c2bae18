"""Checks of token-id tensors for the models that embed them (``nn.Embedding``).

An id outside ``[0, vocab_size)`` makes ``nn.Embedding`` raise an ``IndexError`` deep inside
torch on the CPU and a device-side assert on CUDA (which poisons the CUDA context). The value
check reads the ids back to the host: free for a CPU tensor, a host/device synchronisation for
an accelerator's. So it runs on CPU tensors always, and on other devices only where the caller
says a synchronisation happens there anyway (``sync_ok``), never inside a trace or a compiled
graph.
"""

from __future__ import annotations

import torch

from plmu.checks import _reads_values
from plmu.tracing import _tracing

__all__ = ["check_token_dtype", "check_token_range", "token_range_error", "tokens_out_of_range"]


def check_token_dtype(ids: object, name: str, shape: str) -> torch.Tensor:
    """``ids`` if it is a tensor of an integer dtype (a ``TypeError`` naming ``name`` if not).

    ``shape`` (e.g. ``"(batch, time)"``) goes into the message. int32 and int64 are returned as
    they are (``nn.Embedding`` takes both), other integer dtypes as int64.
    """
    if not isinstance(ids, torch.Tensor):
        raise TypeError(
            f"{name} must be a torch.Tensor {shape} of token ids, got {type(ids).__name__}"
        )
    if ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer token ids, got dtype {ids.dtype}")
    return ids if ids.dtype in (torch.int64, torch.int32) else ids.long()


def tokens_out_of_range(ids: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """A 0-dim bool tensor on ``ids``' device: whether any id lies outside ``[0, vocab_size)``.

    Nothing is read back, so a caller can fold it into a synchronisation it makes anyway."""
    return ((ids < 0) | (ids >= vocab_size)).any()


def token_range_error(ids: torch.Tensor, vocab_size: int, name: str) -> ValueError:
    """The error for ``ids`` with values outside ``[0, vocab_size)`` (reads ``ids`` back)."""
    bad = ids[(ids < 0) | (ids >= vocab_size)].unique()
    shown = ", ".join(str(v) for v in bad[:5].tolist()) + (", ..." if bad.numel() > 5 else "")
    return ValueError(f"{name} must hold token ids in [0, {vocab_size}), got {shown}")


def check_token_range(ids: torch.Tensor, vocab_size: int, name: str, sync_ok: bool = False) -> None:
    """Raise :func:`token_range_error` if an id of ``ids`` lies outside ``[0, vocab_size)``.

    Checked for CPU tensors; for tensors on other devices only with ``sync_ok`` (the caller
    synchronises with the device there anyway); never while tracing or compiling.
    """
    if ids.numel() == 0 or _tracing() or ids.device.type == "meta":
        return
    if not (sync_ok or _reads_values(ids)):
        return
    if bool(tokens_out_of_range(ids, vocab_size)):
        raise token_range_error(ids, vocab_size, name)

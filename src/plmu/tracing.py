"""What is recording the computation: ``torch.jit.trace``, ``torch.compile``/``torch.export``,
``torch.func`` transforms and forward-mode AD.

The execution strategies ask these questions (cheaply, on every call) before they take a cache,
an ``out=`` buffer or a custom autograd Function (:func:`plain_autograd`).
"""

from __future__ import annotations

import torch


def _tracing() -> bool:
    """Under ``torch.jit.trace`` or ``torch.compile``/``torch.export``: whole-tensor operations,
    and nothing taken from a cache keyed on a weight (the graph must read the weight itself)."""
    return torch.jit.is_tracing() or torch.compiler.is_compiling()


def _plain(x: torch.Tensor) -> bool:
    """Whether ``x`` carries neither a forward-mode tangent (``torch.autograd.forward_ad``) nor a
    ``torch.func`` transform (``jvp``, ``vmap``, ``grad``): then an ``out=`` operation may take it
    (those have no forward derivative and no batching rule), and a cache keyed on it loses
    nothing (a cached value holds no tangent). Never when traced or compiled: a graph takes
    no cached value and no ``out=`` buffer (and Dynamo cannot trace the functorch check)."""
    if _tracing():
        return False
    if _untransformed():  # the common case, in about 0.1 us
        return True
    wrapped = getattr(torch._C._functorch, "is_functorch_wrapped_tensor", None)  # private API
    return not (
        (wrapped is not None and wrapped(x))
        or torch.autograd.forward_ad.unpack_dual(x).tangent is not None
    )


def _untransformed() -> bool:
    """No ``torch.func`` transform running and no forward-mode dual level open: then no tensor
    is a transform's or carries a tangent (a check for hot paths, without looking at tensors;
    when torch lacks the attribute it answers False, and the tensors are looked at)."""
    level = getattr(torch.autograd.forward_ad, "_current_level", 0)  # private API, -1: none
    return level < 0 and not _transforms_active()


def _transforms_active() -> bool:
    """Whether a ``torch.func`` transform (``grad``, ``vmap``, ``jvp``, ``jacrev``, ...) is
    running: a custom autograd Function without ``setup_context`` cannot be applied then."""
    active = getattr(torch._C, "_are_functorch_transforms_active", None)  # private API
    return bool(active is not None and active())


def plain_autograd(*tensors: torch.Tensor | None) -> bool:
    """Whether to compute with whole-tensor operations and autograd's own derivatives instead
    of this package's custom autograd Functions (tiled FFTs with hand-written backwards).

    True when traced or compiled (export needs whole-tensor operations), inside a ``torch.func``
    transform, or when one of ``tensors`` carries a forward-mode tangent
    (``torch.autograd.forward_ad``): the Functions define neither ``setup_context`` and a
    batching rule nor ``jvp``. The values are the same either way; only speed and memory differ.
    (Under ``torch.compile`` the fused projection asks :func:`~plmu.spectral_ops._compiled_kernels`
    first: its graph calls the same tiled kernels as operators.)
    """
    return (
        _tracing() or _transforms_active() or not all(_plain(t) for t in tensors if t is not None)
    )


# torch.export must not meet the operator (its graph would name a module of this process)
_is_exporting = getattr(torch.compiler, "is_exporting", None)  # torch >= 2.7


def _compiling_not_exporting() -> bool:
    """Under ``torch.compile`` and not ``torch.export``: a graph that may call this process's
    operators (``plmu::...``; an exported program must name none, and a torch without
    ``is_exporting`` cannot tell the two apart, so it gets none)."""
    return torch.compiler.is_compiling() and _is_exporting is not None and not _is_exporting()

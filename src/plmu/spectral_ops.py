"""The tiled FFT kernels of :mod:`plmu.spectral` as ``torch.library`` custom operators
(``plmu::fold``, ``plmu::spectral_mix``, ``plmu::block_convolution``, ``plmu::block_synthesis`` and
their backwards), called by a graph under ``torch.compile`` (:func:`_compiled_blocks`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from plmu.higher_order import create_graph_backward
from plmu.spectral import (
    _convolution_backward,
    _convolution_forward,
    _fold,
    _fold_backward,
    _gather_blocks,
    _irfft_adjoint,
    _mix_backward,
    _mix_forward,
    _plain_blocks,
    _plain_mix,
    _synthesis_backward,
    _synthesis_forward,
)
from plmu.tracing import _compiling_not_exporting, _transforms_active

# ------------------------------------------------------- the tiled kernels as graph operators
#
# Under torch.compile the custom Functions above are neither traced (Dynamo would unroll their
# tile loops into the graph: 2.9 s a training step) nor replaced by whole-tensor operations
# (whole-batch (B, nb, out, n_fft) intermediates: a compiled full-sequence step took 360 ms
# against 183 ms eager). The graph calls the same tiled kernels instead, as custom operators
# with their hand-written backwards (registered with ``register_autograd``): opaque to the
# compiler, which sees only the shapes their fakes give. Each returns a new tensor (an
# inductor graph may reuse an operator's output buffer, and a functional graph has no in-place
# ``acc``); the caller adds the blocks to its accumulator, which inductor fuses with the ops
# that follow. A first-order backward whose input needs no gradient returns an empty tensor
# (an operator returns no ``None``), dropped again before autograd sees it.


def _compiled_kernels() -> bool:
    """Under ``torch.compile`` (not ``torch.export``, whose program must name no operator of
    this process, nor ``torch.jit.trace``, nor inside a ``torch.func`` transform, for which the
    operators have no rules): the fused projection calls its tiled kernels as the operators
    ``plmu::fold``, ``plmu::spectral_mix``, ``plmu::block_convolution`` and
    ``plmu::block_synthesis``."""
    return _compiling_not_exporting() and not torch.jit.is_tracing() and not _transforms_active()


def _real_dtype(dtype: torch.dtype) -> torch.dtype:
    """The real dtype of a complex one (``complex64 -> float32``, ``complex128 -> float64``)."""
    return torch.float64 if dtype == torch.complex128 else torch.float32


def _or_empty(t: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """``t``, or an empty tensor like ``like`` for a gradient that was not asked for."""
    return like.new_empty((0,)) if t is None else t


def _gradients_like(
    a: torch.Tensor, b: torch.Tensor, need_a: bool, need_b: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """A backward operator's fake: gradients shaped like ``a`` and ``b``, empty where not asked
    for."""
    return (
        torch.empty_like(a) if need_a else a.new_empty((0,)),
        torch.empty_like(b) if need_b else b.new_empty((0,)),
    )


def _pair_backward(plain: Callable, backward_op: Callable) -> Callable:
    """``register_autograd``'s backward for an operator of two tensors ``(a, b)`` whose
    first-order gradients ``backward_op(grad, a, b, need_a, need_b)`` computes, and whose
    second order differentiates ``plain(a, b)`` (under ``create_graph``)."""

    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        a, b = ctx.saved_tensors
        need = ctx.needs_input_grad
        if torch.is_grad_enabled():  # create_graph: a gradient to differentiate again
            return create_graph_backward(plain, (a, b), need, (grad,))
        g_a, g_b = backward_op(grad, a, b, need[0], need[1])
        return _asked(g_a, need[0]), _asked(g_b, need[1])

    return backward


def _asked(t: torch.Tensor, need: bool) -> torch.Tensor | None:
    """A backward operator's gradient for autograd: ``None`` where it was not asked for."""
    return t if need else None


# plmu::fold: _FoldedKernel


@torch.library.custom_op("plmu::fold", mutates_args=())
def _fold_op(Hs: torch.Tensor, Wp: torch.Tensor) -> torch.Tensor:
    """:class:`~plmu.spectral._FoldedKernel` as an operator: ``(F, n)`` complex for ``Hs``
    ``(2F, d)`` and ``Wp`` ``(d, n)``."""
    return _fold(Hs, Wp)


@_fold_op.register_fake
def _(Hs: torch.Tensor, Wp: torch.Tensor) -> torch.Tensor:
    dtype = torch.promote_types(torch.promote_types(Hs.dtype, Wp.dtype), torch.complex64)
    return Hs.new_empty((Hs.shape[0] // 2, Wp.shape[1]), dtype=dtype)


@torch.library.custom_op("plmu::fold_backward", mutates_args=())
def _fold_backward_op(
    grad: torch.Tensor, Hs: torch.Tensor, Wp: torch.Tensor, need_hs: bool, need_wp: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`~plmu.spectral._fold_backward` as an operator (empty tensors for gradients not asked
    for)."""
    g_hs, g_wp = _fold_backward(grad, Hs, Wp, need_hs, need_wp)
    return _or_empty(g_hs, Hs), _or_empty(g_wp, Wp)


@_fold_backward_op.register_fake
def _(grad, Hs, Wp, need_hs, need_wp):
    return _gradients_like(Hs, Wp, need_hs, need_wp)


def _save_inputs(ctx, inputs: tuple, output: torch.Tensor) -> None:
    ctx.save_for_backward(*inputs)


_fold_op.register_autograd(_pair_backward(_fold, _fold_backward_op), setup_context=_save_inputs)


# plmu::spectral_mix: _SpectralMix


@torch.library.custom_op("plmu::spectral_mix", mutates_args=())
def _spectral_mix_op(U: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """:class:`~plmu.spectral._SpectralMix` as an operator: ``(B, out, F)`` for ``U`` ``(B, C, F)``
    and ``K`` ``(F, C, out)``."""
    return _mix_forward(U, K)


@_spectral_mix_op.register_fake
def _(U: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    return U.new_empty((U.shape[0], K.shape[2], U.shape[2]))


@torch.library.custom_op("plmu::spectral_mix_backward", mutates_args=())
def _spectral_mix_backward_op(
    gY: torch.Tensor, U: torch.Tensor, K: torch.Tensor, need_u: bool, need_k: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`~plmu.spectral._mix_backward` as an operator (empty tensors for gradients not asked
    for)."""
    gU, gK = _mix_backward(gY, U, K, need_u, need_k)
    return _or_empty(gU, U), _or_empty(gK, K)


@_spectral_mix_backward_op.register_fake
def _(gY, U, K, need_u, need_k):
    return _gradients_like(U, K, need_u, need_k)


_spectral_mix_op.register_autograd(
    _pair_backward(_plain_mix, _spectral_mix_backward_op), setup_context=_save_inputs
)


# plmu::block_convolution: _BlockConvolution, the blocks alone (no accumulator)


@torch.library.custom_op("plmu::block_convolution", mutates_args=())
def _block_convolution_op(
    Uf: torch.Tensor, Kf: torch.Tensor, T: int, n_fft: int, first: int, L: int
) -> torch.Tensor:
    """:class:`~plmu.spectral._BlockConvolution`'s blocks as an operator: ``(B, T, out)`` for ``Uf``
    ``(B, nb, 1, F)`` and ``Kf`` ``(out, F)``."""
    acc = Uf.new_zeros((Uf.shape[0], T, Kf.shape[0]), dtype=_real_dtype(Uf.dtype))
    return _convolution_forward(acc, Uf, Kf, n_fft, first, L)


@_block_convolution_op.register_fake
def _(Uf, Kf, T, n_fft, first, L):
    return Uf.new_empty((Uf.shape[0], T, Kf.shape[0]), dtype=_real_dtype(Uf.dtype))


@torch.library.custom_op("plmu::block_convolution_backward", mutates_args=())
def _block_convolution_backward_op(
    g: torch.Tensor,
    Uf: torch.Tensor,
    Kf: torch.Tensor,
    n_fft: int,
    first: int,
    L: int,
    need_u: bool,
    need_k: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`~plmu.spectral._convolution_backward` as an operator (empty tensors for gradients not
    asked for)."""
    gU, gK = _convolution_backward(g, Uf, Kf, n_fft, first, L, need_u, need_k)
    return _or_empty(gU, Uf), _or_empty(gK, Kf)


@_block_convolution_backward_op.register_fake
def _(g, Uf, Kf, n_fft, first, L, need_u, need_k):
    return _gradients_like(Uf, Kf, need_u, need_k)


def _block_convolution_setup(ctx, inputs: tuple, output: torch.Tensor) -> None:
    Uf, Kf, _T, n_fft, first, L = inputs
    ctx.save_for_backward(Uf, Kf)
    ctx.geometry = (n_fft, first, L)


def _block_convolution_op_backward(ctx, g: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
    Uf, Kf = ctx.saved_tensors
    n_fft, first, L = ctx.geometry
    need_u, need_k = ctx.needs_input_grad[:2]
    if not (need_u or need_k):
        return None, None, None, None, None, None
    if torch.is_grad_enabled():  # create_graph: a gradient to differentiate again

        def plain(Uf: torch.Tensor, Kf: torch.Tensor) -> torch.Tensor:
            acc = g.new_zeros((Uf.shape[0], g.shape[1], Kf.shape[0]))
            return _plain_blocks(acc, Uf, Kf, n_fft, first, L)

        gU, gK = create_graph_backward(plain, (Uf, Kf), (need_u, need_k), (g,))
        return gU, gK, None, None, None, None
    gU, gK = torch.ops.plmu.block_convolution_backward(g, Uf, Kf, n_fft, first, L, need_u, need_k)
    return _asked(gU, need_u), _asked(gK, need_k), None, None, None, None


_block_convolution_op.register_autograd(
    _block_convolution_op_backward, setup_context=_block_convolution_setup
)


# plmu::block_synthesis: _BlockSynthesis, the blocks alone (no accumulator)


@torch.library.custom_op("plmu::block_synthesis", mutates_args=())
def _block_synthesis_op(Y: torch.Tensor, T: int, n_fft: int, first: int, L: int) -> torch.Tensor:
    """:class:`~plmu.spectral._BlockSynthesis`'s blocks as an operator: ``(B, T, out)`` for ``Y``
    ``(B, nb, out, F)``."""
    acc = Y.new_zeros((Y.shape[0], T, Y.shape[2]), dtype=_real_dtype(Y.dtype))
    return _synthesis_forward(acc, Y, n_fft, first, L)


@_block_synthesis_op.register_fake
def _(Y, T, n_fft, first, L):
    return Y.new_empty((Y.shape[0], T, Y.shape[2]), dtype=_real_dtype(Y.dtype))


@torch.library.custom_op("plmu::block_synthesis_backward", mutates_args=())
def _block_synthesis_backward_op(
    g: torch.Tensor, shape: list[int], n_fft: int, first: int, L: int
) -> torch.Tensor:
    """:func:`~plmu.spectral._synthesis_backward` as an operator."""
    return _synthesis_backward(g, shape, n_fft, first, L)


@_block_synthesis_backward_op.register_fake
def _(g, shape, n_fft, first, L):
    return g.new_empty(shape, dtype=torch.promote_types(g.dtype, torch.complex64))


def _block_synthesis_setup(ctx, inputs: tuple, output: torch.Tensor) -> None:
    Y, _T, n_fft, first, L = inputs
    ctx.geometry = (list(Y.shape), n_fft, first, L)


def _block_synthesis_op_backward(ctx, g: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
    shape, n_fft, first, L = ctx.geometry
    if not ctx.needs_input_grad[0]:
        return None, None, None, None, None
    if torch.is_grad_enabled():  # create_graph: the adjoint as differentiable operations
        gY = _irfft_adjoint(_gather_blocks(g, torch.Size(shape), n_fft, first, L), n_fft)
    else:
        gY = torch.ops.plmu.block_synthesis_backward(g, shape, n_fft, first, L)
    return gY, None, None, None, None


_block_synthesis_op.register_autograd(
    _block_synthesis_op_backward, setup_context=_block_synthesis_setup
)


def _compiled_blocks(
    Uf: torch.Tensor, Kf: torch.Tensor, T: int, n_fft: int, first: int, L: int
) -> torch.Tensor:
    """The projected blocks ``(B, T, out)`` of :meth:`~plmu.memory.LegendreMemory.project` through
    the operators (:func:`_compiled_kernels`): ``Uf`` ``(B, nb, C, F)``, ``Kf`` ``(out, F)`` for
    ``C == 1``, else ``(F, C, out)``."""
    Bn, nb, C, Fq = Uf.shape
    if C == 1:
        return torch.ops.plmu.block_convolution(Uf, Kf, T, n_fft, first, L)
    Y = torch.ops.plmu.spectral_mix(Uf.reshape(Bn * nb, C, Fq), Kf)
    return torch.ops.plmu.block_synthesis(Y.view(Bn, nb, Kf.shape[-1], Fq), T, n_fft, first, L)

"""The tiled FFT kernels of :meth:`plmu.memory.LegendreMemory.project` (the fused projection),
with hand-written backwards, and :func:`fft_size`.

``_FoldedKernel`` folds ``[Re; Im] rfft(H) @ W`` into one complex kernel, ``_SpectralMix``
contracts channels per frequency, ``_BlockConvolution`` and ``_BlockSynthesis`` add the
overlap-save blocks to an accumulator, a tile of frames at a time. Whole-tensor versions
(``_fold``, ``_plain_mix``, ``_plain_blocks``) serve where :func:`~plmu.tracing.plain_autograd`
says so and for second-order gradients.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from plmu.higher_order import create_graph_backward
from plmu.tracing import plain_autograd

# FFT lengths keep a factor of at least 2**FFT_MIN_TWO_POWER (see fft_size)
FFT_MIN_TWO_POWER = 5
# the fused projection's overlap-save frames run in tiles of about this many output values
# (8 MB in float32; see _BlockConvolution)
BLOCK_TILE_ELEMENTS = 1 << 21


def _fold(Hs: torch.Tensor, Wp: torch.Tensor) -> torch.Tensor:
    """``(F, n)`` complex ``K[:F] + i K[F:]`` with ``K = Hs @ Wp`` (``Hs`` stacks ``[Re; Im]``)."""
    K = Hs @ Wp
    Fq = K.shape[0] // 2
    return torch.complex(K[:Fq], K[Fq:])


class _FoldedKernel(torch.autograd.Function):
    """``[Re; Im] rfft(H) @ W`` as one complex ``(F, C * out)`` tensor: ``Kf = K[:F] + i K[F:]``.

    Autograd of ``torch.complex(K[:F], K[F:])`` zero-fills a ``(2F, C * out)`` gradient for
    each half and adds them; the kernel is batch-independent but as large as the batch work at
    small batches, so backward here makes one ``[Re; Im]`` copy of the gradient and one GEMM.

    Shapes: ``Hs`` ``(2F, d)``, ``Wp`` ``(d, C * out)``; returns ``(F, C * out)`` complex.
    """

    @staticmethod
    def forward(ctx, Hs: torch.Tensor, Wp: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(Hs, Wp)
        return _fold(Hs, Wp)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        Hs, Wp = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph: a gradient to differentiate again
            return create_graph_backward(_fold, (Hs, Wp), ctx.needs_input_grad, (grad,))
        return _fold_backward(grad, Hs, Wp, *ctx.needs_input_grad[:2])


def _fold_backward(
    grad: torch.Tensor, Hs: torch.Tensor, Wp: torch.Tensor, need_hs: bool, need_wp: bool
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """:class:`_FoldedKernel`'s first-order backward: the gradients of ``Hs`` and ``Wp``."""
    # (F, n, 2) -> (2, F, n) -> (2F, n): [Re; Im], matching the rows of Hs
    G = torch.view_as_real(grad.resolve_conj()).permute(2, 0, 1).reshape(Hs.shape[0], -1)
    g_hs = G @ Wp.T if need_hs else None  # trainable theta
    g_wp = Hs.T @ G if need_wp else None
    return g_hs, g_wp


# frequencies per tile of _SpectralMix on CPU: 16 was the fastest of 16, 32, 64 and 128 for the
# forward product at batch 32, 16 channels, 128 outputs and 2049 frequencies; smaller products get
# wider tiles of about the same size in memory (batch * (channels + outputs) * tile values), so
# the Python loop stays short
MIX_TILE = 16
MIX_TILE_VALUES = MIX_TILE * 32 * (16 + 128)


def _mix(U: torch.Tensor, K: torch.Tensor, f0: int, f1: int) -> torch.Tensor:
    """``(f1 - f0, B, out)``: ``U[:, :, f] @ K[f]`` for the frequencies ``f0 <= f < f1``."""
    return torch.bmm(_tile(U, f0, f1), K[f0:f1])


def _tile(X: torch.Tensor, f0: int, f1: int) -> torch.Tensor:
    """``X[:, :, f0:f1]`` as a contiguous ``(f1 - f0, X.shape[0], X.shape[1])`` tile.

    One copy of the tile: ``bmm`` on the strided view would copy each of its matrices apart.
    """
    return X[:, :, f0:f1].permute(2, 0, 1).contiguous()


class _SpectralMix(torch.autograd.Function):
    """``Y[b, o, f] = sum_c U[b, c, f] K[f, c, o]``, the per-frequency channel contraction.

    A batched GEMM over frequencies needs the frequency axis first, the FFTs need it last; whole-
    array transposes of ``(B, out, F)`` cost more than the GEMMs themselves on CPU. So the
    product runs in tiles of at least :data:`MIX_TILE` frequencies (:func:`_tiles`), whose
    transposes stay in cache (one tile on CUDA, where a launch per tile would cost more).

    Shapes: ``U`` ``(B, C, F)``, ``K`` ``(F, C, out)`` (complex); returns ``(B, out, F)``.
    """

    @staticmethod
    def forward(ctx, U: torch.Tensor, K: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(U, K)
        return _mix_forward(U, K)

    @staticmethod
    def backward(ctx, gY: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        U, K = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph: a gradient to differentiate again
            return create_graph_backward(_plain_mix, (U, K), ctx.needs_input_grad, (gY,))
        return _mix_backward(gY, U, K, *ctx.needs_input_grad[:2])


def _mix_forward(U: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """:class:`_SpectralMix`'s forward, in tiles of frequencies: ``(B, out, F)``."""
    Bn, Fq, out = U.shape[0], U.shape[2], K.shape[2]
    Y = U.new_empty((Bn, out, Fq))
    for f0, f1 in _tiles(U, K):
        Y[:, :, f0:f1] = _mix(U, K, f0, f1).permute(1, 2, 0)
    return Y


def _mix_backward(
    gY: torch.Tensor, U: torch.Tensor, K: torch.Tensor, need_u: bool, need_k: bool
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """:class:`_SpectralMix`'s first-order backward, in tiles of frequencies: ``(gU, gK)``."""
    gU = torch.empty_like(U) if need_u else None
    gK = torch.empty_like(K) if need_k else None
    for f0, f1 in _tiles(U, K):
        g = _tile(gY, f0, f1)  # (t, B, out)
        if gU is not None:  # gU[b, c, f] = sum_o gY[b, o, f] conj(K[f, c, o])
            gU[:, :, f0:f1] = torch.bmm(g, K[f0:f1].mH).permute(1, 2, 0)
        if gK is not None:  # gK[f, c, o] = sum_b conj(U[b, c, f]) gY[b, o, f]
            gK[f0:f1] = torch.bmm(_tile(U, f0, f1).mH, g)
    return gU, gK


class _BlockConvolution(torch.autograd.Function):
    """Add the projected overlap-save blocks of one memory channel to ``acc`` in place, a tile
    of frames at a time.

    ``acc[b, k L + t, o] += irfft(Uf[b, k, 0] Kf[o], n)[first + t]`` for ``0 <= t < L`` (cut at
    ``T``). Each tile's spectra, inverse FFT and, in backward, the
    zero-padded gradient and its FFT hold about :data:`BLOCK_TILE_ELEMENTS` values: whole-batch
    intermediates of ``(B, nb, out, n_fft)`` are hundreds of MB, fresh pages each step, and
    cost more than the FFTs themselves. The backward is the exact adjoint: ``irfft``'s
    adjoint is ``rfft`` scaled by ``1/n`` (DC and Nyquist) or ``2/n`` (the rest).

    With several channels the kernel ``(F, C, out)`` is as large as many frames' outputs and a
    tile would re-read all of it; their contraction runs whole-batch (:class:`_SpectralMix`),
    and only the inverse FFTs run in tiles (:class:`_BlockSynthesis`).

    Shapes: ``acc`` ``(B, T, out)``; ``Uf`` ``(B, nb, 1, F)`` and ``Kf`` ``(out, F)``, complex.
    Returns ``acc``.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx, acc: torch.Tensor, Uf: torch.Tensor, Kf: torch.Tensor, n_fft: int, first: int, L: int
    ) -> torch.Tensor:
        ctx.mark_dirty(acc)
        ctx.save_for_backward(Uf, Kf)
        ctx.geometry = (acc.shape[1], n_fft, first, L)
        return _convolution_forward(acc, Uf, Kf, n_fft, first, L)

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        Uf, Kf = ctx.saved_tensors
        T, n_fft, first, L = ctx.geometry
        need_u, need_k = ctx.needs_input_grad[1:3]
        if not (need_u or need_k):
            return g, None, None, None, None, None
        if torch.is_grad_enabled():  # create_graph: a gradient to differentiate again

            def plain(Uf: torch.Tensor, Kf: torch.Tensor) -> torch.Tensor:
                acc = g.new_zeros((Uf.shape[0], T, Kf.shape[0]))
                return _plain_blocks(acc, Uf, Kf, n_fft, first, L)

            gU, gK = create_graph_backward(plain, (Uf, Kf), (need_u, need_k), (g,))
            return g, gU, gK, None, None, None
        gU, gK = _convolution_backward(g, Uf, Kf, n_fft, first, L, need_u, need_k)
        return g, gU, gK, None, None, None


def _convolution_forward(
    acc: torch.Tensor, Uf: torch.Tensor, Kf: torch.Tensor, n_fft: int, first: int, L: int
) -> torch.Tensor:
    """:class:`_BlockConvolution`'s forward: the blocks added to ``acc`` in place, a tile of
    frames at a time. Returns ``acc``."""
    out = acc.shape[2]
    for b0, b1, k0, k1 in _frame_tiles(Uf.shape[0], Uf.shape[1], out * n_fft, Uf.device):
        y = _irfft_frames(Uf[b0:b1, k0:k1] * Kf, n_fft)  # (b, g, out, n_fft)
        _add_blocks(acc[b0:b1], y, k0, first, L)
    return acc


def _convolution_backward(
    g: torch.Tensor,
    Uf: torch.Tensor,
    Kf: torch.Tensor,
    n_fft: int,
    first: int,
    L: int,
    need_u: bool,
    need_k: bool,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """:class:`_BlockConvolution`'s first-order backward for the gradient ``g`` ``(B, T, out)``
    of the output: ``(gU, gK)``, a tile of frames at a time."""
    Bn, nb = Uf.shape[:2]
    out = g.shape[2]
    gU = torch.empty_like(Uf) if need_u else None
    gK = torch.zeros_like(Kf) if need_k else None
    # physical conjugates, not lazy ``.conj()`` views: a product with a conjugate view inside
    # a custom operator gave wrong numbers on a compiled graph's first call (torch 2.13 runs
    # it under an aliasing check there; ``plmu::block_convolution_backward`` failed opcheck
    # and a training step under compiled autograd got wrong gradients on its first call).
    # The eager product materialised the conjugate anyway, once per tile for ``Kf``.
    Kc = Kf.conj_physical() if need_u else None
    for b0, b1, k0, k1 in _frame_tiles(Bn, nb, out * n_fft, Uf.device):
        frames = _frames((b1 - b0, k1 - k0, out, n_fft), g, zero=True)
        _add_blocks(g[b0:b1], frames, k0, first, L, gather=True)
        gY = _irfft_adjoint(frames, n_fft)  # (b, k, out, F)
        if gU is not None:
            gU[b0:b1, k0:k1] = (gY * Kc).sum(2, keepdim=True)
        if gK is not None:
            gK += (gY * Uf[b0:b1, k0:k1].conj_physical()).sum((0, 1))
    return gU, gK


class _BlockSynthesis(torch.autograd.Function):
    """Add the inverse FFTs of block spectra to ``acc`` in place, a tile of frames at a time.

    ``acc[b, k L + t, o] += irfft(Y[b, k, o], n)[first + t]`` for ``0 <= t < L`` (cut at ``T``):
    the output stage of :meth:`~plmu.memory.LegendreMemory.project` with several channels, after the
    whole-batch channel contraction (:class:`_SpectralMix`). As in :class:`_BlockConvolution`,
    the inverse FFTs and, in backward, the zero-padded gradient frames and their FFTs run in
    tiles of about :data:`BLOCK_TILE_ELEMENTS` values instead of whole-batch ``(B, nb, out,
    n_fft)`` buffers (fresh pages each step). Linear in ``Y``, so nothing is saved.

    Shapes: ``acc`` ``(B, T, out)``; ``Y`` ``(B, nb, out, F)`` complex. Returns ``acc``.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx, acc: torch.Tensor, Y: torch.Tensor, n_fft: int, first: int, L: int
    ) -> torch.Tensor:
        ctx.mark_dirty(acc)
        ctx.geometry = (n_fft, first, L, Y.shape)
        return _synthesis_forward(acc, Y, n_fft, first, L)

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        n_fft, first, L, shape = ctx.geometry
        if not ctx.needs_input_grad[1]:
            return g, None, None, None, None
        if torch.is_grad_enabled():  # create_graph: the adjoint as differentiable operations
            gY = _irfft_adjoint(_gather_blocks(g, shape, n_fft, first, L), n_fft)
            return g, gY, None, None, None
        return g, _synthesis_backward(g, shape, n_fft, first, L), None, None, None


def _synthesis_forward(
    acc: torch.Tensor, Y: torch.Tensor, n_fft: int, first: int, L: int
) -> torch.Tensor:
    """:class:`_BlockSynthesis`'s forward: the inverse FFTs of ``Y`` added to ``acc`` in place,
    a tile of frames at a time. Returns ``acc``."""
    for b0, b1, k0, k1 in _frame_tiles(Y.shape[0], Y.shape[1], Y.shape[2] * n_fft, Y.device):
        _add_blocks(acc[b0:b1], _irfft_frames(Y[b0:b1, k0:k1], n_fft), k0, first, L)
    return acc


def _synthesis_backward(
    g: torch.Tensor, shape: Sequence[int], n_fft: int, first: int, L: int
) -> torch.Tensor:
    """:class:`_BlockSynthesis`'s first-order backward: the gradient of ``Y`` (of ``shape``
    ``(B, nb, out, F)``) for the gradient ``g`` ``(B, T, out)`` of the output, in tiles."""
    Bn, nb, out, _ = shape
    gY = g.new_empty(tuple(shape), dtype=torch.promote_types(g.dtype, torch.complex64))
    for b0, b1, k0, k1 in _frame_tiles(Bn, nb, out * n_fft, g.device):
        frames = _frames((b1 - b0, k1 - k0, out, n_fft), g, zero=True)
        _add_blocks(g[b0:b1], frames, k0, first, L, gather=True)
        _irfft_adjoint(frames, n_fft, out=gY[b0:b1, k0:k1])
    return gY


def _gather_blocks(
    g: torch.Tensor, shape: torch.Size, n_fft: int, first: int, L: int
) -> torch.Tensor:
    """The frames ``(B, nb, out, n_fft)`` whose entries ``[first, first + L)`` of block ``k``
    hold steps ``[k L, k L + L)`` of ``g`` ``(B, T, out)`` (zeros elsewhere): the adjoint of
    :func:`_add_blocks`, as differentiable operations."""
    Bn, nb, out, _ = shape
    T = g.shape[1]
    gt = F.pad(g.transpose(1, 2), (0, nb * L - T)).reshape(Bn, out, nb, L).transpose(1, 2)
    return F.pad(gt, (first, n_fft - first - L))


def _irfft_adjoint(
    frames: torch.Tensor, n_fft: int, out: torch.Tensor | None = None
) -> torch.Tensor:
    """The adjoint of ``irfft(., n=n_fft)`` over the last axis: ``rfft`` scaled by ``1/n`` at DC
    (and Nyquist for even ``n``), ``2/n`` elsewhere; written into ``out`` where given (no
    gradient is recorded then)."""
    Fq = n_fft // 2 + 1
    scale = frames.new_full((Fq,), 2.0 / n_fft)
    scale[0] = 1.0 / n_fft
    if n_fft % 2 == 0:
        scale[-1] = 1.0 / n_fft
    if out is None:
        return torch.fft.rfft(frames) * scale
    return torch.fft.rfft(frames, out=out).mul_(scale)


def _plain_blocks(
    acc: torch.Tensor, Uf: torch.Tensor, Kf: torch.Tensor, n_fft: int, first: int, L: int
) -> torch.Tensor:
    """What :class:`_BlockConvolution` computes, as whole-tensor operations (plain autograd):
    for export and ``torch.func`` transforms, and for its backward when that is differentiated
    again. Returns a new tensor, ``acc`` plus the blocks: not in place, since under ``vmap``
    the blocks can be batched (a batched weight or state) while ``acc`` is not."""
    y = torch.fft.irfft(_block_spectra(Uf, Kf), n=n_fft)  # (B, nb, out, n_fft)
    Bn, nb, out, _ = y.shape
    blocks = y[..., first : first + L].transpose(-1, -2).reshape(Bn, nb * L, out)
    return acc + blocks[:, : acc.shape[1]]


def _block_spectra(Uf: torch.Tensor, Kf: torch.Tensor) -> torch.Tensor:
    """``(B, nb, C, F)`` block spectra times the folded kernel: ``(B, nb, out, F)`` complex.

    ``Kf`` is ``(F, C, out)``, or ``(out, F)`` when ``C == 1`` (then a broadcast product)."""
    Bn, nb, C, Fq = Uf.shape
    if C == 1:
        return Uf * Kf
    return _spectral_mix(Uf.reshape(Bn * nb, C, Fq), Kf).view(Bn, nb, Kf.shape[-1], Fq)


def _frame_tiles(
    Bn: int, nb: int, per_frame: int, device: torch.device
) -> list[tuple[int, int, int, int]]:
    """Tiles ``(b0, b1, k0, k1)`` of the ``Bn x nb`` frames, about :data:`BLOCK_TILE_ELEMENTS`
    values (``per_frame`` each) a tile: whole rows of blocks while they fit, else part of one
    sequence's blocks. One tile on CUDA: its caching allocator reuses memory without page
    faults, and a launch per tile would cost more."""
    if device.type == "cuda":
        return [(0, Bn, 0, nb)]
    frames = max(1, BLOCK_TILE_ELEMENTS // per_frame)
    if frames >= nb:
        step = frames // nb
        return [(b, min(Bn, b + step), 0, nb) for b in range(0, Bn, step)]
    return [(b, b + 1, k, min(nb, k + frames)) for b in range(Bn) for k in range(0, nb, frames)]


def _row_stride(n: int, itemsize: int) -> int:
    """A row length of at least ``n`` values whose bytes span an odd number of 64-byte lines.

    :func:`_add_blocks` reads (or writes) a column of ``out`` frame rows for each step: at a
    power-of-two FFT length the rows lie a power of two of bytes apart, every one of them in
    the same cache set, and the transposing pass misses the cache on every value (4 ns a value
    against 1 here). Padded to an odd number of lines, the rows spread over all sets."""
    lines = -(-n * itemsize // 64)
    if lines % 2 == 0:
        lines += 1
    return max(n, lines * 64 // itemsize)


def _frames(shape: tuple[int, ...], like: torch.Tensor, zero: bool = False) -> torch.Tensor:
    """A ``shape`` tensor ``(..., n_fft)`` of ``like``'s dtype and device whose rows lie
    :func:`_row_stride` values apart on the CPU (a view into padded rows; contiguous on other
    devices, whose caches this is not about); zeros when ``zero``."""
    *lead, n = shape
    stride = _row_stride(n, like.element_size()) if like.device.type == "cpu" else n
    make = like.new_zeros if zero else like.new_empty
    return make((*lead, stride))[..., :n]


def _irfft_frames(X: torch.Tensor, n_fft: int) -> torch.Tensor:
    """``irfft(X, n=n_fft)`` over the last axis, written into :func:`_frames` rows."""
    y = _frames((*X.shape[:-1], n_fft), X.real if X.is_complex() else X)
    return torch.fft.irfft(X, n=n_fft, out=y)


def _add_blocks(
    acc: torch.Tensor, y: torch.Tensor, k0: int, first: int, L: int, gather: bool = False
) -> None:
    """Add blocks ``k0, k0 + 1, ...`` of ``y`` ``(B, g, out, n_fft)`` to ``acc`` ``(B, T, out)``
    in place: block ``k`` gives steps ``[k L, k L + L)`` (cut at ``T``) from its entries
    ``[first, first + L)``. With ``gather`` the other way: those steps of ``acc`` are added to
    those entries of ``y``. One transposing pass, no intermediate copy."""
    Bn, T, out = acc.shape
    start = k0 * L
    g = min(y.shape[1], -(-(T - start) // L))
    full = min(g, (T - start) // L)  # blocks that fit whole
    pairs = []
    if start == 0 and T <= L:  # one block: acc itself, not a view (autograd copies less)
        pairs.append((acc, y[:, 0, :, first : first + T].mT))
    elif full:
        pairs.append(
            (
                acc[:, start : start + full * L].view(Bn, full, L, out),
                y[:, :full, :, first : first + L].transpose(-1, -2),
            )
        )
    if full < g:
        rest = T - start - full * L
        pairs.append((acc[:, start + full * L :], y[:, full, :, first : first + rest].mT))
    for a, b in pairs:
        if gather:
            b.add_(a)
        else:
            a.add_(b)


def _plain_mix(U: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """:class:`_SpectralMix` as one ``einsum`` (plain autograd)."""
    return torch.einsum("bcf,fco->bof", U, K)


def _tiles(U: torch.Tensor, K: torch.Tensor) -> list[tuple[int, int]]:
    """Frequency ranges ``[f0, f1)`` for ``U`` ``(B, C, F)`` and ``K`` ``(F, C, out)``."""
    n = U.shape[2]
    if U.device.type == "cuda":
        return [(0, n)]
    tile = max(MIX_TILE, MIX_TILE_VALUES // (U.shape[0] * (U.shape[1] + K.shape[2])))
    return [(f0, min(n, f0 + tile)) for f0 in range(0, n, tile)]


def _spectral_mix(U: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """:class:`_SpectralMix` (one ``einsum`` where :func:`~plmu.tracing.plain_autograd` says so)."""
    if plain_autograd(U, K):
        return _plain_mix(U, K)
    return _SpectralMix.apply(U, K)


def fft_size(n: int) -> int:
    """Smallest ``2^a 3^b 5^c >= n`` with ``a >= min(5, log2 n)``: an FFT length that is fast.

    pocketfft (CPU) runs a real FFT whose length has a small power-of-two factor up to about
    twice as slow per element (``11250 = 2 * 3^2 * 5^4`` against ``11520 = 2^8 * 3^2 * 5``,
    ``12500`` against ``12800``), so the factor of two is kept at least ``2^5`` (measured:
    ``scripts/fft_lengths.py``, docs/performance.md).
    """
    if torch.compiler.is_compiling() and n <= _FAST_LENGTHS[-1]:  # n may be a dynamic size
        return _fft_size_by_comparisons(n)
    n = int(n)  # under torch.jit.trace a size is a 0-dim tensor
    if n <= 1:
        return 1
    min_two = 1 << min(FFT_MIN_TWO_POWER, n.bit_length() - 1)
    best = 1 << (n - 1).bit_length()
    p5 = min_two
    while p5 < best:
        p35 = p5
        while p35 < best:
            p = p35
            while p < n:
                p *= 2
            best = min(best, p)
            p35 *= 3
        p5 *= 5
    return best


def _fast_lengths(limit: int = 1 << 31) -> tuple[int, ...]:
    """Every length :func:`fft_size` returns, up to ``limit``, ascending: ``1`` and the
    ``r = 2^a 3^b 5^c`` with ``a >= min(FFT_MIN_TWO_POWER, log2 r)`` (``fft_size(r) == r``)."""
    sizes = {1}
    p5 = 1
    while p5 <= limit:
        p35 = p5
        while p35 <= limit:
            r = p35
            while r <= limit:
                a = (r & -r).bit_length() - 1
                if a >= min(FFT_MIN_TWO_POWER, r.bit_length() - 1):
                    sizes.add(r)
                r *= 2
            p35 *= 3
        p5 *= 5
    return tuple(sorted(sizes))


_FAST_LENGTHS = _fast_lengths()


def _fft_size_by_comparisons(n: int) -> int:
    """:func:`fft_size` under ``torch.compile``, by bisection over :data:`_FAST_LENGTHS` with
    comparisons only: for a dynamic size ``n`` the graph is then guarded on the range of sizes
    that give this length (all of them share the graph), not on ``n`` itself (``int(n)`` and
    ``n.bit_length()`` recompiled the graph for every new size)."""
    lo, hi = 0, len(_FAST_LENGTHS) - 1
    while lo < hi:  # the first length >= n
        mid = (lo + hi) // 2
        if n <= _FAST_LENGTHS[mid]:
            hi = mid
        else:
            lo = mid + 1
    return _FAST_LENGTHS[lo]

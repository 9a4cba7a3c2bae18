"""Backpropagation through time for the original LMU (:class:`plmu.LMU`), written by hand.

:class:`plmu.LMU` runs its recurrence as one :class:`_LMUSequence` wherever it applies (see
``LMUCell._fast_sequence``): the forward loop runs without autograd into preallocated buffers,
the backward loop computes only the state gradients, and every weight gradient is then one
product over all steps instead of one small product per step. Elsewhere :class:`plmu.LMU` runs
the step-by-step autograd loop of :meth:`plmu.LMUCell._step`, the reference these functions are
tested against (``tests/test_lmu_fast.py``).
"""

from __future__ import annotations

import torch
from torch import nn

from plmu.activations import _INPLACE_ACTIVATIONS
from plmu.higher_order import create_graph_backward
from plmu.workspace import Workspace

# the activations whose derivative the fast sequence path (_LMUSequence) takes from the output
# (_activation_grad): those its forward applies in place
_FAST_ACTIVATIONS = tuple(_INPLACE_ACTIVATIONS)


def _activation_grad(
    gh: torch.Tensor, h: torch.Tensor, kind: type, work: torch.Tensor, out: torch.Tensor
) -> None:
    """``out = gh * f'(pre)``, from the output ``h = f(pre)`` (``work``: a buffer like ``h``):
    ``1 - h^2`` for tanh, ``h (1 - h)`` for sigmoid, ``[h > 0]`` for ReLU, 1 for identity."""
    if kind is nn.Tanh:  # gh - gh h^2
        torch.mul(h, h, out=work)
        torch.addcmul(gh, gh, work, value=-1.0, out=out)
    elif kind is nn.Sigmoid:  # gh (h - h^2)
        torch.mul(h, h, out=work)
        torch.sub(h, work, out=work)
        torch.mul(gh, work, out=out)
    elif kind is nn.ReLU:
        torch.mul(gh, h > 0, out=out)
    else:
        out.copy_(gh)


class _LMUSequence(torch.autograd.Function):
    """The original LMU over a whole sequence, time-major, with a hand-written backward (BPTT).

    The same recurrence as :meth:`LMUCell._step`, for ``t = 1..T``::

        u_t = a_t + e_h h_{t-1} + e_m m_{t-1}        (a_t = e_x x_t, precomputed)
        m_t = Abar m_{t-1} + Bbar u_t                (per memory channel)
        h_t = f(W_m m_t + W_h h_{t-1} + c_t)         (c_t = W_x x_t + b, precomputed)

    Forward runs without autograd and writes each step into preallocated ``(T + 1, B, .)``
    buffers. Backward runs the loop in reverse for the state gradients only
    (``delta_t = gh_t f'(pre_t)``, ``gm_t``, ``gu_t``, kept for every step); every weight
    gradient is then one GEMM over all ``T * B`` rows (``gW_m = Delta^T M``, ...) instead of
    one small product per step. The gradients of ``a`` (``GU``) and ``c`` (``Delta``) go back
    through autograd to ``e_x``, ``W_x``, ``b`` and ``x``. With ``keep`` ``(T, B, 1)`` (1 while
    ``t`` is within a sequence's length, else 0) a finished sequence's state is held. The
    sequence-long buffers come from ``workspace`` (:class:`~plmu.workspace.Workspace`, or None),
    so that consecutive steps reuse their memory.

    Shapes: ``a`` ``(T, B, C)``, ``c`` ``(T, B, H)`` or None, ``h0`` ``(B, H)``, ``m0``
    ``(B, C d)``, ``e_h`` ``(C, H)``, ``e_m`` ``(C, C d)``, ``W_h`` ``(H, H)``, ``W_m``
    ``(H, C d)`` (``e_h``, ``e_m``, ``W_h`` may be None), ``Abar`` ``(d, d)``, ``Bbar``
    ``(d, 1)``; returns ``h`` for every step ``(T, B, H)`` (or the last one ``(B, H)`` when
    ``sequences`` is False) and the last ``m`` ``(B, C d)``.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx,
        a: torch.Tensor,
        c: torch.Tensor | None,
        h0: torch.Tensor,
        m0: torch.Tensor,
        e_h: torch.Tensor | None,
        e_m: torch.Tensor | None,
        W_h: torch.Tensor | None,
        W_m: torch.Tensor,
        Abar: torch.Tensor,
        Bbar: torch.Tensor,
        keep: torch.Tensor | None,
        kind: type,
        sequences: bool,
        workspace: Workspace | None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        Hb, Mb, U = _lmu_sequence_forward(
            a, c, h0, m0, e_h, e_m, W_h, W_m, Abar, Bbar, keep, kind, workspace=workspace
        )
        ctx.save_for_backward(a, c, h0, m0, e_h, e_m, W_h, W_m, Abar, Bbar, keep, Hb, Mb, U)
        ctx.kind, ctx.sequences, ctx.workspace = kind, sequences, workspace
        # (the last state copied: a view would keep the whole sequence's buffer alive)
        return (Hb[1:] if sequences else Hb[-1].clone()), Mb[-1].clone()

    @staticmethod
    def backward(ctx, gy: torch.Tensor | None, gm: torch.Tensor | None) -> tuple:  # type: ignore[override]
        a, c, h0, m0, e_h, e_m, W_h, W_m, Abar, Bbar, keep, Hb, Mb, U = ctx.saved_tensors
        kind, sequences = ctx.kind, ctx.sequences
        needs = ctx.needs_input_grad
        if torch.is_grad_enabled():  # create_graph: a gradient to differentiate again

            def plain(*inputs: object) -> tuple[torch.Tensor, torch.Tensor]:
                return _lmu_sequence_plain(*inputs, kind=kind, sequences=sequences)

            inputs = (a, c, h0, m0, e_h, e_m, W_h, W_m, Abar, Bbar, keep)
            grads = create_graph_backward(plain, inputs, needs[:11], (gy, gm))
            return (*grads, None, None, None)
        grads = _lmu_sequence_backward(
            gy,
            gm,
            Hb,
            Mb,
            U,
            e_h,
            e_m,
            W_h,
            W_m,
            Abar,
            Bbar,
            keep,
            kind,
            sequences,
            needs,
            ctx.workspace,
        )
        return (*grads, None, None, None, None)


def _empty_from(workspace: Workspace | None):
    """``empty(shape, like)``: from ``workspace``, or ``like.new_empty`` without one."""
    if workspace is None:
        return lambda shape, like: like.new_empty(shape)
    return workspace.empty


def _lmu_sequence_forward(
    a: torch.Tensor,
    c: torch.Tensor | None,
    h0: torch.Tensor,
    m0: torch.Tensor,
    e_h: torch.Tensor | None,
    e_m: torch.Tensor | None,
    W_h: torch.Tensor | None,
    W_m: torch.Tensor,
    Abar: torch.Tensor,
    Bbar: torch.Tensor,
    keep: torch.Tensor | None,
    kind: type,
    every_h: bool = True,
    every_m: bool = True,
    workspace: Workspace | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:class:`_LMUSequence`'s forward: ``(H, M, U)``, ``(T + 1, B, H)`` and ``(T + 1, B, C d)``
    with the initial state first, and ``u`` ``(T, B, C)``; every step written in place.

    Without ``every_h`` (``every_m``) ``H`` (``M``) has two rows, used in turn (step ``t`` in row
    ``t % 2``): inference keeps no more of the sequence than it returns. ``H`` and ``M`` come
    from ``workspace`` where one is given."""
    T, Bn, C = a.shape
    d = Abar.shape[0]
    empty = _empty_from(workspace)
    Hb = empty((T + 1 if every_h else 2, *h0.shape), h0)
    Mb = empty((T + 1 if every_m else 2, *m0.shape), m0)
    Hb[0], Mb[0] = h0, m0
    c_in_h = c is not None and every_h
    if c_in_h:  # (one copy: a per-step addmm(c[t], ...) would copy each step apart)
        Hb[1:] = c
    U = a.clone(memory_format=torch.contiguous_format)
    At, Bt = Abar.T, Bbar.view(1, d)
    Wm_t = W_m.T
    eh_t = None if e_h is None else e_h.T
    em_t = None if e_m is None else e_m.T
    Wh_t = None if W_h is None else W_h.T
    act = _INPLACE_ACTIVATIONS[kind]
    for t in range(T):
        h, h_new = (Hb[t], Hb[t + 1]) if every_h else (Hb[t & 1], Hb[(t + 1) & 1])
        m, m_new = (Mb[t], Mb[t + 1]) if every_m else (Mb[t & 1], Mb[(t + 1) & 1])
        u = U[t]
        if eh_t is not None:
            u.addmm_(h, eh_t)
        if em_t is not None:
            u.addmm_(m, em_t)
        mc = m_new.view(Bn * C, d)
        torch.mm(m.view(Bn * C, d), At, out=mc)
        mc.addmm_(u.view(Bn * C, 1), Bt)
        if c_in_h:  # (c is already there)
            h_new.addmm_(m_new, Wm_t)
        elif c is not None:
            torch.addmm(c[t], m_new, Wm_t, out=h_new)
        else:
            torch.mm(m_new, Wm_t, out=h_new)
        if Wh_t is not None:
            h_new.addmm_(h, Wh_t)
        if act is not None:
            act(h_new)
        if keep is not None:
            k = keep[t]
            torch.where(k, h_new, h, out=h_new)
            torch.where(k, m_new, m, out=m_new)
    return Hb, Mb, U


def _lmu_sequence_backward(
    gy: torch.Tensor | None,
    gm: torch.Tensor | None,
    Hb: torch.Tensor,
    Mb: torch.Tensor,
    U: torch.Tensor,
    e_h: torch.Tensor | None,
    e_m: torch.Tensor | None,
    W_h: torch.Tensor | None,
    W_m: torch.Tensor,
    Abar: torch.Tensor,
    Bbar: torch.Tensor,
    keep: torch.Tensor | None,
    kind: type,
    sequences: bool,
    needs: tuple[bool, ...],
    workspace: Workspace | None = None,
) -> tuple[torch.Tensor | None, ...]:
    """:class:`_LMUSequence`'s first-order backward: the gradients of ``a``, ``c``, ``h0``,
    ``m0``, ``e_h``, ``e_m``, ``W_h``, ``W_m``, ``Abar``, ``Bbar`` (None where not needed).

    The reverse loop computes the state gradients only; the weight gradients are one GEMM each
    over all ``T * B`` rows afterwards. The gradient of ``m`` is carried back only where
    something needs it (``m`` reaches ``h`` only through ``e_h``): without it, without ``W_h``
    and a held state, and with only the last ``h`` returned, ``delta`` is zero before the last
    step, and only that step is computed (the lean cell of ``plmu bench``). The sequence-long
    buffers come from ``workspace`` where one is given."""
    T, Bn, C = U.shape
    H, S, d = Hb.shape[2], Mb.shape[2], Abar.shape[0]
    need_theta = needs[8] or needs[9]
    m_chain = e_h is not None or any(needs[i] for i in (0, 3, 5, 8, 9))
    h_chain = e_h is not None or W_h is not None or keep is not None
    t0 = 0 if m_chain or h_chain or sequences else T - 1  # the first step with a gradient
    empty = _empty_from(workspace)
    Delta = empty((T, Bn, H), Hb)
    if t0 and needs[1]:
        Delta[:t0].zero_()
    GU = empty((T, Bn, C), U) if m_chain else None
    GM = empty((T, Bn, S), Mb) if need_theta else None
    gm_t = Mb.new_empty((Bn, S)) if m_chain and not need_theta else None
    if gy is not None and not sequences:
        gh = gy.clone(memory_format=torch.contiguous_format)
    else:
        gh = Hb.new_zeros((Bn, H))
    gm_c = None
    if m_chain and gm is None:
        gm_c = Mb.new_zeros((Bn, S))
    elif m_chain:
        gm_c = gm.clone(memory_format=torch.contiguous_format)
    work = Hb.new_empty((Bn, H))
    keepf = None if keep is None else keep.to(Hb.dtype)
    for t in range(T - 1, t0 - 1, -1):
        if sequences and gy is not None:
            gh.add_(gy[t])
        delta = Delta[t]
        _activation_grad(gh, Hb[t + 1], kind, work, delta)
        if keepf is not None:
            k = keepf[t]
            delta.mul_(k)
        if m_chain:
            g_m = gm_t if GM is None else GM[t]  # the whole gradient of m_t
            if keepf is None:
                torch.addmm(gm_c, delta, W_m, out=g_m)
            else:
                torch.mul(gm_c, k, out=g_m)
                g_m.addmm_(delta, W_m)
            gu = GU[t]
            g_mc = g_m.view(Bn * C, d)
            torch.mm(g_mc, Bbar, out=gu.view(Bn * C, 1))
            # the carried gradient of m_{t-1} (a held state passes its own on)
            if keepf is None:
                torch.mm(g_mc, Abar, out=gm_c.view(Bn * C, d))
            else:
                gm_c.mul_(1.0 - k)
                gm_c.view(Bn * C, d).addmm_(g_mc, Abar)
            if e_m is not None:
                gm_c.addmm_(gu, e_m)
        # the carried gradient of h_{t-1}
        if keepf is not None:
            gh.mul_(1.0 - k)
            if W_h is not None:
                gh.addmm_(delta, W_h)
        elif W_h is not None:
            torch.mm(delta, W_h, out=gh)
        else:
            gh.zero_()
        if e_h is not None:
            gh.addmm_(gu, e_h)
    n = (T - t0) * Bn  # the rows with a gradient
    D2 = Delta[t0:].view(n, H)
    H_prev, M_prev = Hb[t0:-1].reshape(n, H), Mb[t0:-1].reshape(n, S)
    GU2 = None if GU is None else GU.view(n, C)
    g_Abar = g_Bbar = None
    if need_theta:
        GM3 = GM.view(n * C, d)
        g_Abar = GM3.T @ M_prev.view(n * C, d) if needs[8] else None
        g_Bbar = GM3.T @ U.view(n * C, 1) if needs[9] else None
    return (
        GU if needs[0] else None,
        Delta if needs[1] else None,
        gh if needs[2] and h_chain else None,  # (h_0 reaches the outputs only so)
        gm_c if needs[3] else None,
        GU2.T @ H_prev if needs[4] else None,
        GU2.T @ M_prev if needs[5] else None,
        D2.T @ H_prev if needs[6] else None,
        D2.T @ Mb[t0 + 1 :].reshape(n, S) if needs[7] else None,
        g_Abar,
        g_Bbar,
    )


def _lmu_sequence_plain(
    a: torch.Tensor,
    c: torch.Tensor | None,
    h: torch.Tensor,
    m: torch.Tensor,
    e_h: torch.Tensor | None,
    e_m: torch.Tensor | None,
    W_h: torch.Tensor | None,
    W_m: torch.Tensor,
    Abar: torch.Tensor,
    Bbar: torch.Tensor,
    keep: torch.Tensor | None,
    *,
    kind: type,
    sequences: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:class:`_LMUSequence` as plain differentiable operations (for ``create_graph``)."""
    T, Bn, C = a.shape
    d = Abar.shape[0]
    f = kind()  # the activation module: identity, ReLU, tanh or sigmoid
    outputs = []
    for t in range(T):
        u = a[t]
        if e_h is not None:
            u = u + h @ e_h.T
        if e_m is not None:
            u = u + m @ e_m.T
        m_new = (m.view(Bn, C, d) @ Abar.T + u.unsqueeze(-1) * Bbar.view(1, 1, d)).reshape(Bn, -1)
        pre = m_new @ W_m.T
        if W_h is not None:
            pre = pre + h @ W_h.T
        if c is not None:
            pre = pre + c[t]
        h_new = f(pre)
        if keep is not None:
            h_new, m_new = torch.where(keep[t], h_new, h), torch.where(keep[t], m_new, m)
        h, m = h_new, m_new
        outputs.append(h)
    return (torch.stack(outputs) if sequences else h), m

"""LMU layers: the parallel LMU (Chilkuri & Eliasmith 2021) and the original LMU (Voelker 2019).

``ParallelLMU`` keeps only the linear memory recurrent::

    u_t = f_u(U_x x_t + b_u)                  (memory_size channels)
    m_t = Abar m_{t-1} + Bbar u_t             (LegendreMemory)
    o_t = f_o(W_m m_t + W_x x_t + b)          (the W_x x_t term optional)

so a whole sequence runs in parallel (``forward``) and the same weights run as an RNN
(``step``). ``LMUCell``/``LMU`` are the original, sequential cell with its nonlinear recurrent
connections, kept as the baseline.

All tensors are batch-first ``(batch, time, features)``, like ``torch.nn.LSTM(batch_first=True)``.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from plmu.activations import (
    _INPLACE_ACTIVATIONS,
    ACTIVATIONS,
    _activation,
    _activation_name,
    _ReLUSavingOutput,
)
from plmu.bptt import (
    _FAST_ACTIVATIONS,
    _lmu_sequence_forward,
    _LMUSequence,
)
from plmu.checks import (
    _zeros,
    check_input_dtype,
    check_lengths,
    check_sequence,
    check_state,
    check_step_input,
    input_dtype_error,
)
from plmu.higher_order import create_graph_backward
from plmu.legendre import _check_positive_int, _check_size
from plmu.memory import AUTO_FUSED_MIN_TIME, MODES, LegendreMemory
from plmu.padding import gather_time
from plmu.precision import _LOW_PRECISION, autocast_enabled
from plmu.saved_config import _SavedConfig
from plmu.tracing import _compiling_not_exporting, _plain, _untransformed, plain_autograd
from plmu.workspace import workspace_of

__all__ = ["ACTIVATIONS", "LMU", "LMUCell", "ParallelLMU"]

LAYER_MODES = (*MODES, "fused")

# LMUCell's initialisations (its ``init``)
LMU_INITS = ("default", "psmnist")
# ParallelLMU.forward at inference runs chunks up to this long as a loop of the folded step map.
# `python scripts/short_chunks.py --batch B --lengths 1 2 4 6 8` (us per call, the sequence path
# vs the loop; hidden 212, order 256): batch 1: T=1 177 vs 81, T=2 262 vs 83, T=4 246 vs 151,
# T=8 385 vs 296; batch 32: T=2 509 vs 334, T=4 769 vs 639, T=8 1273 vs 1277; batch 100
# (--lengths 2 4 6): T=4 1641 vs 1594, T=6 2930 vs 2111. The loop still wins at 6 steps; 4 keeps
# a margin for other batch sizes and hosts.
STEP_LOOP_MAX_TIME = 4


def _weight(module: nn.Module, name: str) -> torch.Tensor:
    """``getattr(module, name)`` for a parameter, by a dict lookup where it is a plain one
    (about 0.1 us; the attribute costs about 1 us, much of a batch-1 step's budget), else the
    attribute (a parametrization such as ``weight_norm`` computes it)."""
    weight = module._parameters.get(name)
    return getattr(module, name) if weight is None else weight


def _affine(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` for ``x`` ``(batch, time, in)`` as a tensor of its own.

    ``F.linear`` returns a view of a 2-D product; adding to a view in place makes autograd copy
    the whole gradient (``CopySlices``). The fused forward adds ``W_m m`` into this result.
    """
    if bias is None:
        return torch.matmul(x, weight.T)  # an unsafe view: no view tracking
    return torch.baddbmm(bias, x, weight.T.expand(x.shape[0], -1, -1))


def _data_product(x: torch.Tensor, Hrev: torch.Tensor) -> torch.Tensor:
    """``x @ Hrev`` (eq. 25 on the raw inputs), in float32 even under autocast, like the memory."""
    if autocast_enabled(x.device.type):
        with torch.autocast(x.device.type, enabled=False):
            return x.float() @ Hrev.float()
    return x @ Hrev


class _ScalarLastOutput(torch.autograd.Function):
    """Training form of :meth:`ParallelLMU._last_output_scalar`: three GEMMs and nothing else.

    With ``xH = sum_t H[n-1-t] x_t`` (data, no gradient), ``u = e x + b_u``::

        m   = e xH + b_u h_sum                         h_sum = sum_k H[k]
        pre = e (xH W_m^T) + b_u (W_m h_sum) + W_x x_n + b

    Backward needs no gradient of ``m`` through ``W_m``: the weight gradient is one product
    ``grad_pre^T [m, x_n]`` (the whole ``[W_m, W_x]`` at once), and ``e``/``b_u`` get theirs from
    the saved ``xH W_m^T`` and ``W_m h_sum``. Autograd of the plain expression adds
    concatenations, slices and zero-filled gradients around the same three GEMMs.

    Shapes: ``xH`` ``(B, d)``, ``h_sum`` ``(d,)`` or ``None``, ``e`` ``(1, 1)``, ``b_u`` ``(1,)`` or
    ``None``, ``weight`` ``(hidden, d + n_x)``, ``x_last`` ``(B, n_x)`` or ``None`` (then
    ``n_x = 0``), ``bias`` ``(hidden,)`` or ``None``. Returns ``pre`` ``(B, hidden)`` and ``m``
    ``(B, d)``.
    """

    @staticmethod
    def applies(xH, x, weight, e, b_u, bias) -> bool:
        """Whether to use it: recording a gradient, but not for the data, and not when traced."""
        params = [t for t in (weight, e, b_u, bias) if t is not None]
        return (
            torch.is_grad_enabled()
            and not autocast_enabled(xH.device.type)  # mixed precision: autograd's plain path
            and not xH.requires_grad
            and not x.requires_grad
            and any(t.requires_grad for t in params)
            and not plain_autograd(xH, x, *params)
        )

    @staticmethod
    def compute(xH, h_sum, e, b_u, weight, x_last, bias):
        """The forward as plain operations: ``(pre, m, P, c, Z)`` (``P``, ``c``, ``Z`` for
        backward)."""
        d = xH.shape[1]
        W_m = weight[:, :d]
        ev = e.reshape(())
        P = xH @ W_m.T  # (B, hidden)
        pre = P * ev
        m = xH * ev
        c = None
        if b_u is not None:
            c = W_m @ h_sum  # (hidden,)
            pre = pre + b_u * c
            m = m + b_u * h_sum
        if x_last is not None:
            pre = pre.addmm(x_last, weight[:, d:].T)
            Z = torch.cat([m, x_last], dim=1)  # (B, d + n_x): the input of the whole weight
        else:
            Z = m
        if bias is not None:
            pre = pre + bias
        return pre, m, P, c, Z

    @staticmethod
    def forward(ctx, xH, h_sum, e, b_u, weight, x_last, bias):  # type: ignore[override]
        pre, m, P, c, Z = _ScalarLastOutput.compute(xH, h_sum, e, b_u, weight, x_last, bias)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(xH, h_sum, P, c, Z, e, b_u, weight, x_last, bias)
        return pre, m

    @staticmethod
    def backward(ctx, grad_pre, grad_m):  # type: ignore[override]
        xH, h_sum, P, c, Z, *params = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph: a gradient to differentiate again
            return create_graph_backward(
                lambda *a: _ScalarLastOutput.compute(*a)[:2],
                (xH, h_sum, *params),
                ctx.needs_input_grad,
                (grad_pre, grad_m),
            )
        need = ctx.needs_input_grad
        g_e = g_bu = g_w = g_b = None
        g_sum = None if grad_pre is None else grad_pre.sum(0)  # (hidden,)
        if need[2]:
            g_e = xH.new_zeros(())
            if grad_pre is not None:
                g_e = g_e + torch.vdot(grad_pre.reshape(-1), P.reshape(-1))
            if grad_m is not None:
                g_e = g_e + torch.vdot(grad_m.reshape(-1), xH.reshape(-1))
            g_e = g_e.view(1, 1)
        if need[3]:
            g_bu = xH.new_zeros(())
            if grad_pre is not None:
                g_bu = g_bu + torch.vdot(g_sum, c)
            if grad_m is not None:
                g_bu = g_bu + torch.vdot(grad_m.sum(0), h_sum)
            g_bu = g_bu.view(1)
        if grad_pre is not None:
            if need[4]:
                g_w = grad_pre.T @ Z  # (hidden, d + n_x)
            if need[6]:
                g_b = g_sum
        return None, None, g_e, g_bu, g_w, None, g_b


class ParallelLMU(_SavedConfig, nn.Module):
    r"""The parallel-trainable LMU layer (Chilkuri & Eliasmith 2021, PAPER.md section 3).

    Args:
        input_size: features of ``x``.
        hidden_size: features of the output ``o``.
        order: Legendre order ``d`` of each memory channel.
        theta: memory window in time steps.
        memory_size: number of memory channels ``u`` (each with its own order-``d`` memory).
        return_sequences: return ``o`` for every step ``(batch, time, hidden)``, or only for the
            last step ``(batch, hidden)``; the latter uses the last-state product (eq. 25) and
            never builds the memory sequence.
        input_to_output: feed ``x_t`` to the output layer beside ``m_t`` (the paper's default).
        hidden_activation: ``f_o`` (``"relu"`` default; ``"identity"``, ``"tanh"``, ``"gelu"``...).
        memory_activation: ``f_u`` (``"identity"`` default).
        dropout: dropout on the output ``o_t``.
        bias: biases ``b_u`` and ``b``.
        discretizer, trainable_theta: passed to :class:`~plmu.LegendreMemory`.
        mode: how full sequences run: ``"auto"`` (default), ``"fused"`` (the output map folded
            into the memory's impulse response, the memory sequence never built), or one of the
            memory's strategies ``"fft"``, ``"direct"``, ``"chunked"``, ``"recurrent"``.

    Shapes:
        - ``x``: ``(batch, time, input_size)``; ``x_t`` for :meth:`step`: ``(batch, input_size)``
        - ``state``: ``(batch, memory_size * order)``, the memory; ``None`` means zeros
        - ``lengths``: ``(batch,)`` valid lengths of right-padded sequences, or ``None``
        - output: ``(batch, time, hidden_size)``, or ``(batch, hidden_size)`` when
          ``return_sequences=False``

    Example:
        >>> layer = ParallelLMU(input_size=3, hidden_size=16, order=8, theta=20.0)
        >>> y, state = layer(torch.randn(2, 50, 3))
        >>> y.shape, state.shape
        (torch.Size([2, 50, 16]), torch.Size([2, 8]))
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        order: int,
        theta: float,
        memory_size: int = 1,
        return_sequences: bool = True,
        input_to_output: bool = True,
        hidden_activation: str | None = "relu",
        memory_activation: str | None = "identity",
        dropout: float = 0.0,
        bias: bool = True,
        discretizer: str = "zoh",
        trainable_theta: bool = False,
        mode: str = "auto",
    ) -> None:
        super().__init__()
        self.input_size = _check_positive_int(input_size, "input_size")
        self.hidden_size = _check_positive_int(hidden_size, "hidden_size")
        _check_positive_int(memory_size, "memory_size")
        if mode not in LAYER_MODES:
            raise ValueError(f"mode must be one of {LAYER_MODES}, got {mode!r}")
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout}")
        self.return_sequences = bool(return_sequences)
        self.input_to_output = bool(input_to_output)
        self.mode = mode
        self.encoder = nn.Linear(self.input_size, memory_size, bias=bias)  # U_x, b_u
        self.memory = LegendreMemory(
            memory_size,
            order,
            theta,
            discretizer=discretizer,
            trainable_theta=trainable_theta,
            mode="auto" if mode == "fused" else mode,
        )
        in_features = self.memory.state_size + (self.input_size if self.input_to_output else 0)
        self.output = nn.Linear(in_features, self.hidden_size, bias=bias)  # [W_m, W_x], b
        self.memory_activation = _activation(memory_activation, "memory_activation")
        self.hidden_activation = _activation(hidden_activation, "hidden_activation")
        self.dropout = nn.Dropout(float(dropout))
        # step() at inference folds the whole cell into one affine map (see _folded_step)
        self._linear_encoder = isinstance(self.memory_activation, nn.Identity)
        self._foldable = memory_size == 1 and self._linear_encoder
        self._step_cache: tuple | None = None

    def __getstate__(self) -> dict:
        # step()'s folded map is not part of a copy or a pickle (see LegendreMemory.__getstate__)
        state = super().__getstate__()
        state.pop("_step_cache", None)
        return state

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self._step_cache = None

    @property
    def order(self) -> int:
        return self.memory.order

    @property
    def memory_size(self) -> int:
        return self.memory.memory_size

    @property
    def state_size(self) -> int:
        """Size of the flat state, ``memory_size * order``."""
        return self.memory.state_size

    def default_state(
        self,
        batch_size: int,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        """The zero state that ``state=None`` stands for: ``(batch_size, state_size)``, in
        ``dtype`` and on ``device`` (default: those of the layer's weights)."""
        w = self.output.weight
        return _zeros(batch_size, self.state_size, dtype or w.dtype, device or w.device)

    def reset_parameters(self) -> None:
        self.encoder.reset_parameters()
        self.output.reset_parameters()
        self.memory.reset_parameters()

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.memory_activation(self.encoder(x))

    def _readout(self, m: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        z = torch.cat([m, x], dim=-1) if self.input_to_output else m
        return self.dropout(self._activate(self.output(z)))

    def _activate(self, pre: torch.Tensor) -> torch.Tensor:
        """``f_o(pre)``; under ``torch.compile`` (not export) on the CPU a ReLU whose backward
        reads its output, not a bool mask (:class:`~plmu.activations._ReLUSavingOutput`)."""
        act = self.hidden_activation
        if (
            torch.compiler.is_compiling()
            and type(act) is nn.ReLU
            and pre.is_cpu
            and _compiling_not_exporting()
        ):
            return _ReLUSavingOutput.apply(pre)
        return act(pre)

    def _last_output_scalar(
        self, x: torch.Tensor, state: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Last output and state for one input feeding one channel (psMNIST's pixel stream).

        With the scalar encoder ``u = e x + b_u`` (identity ``f_u``), eq. 25 and the readout
        commute: ``W_m m_n = e (W_m xH) + b_u W_m sum_k H[k]`` with ``xH = sum_t H[n-1-t] x_t``.
        Forming ``W_m xH`` directly means backward needs no gradient of ``m`` (the readout's
        input-gradient product, as large as its weight-gradient product, disappears).

        Args:
            x: ``(batch, time, 1)``; state: ``(batch, order)`` or ``None``.

        Returns:
            ``(o_n, m_n)``: ``(batch, hidden_size)`` and ``(batch, order)``.
        """
        Bn, T, _ = x.shape
        mem, S = self.memory, self.state_size
        W_in = mem.last_window(T, x.dtype)  # earlier inputs are below working precision
        Hrev = mem._kernel_reversed(W_in, x.dtype)  # (W_in, d)
        xH = _data_product(x.reshape(Bn, T)[:, T - W_in :], Hrev)  # (B, d): data, no gradient
        W = self.output.weight
        e = self.encoder.weight
        b_u = self.encoder.bias
        h_sum = None if b_u is None else mem._kernel_sum(T, x.dtype)[0]  # (d,): sum_k H[k]
        x_last = x[:, -1] if self.input_to_output else None
        if state is None and _ScalarLastOutput.applies(xH, x, W, e, b_u, self.output.bias):
            pre, m = _ScalarLastOutput.apply(xH, h_sum, e, b_u, W, x_last, self.output.bias)
            return self.dropout(self._activate(pre)), m
        # one split (its backward writes W's gradient once; two slices would each zero-fill it)
        W_m, W_x = W.split([S, W.shape[1] - S], dim=1)
        e = e.view(())
        if b_u is None:
            pre = e * (xH @ W_m.T)  # (B, hidden)
            m = e * xH
        else:  # the bias row rides along in the same product: W_m [xH; sum_k H[k]]^T
            P = torch.cat([xH, h_sum.view(1, -1)]) @ W_m.T  # (B + 1, hidden)
            pre = e * P[:Bn] + b_u * P[Bn]
            m = e * xH + b_u * h_sum
        if state is not None:
            free = mem._power_apply(state.to(x.dtype), T)
            m = m + free
            pre = pre + free @ W_m.T
        if x_last is not None:
            pre = pre + x_last @ W_x.T
        if self.output.bias is not None:
            pre = pre + self.output.bias
        return self.dropout(self._activate(pre)), m

    def _last_state_folded(self, x: torch.Tensor, state: torch.Tensor | None) -> torch.Tensor:
        """Eq. 25 with the linear encoder applied after the product (``f_u`` identity).

        ``m_n = sum_t H[n-1-t] (U_x x_t + b_u) = U_x (sum_t H[n-1-t] x_t) + b_u sum_k H[k]``: the
        ``(B * input, T) @ (T, d)`` product then involves only the data, so backward never forms
        the ``(B, T, memory_size)`` gradient of ``u`` (a second product as large as the first).
        Used when ``input_size <= memory_size`` (e.g. psMNIST's single pixel input).

        Args:
            x: ``(batch, time, input_size)``; state: ``(batch, state_size)`` or ``None``.

        Returns:
            ``(batch, memory_size * order)``.
        """
        Bn, T, n_in = x.shape
        mem = self.memory
        W_in = mem.last_window(T, x.dtype)  # earlier inputs are below working precision
        Hrev = mem._kernel_reversed(W_in, x.dtype)  # (W_in, d)
        xH = _data_product(x[:, T - W_in :].transpose(1, 2).reshape(Bn * n_in, W_in), Hrev)
        xH = xH.view(Bn, n_in, mem.order)
        U = self.encoder.weight  # (C, in)
        # (B * d, in) @ (in, C): one GEMM (a broadcast matmul would expand U over the batch)
        m = (xH.transpose(1, 2).reshape(Bn * mem.order, n_in) @ U.T).view(Bn, mem.order, U.shape[0])
        m = m.transpose(1, 2)  # (B, C, d)
        if self.encoder.bias is not None:
            m = m + self.encoder.bias.view(-1, 1) * mem._kernel_sum(T, x.dtype)[0]
        m = m.reshape(Bn, self.state_size)
        if state is not None:
            m = m + mem._power_apply(state.to(x.dtype), T)
        return m

    def use_fused(self, time: int, batch: int) -> bool:
        """Whether a full-sequence call of this shape folds the output map into the kernel."""
        time, batch = _check_size(time, "time"), _check_size(batch, "batch")
        if self.mode == "fused":
            return True
        if self.mode != "auto":
            return False
        # Measured (benchmarks/cpu.json, "modes" and "full_sequence"; `plmu bench --only modes
        # full_sequence`): at batch 32, memory_size 16, order 64, hidden 128 the fused path is the
        # fastest training step from 32 steps up (T=32: 9.2 ms vs direct 19.7; T=128: 30.9 vs
        # recurrent 100.5; T=1024: 213 vs 1043), about ties the Toeplitz product at 8 over the
        # runs (7.7 vs 6.3; earlier 5.7 vs 6.2, 6.2 vs 6.5, 5.9 vs 5.7, 4.3 vs 4.2, 4.4 vs 4.7
        # and 3.3 vs 3.8) and loses at 2 (5.1 vs direct 2.3).
        return time >= AUTO_FUSED_MIN_TIME

    def forward(
        self,
        x: torch.Tensor,
        state: torch.Tensor | None = None,
        lengths: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the layer over whole sequences, in parallel over time.

        Args:
            x: ``(batch, time, input_size)``.
            state: ``(batch, memory_size * order)`` memory carried from an earlier call, or
                ``None`` for zeros.
            lengths: ``(batch,)`` valid lengths of right-padded sequences, or ``None``. Padded
                steps change neither the returned state nor each sequence's last output.

        Returns:
            ``(output, state)``: output ``(batch, time, hidden_size)`` (``(batch, hidden_size)``
            at each sequence's last valid step when ``return_sequences=False``) and the memory
            after the last valid step ``(batch, memory_size * order)``.
        """
        x = check_sequence(x, self.input_size, "x")
        check_input_dtype(x, _weight(self._modules["output"], "weight"), "x")
        Bn, T, _ = x.shape
        check_state(state, Bn, self.state_size, "state", x)  # (each path casts it as it runs)
        lengths = check_lengths(lengths, Bn, T)
        if T == 0:
            raise ValueError("x must have at least one time step, got time = 0")
        if not self.return_sequences:
            if lengths is None and self._foldable and self.input_size == 1:
                return self._last_output_scalar(x, state)
            if lengths is None and self._linear_encoder and self.input_size <= self.memory_size:
                m_last = self._last_state_folded(x, state)
            else:
                m_last = self.memory.last_state(self._encode(x), state, lengths)
            x_last = x[:, -1] if lengths is None else gather_time(x, lengths)
            return self._readout(m_last, x_last), m_last
        if (
            T <= STEP_LOOP_MAX_TIME
            and (lengths is None or T == 1)  # one step's lengths are all 1
            and self._can_fold_step(x.device.type)
            and x.dtype in (torch.float32, torch.float64)  # the memory runs low precision in
        ):  # float32; the step map would not
            return self._step_loop(x, state)
        u = self._encode(x)
        if not self.use_fused(T, Bn):
            m, final = self.memory(u, state, lengths)
            return self._readout(m, x), final
        S = self.state_size
        W_m = self.output.weight[:, :S]
        if self.input_to_output:  # W_x x + b, then W_m m added in place, block by block
            base = _affine(x, self.output.weight[:, S:], self.output.bias)
            pre = self.memory.project(u, W_m, state, accumulate=base)
        else:
            pre = self.memory.project(u, W_m, state)
            if self.output.bias is not None:
                pre = pre + self.output.bias
        # under autocast W_m m was summed in float32: give the output layer's dtype, as the
        # other modes do (autocast leaves a float64 layer alone)
        device_type = "cpu" if x.is_cpu else x.device.type  # (x.device costs ~1 us)
        if pre.dtype is not torch.float64 and autocast_enabled(device_type):
            pre = pre.to(torch.get_autocast_dtype(device_type))
        final = self.memory.last_state(u, state, lengths)
        if not torch.is_grad_enabled() and not (self.training and self.dropout.p > 0):
            act = self._inplace_activation()
            if act is None:
                return pre, final
            return act(pre), final  # inference: pre is this call's own buffer
        return self.dropout(self._activate(pre)), final

    def step(
        self, x_t: torch.Tensor, state: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One time step, the RNN form: same weights and numbers as :meth:`forward`.

        Args:
            x_t: ``(batch, input_size)``.
            state: ``(batch, memory_size * order)`` or ``None`` for zeros.

        Returns:
            ``(o_t, state)``: ``(batch, hidden_size)`` and ``(batch, memory_size * order)``.
        """
        x_t = check_step_input(x_t, self.input_size, "x_t")
        if self._can_fold_step(x_t.device.type):
            # (x_t's dtype is checked against the weights' where the map for it is built)
            G, g, S, act = self._folded_step(x_t.dtype, x_t.device)
            state = check_state(state, x_t.shape[0], S, "state", x_t)
            # [m_t, W_m m_t + W_x x_t + b] = [m_{t-1}, x_t] G + g: one GEMV
            m, o = torch.addmm(g, torch.cat([state, x_t], dim=1), G).split(
                [S, G.shape[1] - S], dim=1
            )
            return (o if act is None else act(o)), m
        check_input_dtype(x_t, self.output.weight, "x_t")
        m, _ = self.memory.step(self._encode(x_t), state)
        return self._readout(m, x_t), m

    def _step_loop(
        self, x: torch.Tensor, state: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A chunk of at most :data:`STEP_LOOP_MAX_TIME` steps at inference, one :meth:`step`
        (one cached affine map) a step: the sequence path's fixed cost per operation is larger.

        Args:
            x: ``(batch, time, input_size)``; state: ``(batch, order)`` or ``None``.

        Returns:
            ``(output, state)``: ``(batch, time, hidden_size)`` and ``(batch, order)``.
        """
        outs = []
        for x_t in x.unbind(1):
            o, state = self.step(x_t, state)
            outs.append(o)
        return torch.stack(outs, 1), state

    def _inplace_activation(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """``f_o`` in place where torch has that form (else the module), ``None`` for identity:
        for inference on a buffer of this call's own."""
        return _INPLACE_ACTIVATIONS.get(type(self.hidden_activation), self.hidden_activation)

    def _can_fold_step(self, device_type: str) -> bool:
        """Whether :meth:`step` may use the folded inference matrices (one memory channel with
        identity ``f_u``, no autograd, no dropout, no autocast: the folded product would run, and
        round the state, in low precision; not being traced for export)."""
        return (
            self._foldable
            and not torch.is_grad_enabled()
            and not autocast_enabled(device_type)
            and not (self.training and self.dropout.p > 0)
            and not torch.jit.is_tracing()
            and not torch.compiler.is_compiling()  # also true under torch.export / ONNX dynamo
        )

    def _folded_step(self, dtype: torch.dtype, device: torch.device) -> tuple:
        """The inference step as one affine map, ``[m_t, pre_t] = [m_{t-1}, x_t] G + g``.

        With ``u = e x + b_u`` (one channel, identity ``f_u``)::

            m_t   = Abar m + (Bbar e) x + Bbar b_u
            pre_t = (W_m Abar) m + (W_m Bbar e + W_x) x + (W_m Bbar b_u + b)

        built in float64 from the current weights, cast to ``dtype`` and cached until a weight or
        ``theta`` changes (keyed by the tensors' identities, versions and data addresses; never
        cached for a parametrized weight or bias, which is computed anew on each access). A write
        into a weight's ``.data`` in place bumps no version and is not seen: comparing the content
        would cost more than the step (docs/library.md, "Cached kernels").

        Returns:
            ``G`` ``(S + input_size, S + hidden_size)``, ``g`` ``(S + hidden_size,)``, ``S`` and
            the output activation to apply in place (``None`` for identity).
        """
        # the tensors it is built from, as the module holds them now (torch.func.functional_call
        # swaps in others): the cache holds them, so identity and version are a safe check, and
        # their data's address sees a new tensor assigned to `.data` (as `vector_to_parameters`
        # does; the cache keeps the old data alive, so its address cannot come back)
        # (plain dict lookups, not module attributes: this check runs every step, ~1 us)
        modules = self._modules
        enc, out = modules["encoder"]._parameters, modules["output"]._parameters
        mem = modules["memory"]
        theta = mem._parameters["log_theta"] if mem.trainable_theta else mem._buffers["Abar"]
        try:
            tensors = [
                t
                for t in (enc["weight"], out["weight"], enc["bias"], out["bias"], theta)
                if t is not None
            ]
        except KeyError:  # a parametrization (weight_norm, ...): computed anew on each access
            tensors = None
        # a transform's tensor has no storage to key on (the global check first: every step)
        cacheable = tensors is not None and (_untransformed() or all(map(_plain, tensors)))
        cached = self._step_cache if cacheable else None
        if cached is not None:
            held, key, value = cached
            if (
                key[0] is dtype
                and key[1] == device
                and len(held) == len(tensors)
                and all(map(operator.is_, held, tensors))
                and key[2] == [(t._version, t.data_ptr()) for t in held]
            ):
                return value
        if dtype != self.output.weight.dtype:  # (a cached map's dtype was checked here)
            raise input_dtype_error("x_t", dtype, self.output.weight.dtype)
        S, H, n_in = self.state_size, self.hidden_size, self.input_size
        Abar, Bbar = (t.double() for t in self.memory.discrete())
        e = self.encoder.weight.double()  # (1, in)
        b_u = self.encoder.bias.double() if self.encoder.bias is not None else Abar.new_zeros(1)
        Wout = self.output.weight.double()
        W_m = Wout[:, :S]
        W_x = Wout[:, S:] if self.input_to_output else Wout.new_zeros(H, n_in)
        b = self.output.bias.double() if self.output.bias is not None else Wout.new_zeros(H)
        Be = Bbar @ e  # (S, in)
        top = torch.cat([Abar, Be], dim=1)  # (S, S + in)
        bottom = torch.cat([W_m @ Abar, W_m @ Be + W_x], dim=1)  # (H, S + in)
        G = torch.cat([top, bottom], dim=0).T.contiguous().to(device=device, dtype=dtype)
        Bb = Bbar[:, 0] * b_u[0]
        g = torch.cat([Bb, W_m @ Bb + b]).to(device=device, dtype=dtype)
        value = (G, g, S, self._inplace_activation())
        if not cacheable:
            return value
        data = [t.detach() for t in tensors]  # keeps each one's data (and so its address) alive
        versions = [(t._version, t.data_ptr()) for t in tensors]
        self._step_cache = (tensors, (dtype, device, versions, data), value)
        return value

    def _saved_config(self) -> dict[str, object]:
        # saved in the state dict and checked on loading (plmu.saved_config); the memory saves
        # its own (discretizer, ...)
        return {
            "hidden_activation": _activation_name(self.hidden_activation),
            "memory_activation": _activation_name(self.memory_activation),
        }

    def extra_repr(self) -> str:
        return (
            f"input_size={self.input_size}, hidden_size={self.hidden_size}, "
            f"return_sequences={self.return_sequences}, input_to_output={self.input_to_output}, "
            f"mode={self.mode!r}"
        )


def _glorot_normal_(w: torch.Tensor) -> None:
    nn.init.xavier_normal_(w)


def _lecun_uniform_(w: torch.Tensor) -> None:
    bound = math.sqrt(3.0 / w.shape[1])
    nn.init.uniform_(w, -bound, bound)


class LMUCell(_SavedConfig, nn.Module):
    r"""The original LMU cell (Voelker et al. 2019), one time step::

        u_t = e_x x_t + e_h h_{t-1} + e_m m_{t-1}
        m_t = Abar m_{t-1} + Bbar u_t
        h_t = f(W_x x_t + W_h h_{t-1} + W_m m_t + b)

    Args:
        input_size, hidden_size, order, theta, memory_size: as for :class:`ParallelLMU`.
        hidden_to_memory: keep ``e_h`` (else it is absent, i.e. zero).
        memory_to_memory: keep ``e_m``.
        input_to_hidden: keep ``W_x``.
        hidden_to_hidden: keep ``W_h``. With all four switches off the cell is the lean
            variant that trains ``e_x`` and ``W_m`` only (a ``plmu bench`` comparison row): from the
            psMNIST initialisation it gives the same outputs and ``W_m`` gradient as the full
            cell, without multiplying by the zeros (or backpropagating through every step's
            ``h``), but it does not learn the connections the 2019 setup trains.
        hidden_activation: ``f`` (``"tanh"`` default).
        bias: add ``b`` (the original cell has none).
        discretizer, trainable_theta: passed to :class:`~plmu.LegendreMemory`.
        init: ``"default"`` (encoders LeCun-uniform, ``e_m`` zero, kernels Glorot-normal) or
            ``"psmnist"``, the original psMNIST setup: ``e_x = 1``, ``e_h = e_m = 0``,
            ``W_x = W_h = 0``, ``W_m`` Glorot-normal, as initial values; all of them train, as
            in the 2019 code (102,027 trainable weights with a 10-way head at hidden 212,
            order 256: PAPER.md's "102k trainable parameters").

    Shapes:
        ``x_t`` ``(batch, input_size)``; state ``(h, m)`` with ``h`` ``(batch, hidden_size)`` and
        ``m`` ``(batch, memory_size * order)``; returns ``(h_t, (h_t, m_t))``.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        order: int,
        theta: float,
        memory_size: int = 1,
        hidden_to_memory: bool = True,
        memory_to_memory: bool = True,
        input_to_hidden: bool = True,
        hidden_to_hidden: bool = True,
        hidden_activation: str | None = "tanh",
        bias: bool = False,
        discretizer: str = "zoh",
        trainable_theta: bool = False,
        init: str = "default",
    ) -> None:
        super().__init__()
        self.input_size = _check_positive_int(input_size, "input_size")
        self.hidden_size = _check_positive_int(hidden_size, "hidden_size")
        if init not in LMU_INITS:
            raise ValueError(f"init must be 'default' or 'psmnist', got {init!r}")
        self.init = init
        self.memory = LegendreMemory(
            memory_size,
            order,
            theta,
            discretizer=discretizer,
            trainable_theta=trainable_theta,
            mode="recurrent",
        )
        C, S, H = memory_size, self.memory.state_size, self.hidden_size

        def param(*shape: int) -> nn.Parameter:
            return nn.Parameter(torch.empty(*shape))

        self.e_x = param(C, self.input_size)
        self.e_h = param(C, H) if hidden_to_memory else None
        self.e_m = param(C, S) if memory_to_memory else None
        self.W_x = param(H, self.input_size) if input_to_hidden else None
        self.W_h = param(H, H) if hidden_to_hidden else None
        self.W_m = param(H, S)
        self.bias = param(H) if bias else None
        self.activation = _activation(hidden_activation, "hidden_activation")
        self.reset_parameters()

    @property
    def state_size(self) -> int:
        return self.memory.state_size

    def default_state(
        self,
        batch_size: int,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The zero state ``(h, m)`` that ``state=None`` stands for: ``(batch_size, hidden_size)``
        and ``(batch_size, memory_size * order)``, in ``dtype`` and on ``device`` (default: those
        of the cell's weights)."""
        w = self.W_m
        dtype, device = dtype or w.dtype, device or w.device
        h = _zeros(batch_size, self.hidden_size, dtype, device)
        return h, _zeros(batch_size, self.state_size, dtype, device)

    def _saved_config(self) -> dict[str, object]:
        # saved in the state dict and checked on loading (plmu.saved_config); the memory saves
        # its own (discretizer, ...)
        return {"hidden_activation": _activation_name(self.activation)}

    def extra_repr(self) -> str:
        return (
            f"input_size={self.input_size}, hidden_size={self.hidden_size}, "
            f"hidden_to_memory={self.e_h is not None}, memory_to_memory={self.e_m is not None}, "
            f"input_to_hidden={self.W_x is not None}, hidden_to_hidden={self.W_h is not None}, "
            f"bias={self.bias is not None}, "
            f"init={self.init!r}"
        )

    def reset_parameters(self) -> None:
        psmnist = self.init == "psmnist"
        with torch.no_grad():
            if psmnist:
                self.e_x.fill_(1.0)
            else:
                _lecun_uniform_(self.e_x)
            if self.e_h is not None:
                self.e_h.zero_() if psmnist else _lecun_uniform_(self.e_h)
            if self.e_m is not None:
                self.e_m.zero_()
            if self.W_x is not None:
                self.W_x.zero_() if psmnist else _glorot_normal_(self.W_x)
            if self.W_h is not None:
                self.W_h.zero_() if psmnist else _glorot_normal_(self.W_h)
            _glorot_normal_(self.W_m)
            if self.bias is not None:
                self.bias.zero_()
        self.memory.reset_parameters()

    def _check_state(
        self,
        state: tuple[torch.Tensor, torch.Tensor] | None,
        batch: int,
        like: torch.Tensor,
        memory_like: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(h, m)`` checked (zeros for ``None``), ``h`` in ``like``'s dtype and ``m`` in
        ``memory_like``'s (the system's, float32 under autocast: see :meth:`_system_for`)."""
        if state is None:
            return like.new_zeros((batch, self.hidden_size)), memory_like.new_zeros(
                (batch, self.state_size)
            )
        if not isinstance(state, (tuple, list)) or len(state) != 2:
            raise TypeError("state must be a tuple (h, m) or None")
        h = check_state(state[0], batch, self.hidden_size, "state[0] (h)", like)
        m = check_state(state[1], batch, self.state_size, "state[1] (m)", memory_like)
        return h, m

    def _inputs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The input-dependent terms ``e_x x`` and ``W_x x`` (computed for all steps at once)."""
        xe = F.linear(x, self.e_x)
        xw = None if self.W_x is None else F.linear(x, self.W_x)
        return xe, xw

    def _step(
        self,
        xe: torch.Tensor,
        xw: torch.Tensor | None,
        h: torch.Tensor,
        m: torch.Tensor,
        Abar: torch.Tensor,
        Bbar: torch.Tensor,
        autocast_device: str | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One step from the precomputed ``e_x x`` and ``W_x x``. Under autocast
        (``autocast_device`` names its device type) the memory update runs in ``Abar``'s dtype
        (float32 for a low-precision input, :meth:`_system_for`) with autocast off, as
        :class:`~plmu.LegendreMemory` does, so ``m`` is not rounded each step."""
        u = xe
        if self.e_h is not None:
            u = u + F.linear(h, self.e_h)
        if self.e_m is not None:
            u = u + F.linear(m, self.e_m)
        C, d = self.memory.memory_size, self.memory.order
        if autocast_device is None:
            m = m.view(-1, C, d) @ Abar.T + u.unsqueeze(-1) * Bbar.view(1, 1, d)
        else:
            with torch.autocast(autocast_device, enabled=False):
                m, u = m.to(Abar.dtype), u.to(Abar.dtype)
                m = m.view(-1, C, d) @ Abar.T + u.unsqueeze(-1) * Bbar.view(1, 1, d)
        m = m.reshape(-1, C * d)
        pre = F.linear(m, self.W_m)
        if self.W_h is not None:  # (the same sum, in the same order, as W_h h + W_m m)
            pre = F.linear(h, self.W_h) + pre
        if xw is not None:
            pre = pre + xw
        if self.bias is not None:
            pre = pre + self.bias
        return self.activation(pre), m

    def forward(
        self, x_t: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """One step. ``x_t`` ``(batch, input_size)`` -> ``(h_t, (h_t, m_t))``."""
        x_t = check_step_input(x_t, self.input_size, "x_t")
        check_input_dtype(x_t, _weight(self, "W_m"), "x_t")
        Abar, Bbar, autocast_device = self._system_for(x_t)
        h, m = self._check_state(state, x_t.shape[0], x_t, Abar)
        xe, xw = self._inputs(x_t)
        h, m = self._step(xe, xw, h, m, Abar, Bbar, autocast_device)
        return h, (h, m)

    def _fast_sequence_applies(
        self,
        x: torch.Tensor,
        h: torch.Tensor,
        m: torch.Tensor,
        Abar: torch.Tensor,
        autocast_device: str | None,
    ) -> bool:
        """Whether :class:`LMU` may run ``x`` as one :class:`_LMUSequence` (a hand-written
        BPTT): not under autocast (the memory update's own precision), for an activation whose
        derivative it takes from the output (identity, ReLU, tanh, sigmoid), and not when
        traced, compiled or exported, inside a ``torch.func`` transform or with a forward-mode
        tangent on an input, state or weight (:func:`~plmu.tracing.plain_autograd`). Elsewhere
        the step-by-step autograd loop runs: the same values."""
        if autocast_device is not None or type(self.activation) not in _FAST_ACTIVATIONS:
            return False
        weights = (self.e_x, self.e_h, self.e_m, self.W_x, self.W_h, self.W_m, self.bias)
        return not plain_autograd(x, h, m, Abar, *weights)

    def _system_for(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, str | None]:
        """``(Abar, Bbar, autocast_device)`` for input ``x``: the system in ``x``'s dtype, or
        under autocast in float32 (for a low-precision ``x``) with the device type to turn
        autocast off for the memory update (:meth:`_step`)."""
        device_type = x.device.type
        if not autocast_enabled(device_type):
            Abar, Bbar = self.memory._discrete_as(x)
            return Abar, Bbar, None
        like = x if x.dtype not in _LOW_PRECISION else x.new_empty((), dtype=torch.float32)
        Abar, Bbar = self.memory._discrete_as(like)
        return Abar, Bbar, device_type


class LMU(nn.Module):
    """The original LMU (Voelker et al. 2019) run sequentially over time: the baseline.

    A sequence runs as one autograd Function with a hand-written backward through time (the
    same recurrence and values as stepping :class:`LMUCell`; each weight gradient one product
    over all steps), or as a step-by-step autograd loop where that does not apply
    (:meth:`LMUCell._fast_sequence_applies`, :meth:`_forward_fast`).

    Args:
        input_size, hidden_size, order, theta, memory_size: as for :class:`LMUCell`.
        return_sequences: return ``h`` for every step, or only each sequence's last one.
        **cell_kwargs: passed to :class:`LMUCell` (``hidden_to_memory``, ``init``, ...).

    Shapes:
        ``x`` ``(batch, time, input_size)`` -> output ``(batch, time, hidden_size)`` (or
        ``(batch, hidden_size)``) and state ``(h, m)``: ``(batch, hidden_size)``,
        ``(batch, memory_size * order)``.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        order: int,
        theta: float,
        memory_size: int = 1,
        return_sequences: bool = True,
        **cell_kwargs: object,
    ) -> None:
        super().__init__()
        self.cell = LMUCell(input_size, hidden_size, order, theta, memory_size, **cell_kwargs)
        self.return_sequences = bool(return_sequences)

    # whether forward may take the fast sequence path (_LMUSequence) where it applies; the
    # tests set it False to compare with the step-by-step autograd loop
    _fast_sequence = True

    @property
    def hidden_size(self) -> int:
        return self.cell.hidden_size

    def default_state(
        self,
        batch_size: int,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The zero state ``(h, m)`` that ``state=None`` stands for
        (:meth:`LMUCell.default_state`)."""
        return self.cell.default_state(batch_size, dtype, device)

    def forward(
        self,
        x: torch.Tensor,
        state: tuple[torch.Tensor, torch.Tensor] | None = None,
        lengths: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Run the cell over ``x`` ``(batch, time, input_size)``; see the class for shapes.

        With ``lengths`` the state stops changing after each sequence's last valid step.
        """
        cell = self.cell
        x = check_sequence(x, cell.input_size, "x")
        check_input_dtype(x, _weight(cell, "W_m"), "x")
        Bn, T, _ = x.shape
        Abar, Bbar, autocast_device = cell._system_for(x)
        h, m = cell._check_state(state, Bn, x, Abar)
        lengths = check_lengths(lengths, Bn, T)
        if T == 0:
            raise ValueError("x must have at least one time step, got time = 0")
        if self._fast_sequence and cell._fast_sequence_applies(x, h, m, Abar, autocast_device):
            out = self._forward_fast(x, h, m, Abar, Bbar, lengths)
            if out is not None:
                return out
        xe, xw = cell._inputs(x)
        outputs = []
        # unbound once: indexing xe[:, t] per step would make backward write a zero gradient of
        # the whole sequence for every step (quadratic in T)
        xe_steps = xe.unbind(1)
        xw_steps = [None] * T if xw is None else xw.unbind(1)
        if lengths is not None:  # once: a copy per step would synchronise with a GPU each step
            lengths = lengths.to(x.device).unsqueeze(1)
        for t in range(T):
            h_new, m_new = cell._step(xe_steps[t], xw_steps[t], h, m, Abar, Bbar, autocast_device)
            if lengths is not None:
                keep = t < lengths
                h_new, m_new = torch.where(keep, h_new, h), torch.where(keep, m_new, m)
            h, m = h_new, m_new
            if self.return_sequences:  # (a list of every h would keep every step's graph alive)
                outputs.append(h)
        y = torch.stack(outputs, dim=1) if self.return_sequences else h
        return y, (h, m)

    def _forward_fast(
        self,
        x: torch.Tensor,
        h: torch.Tensor,
        m: torch.Tensor,
        Abar: torch.Tensor,
        Bbar: torch.Tensor,
        lengths: torch.Tensor | None,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]] | None:
        """:meth:`forward` as one :class:`_LMUSequence` over time-major inputs (the same values
        as the step loop; :meth:`LMUCell._fast_sequence_applies` says when it applies).

        None (run the loop) when training a cell that carries no gradient back through time:
        only the last ``h`` returned, no ``e_h``, ``W_h`` or ``lengths``, and no gradient
        wanted through ``m`` (the lean ``plmu bench`` cell). There the loop's graph holds the
        last step alone, where the Function would keep every step's state.

        On CPU the sequence-long buffers come from this module's :class:`~plmu.workspace.Workspace`:
        the next step reuses their memory once nothing holds it."""
        cell = self.cell
        T = x.shape[1]
        a, c = cell._inputs(x.transpose(0, 1))  # (T, B, C), (T, B, H)
        if cell.bias is not None:
            c = cell.bias.expand(*a.shape[:2], -1) if c is None else c + cell.bias
        keep = None
        if lengths is not None:  # (T, B, 1): whether step t is within each sequence
            steps = torch.arange(T, device=x.device).unsqueeze(1)
            keep = (steps < lengths.to(x.device).unsqueeze(0)).unsqueeze(-1)
        inputs = (a, c, h, m, cell.e_h, cell.e_m, cell.W_h, cell.W_m, Abar, Bbar, keep)
        kind, sequences = type(cell.activation), self.return_sequences
        if not (torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in inputs)):
            # inference: nothing saved, the state in two rows used in turn
            Hb, Mb, _ = _lmu_sequence_forward(
                *inputs, kind, every_h=sequences, every_m=False, workspace=workspace_of(self)
            )
            m = Mb[T & 1].clone()
            if not sequences:
                h = Hb[T & 1].clone()
                return h, (h, m)
            # (a copy even at batch 1, where contiguous() would give a view of the block the
            # workspace hands out again once the caller drops it: the whole block kept alive)
            y = Hb[1:].transpose(0, 1).clone(memory_format=torch.contiguous_format)
            return y, (y[:, -1], m)
        if not (sequences or keep is not None or cell.e_h is not None or cell.W_h is not None):
            through_m = (a, m, cell.e_m, Abar, Bbar)
            if not any(t is not None and t.requires_grad for t in through_m):
                return None
        y, m = _LMUSequence.apply(*inputs, kind, sequences, workspace_of(self))
        if not sequences:
            return y, (y, m)
        # batch-first, as the loop's stack gives it (a copy even at batch 1: see above)
        y = y.transpose(0, 1).clone(memory_format=torch.contiguous_format)
        return y, (y[:, -1], m)

    def extra_repr(self) -> str:
        return f"return_sequences={self.return_sequences}"

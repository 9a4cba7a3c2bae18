"""A language model of stacked parallel LMU layers, trained in parallel, run as an RNN.

    tokens -> Embedding -> num_layers x [h = h + Dropout(ParallelLMU(LayerNorm(h)))]
           -> LayerNorm -> Linear -> logits

Every block is pre-normalised and residual, so depth trains stably. Training and scoring run
whole sequences at once (:meth:`LMULanguageModel.forward`, the memory's parallel strategies);
generation feeds one token at a time through :meth:`LMULanguageModel.step`, which carries every
layer's memory state, so each new token costs the same ``O(num_layers * (order^2 + d_model^2))``
work however long the text already is. ``forward`` with a ``state`` continues a stream exactly
where ``step`` (or an earlier ``forward``) left it.
"""

from __future__ import annotations

import torch
from torch import nn

from plmu.checks import _check_positive_int
from plmu.layers import ParallelLMU
from plmu.models._tokens import check_token_dtype, check_token_range

__all__ = ["LMULanguageModel", "State"]

State = list[torch.Tensor]
"""One memory tensor ``(batch, memory_size * order)`` per layer."""


class LMULanguageModel(nn.Module):
    """Next-token language model of residual ParallelLMU blocks.

    Args:
        vocab_size: number of symbols (27 for text8).
        d_model: width of the embedding, of every block and of the LMU outputs.
        num_layers: number of ParallelLMU blocks.
        order: Legendre order ``d`` of each memory channel.
        theta: memory window in tokens.
        memory_size: memory channels per layer (state ``memory_size * order`` per layer).
        hidden_activation: the LMU output nonlinearity ``f_o``.
        dropout: dropout on the embedding and on every block's output (before the residual sum).
        discretizer: passed to :class:`~plmu.ParallelLMU`.
        mode: how :meth:`forward` runs the memory (``"auto"`` picks; see ParallelLMU).

    Shapes:
        - ``tokens``: ``(batch, time)`` integer ids in ``[0, vocab_size)`` (int64; a float dtype
          is a ``TypeError``, an id outside the range a ``ValueError`` for CPU tensors); ``token``
          for :meth:`step`: ``(batch,)``
        - ``state``: a list of ``num_layers`` tensors ``(batch, memory_size * order)``, or
          ``None`` for zeros
        - logits: ``(batch, time, vocab_size)``, or ``(batch, vocab_size)`` from :meth:`step`
    """

    def __init__(
        self,
        vocab_size: int,
        d_model: int,
        num_layers: int,
        order: int,
        theta: float,
        memory_size: int = 1,
        hidden_activation: str = "relu",
        dropout: float = 0.0,
        discretizer: str = "zoh",
        mode: str = "auto",
    ) -> None:
        super().__init__()
        vocab_size = _check_positive_int(vocab_size, "vocab_size")
        d_model = _check_positive_int(d_model, "d_model")
        num_layers = _check_positive_int(num_layers, "num_layers")
        self.vocab_size = vocab_size
        self.d_model = d_model
        self.embedding = nn.Embedding(vocab_size, d_model)
        self.norms = nn.ModuleList(nn.LayerNorm(d_model) for _ in range(num_layers))
        self.layers = nn.ModuleList(
            ParallelLMU(
                d_model,
                d_model,
                order,
                theta,
                memory_size=memory_size,
                hidden_activation=hidden_activation,
                discretizer=discretizer,
                mode=mode,
            )
            for _ in range(num_layers)
        )
        self.dropout = nn.Dropout(float(dropout))
        self.norm = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, vocab_size)

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def _check_state(self, state: State | None) -> list[torch.Tensor | None]:
        if state is None:
            return [None] * self.num_layers
        if not isinstance(state, (list, tuple)) or len(state) != self.num_layers:
            raise ValueError(
                f"state must be a list of {self.num_layers} tensors (one per layer) or None"
            )
        return list(state)

    def _check_tokens(self, tokens: object, rank: int, name: str) -> torch.Tensor:
        shape = "(batch, time)" if rank == 2 else "(batch,)"
        tokens = check_token_dtype(tokens, name, shape)
        if tokens.dim() != rank or tokens.shape[-1] == 0:
            raise ValueError(f"{name} must have shape {shape}, got {tuple(tokens.shape)}")
        # the values on CPU only: on CUDA reading them back would stall every training step
        # (and every generated token) on a host/device sync that nothing else here needs;
        # there nn.Embedding's device-side assert is the check (plmu.generation checks a
        # prompt on any device, where it syncs anyway)
        check_token_range(tokens, self.vocab_size, name)
        return tokens

    def forward(
        self, tokens: torch.Tensor, state: State | None = None
    ) -> tuple[torch.Tensor, State]:
        """Score whole sequences in parallel over time.

        Args:
            tokens: ``(batch, time)`` int64 ids in ``[0, vocab_size)``.
            state: per-layer memories carried from an earlier call (or ``None`` for zeros).

        Returns:
            ``(logits, state)``: ``(batch, time, vocab_size)`` next-token logits and the
            per-layer memories after the last token (to continue with :meth:`step`).
        """
        tokens = self._check_tokens(tokens, 2, "tokens")
        h = self.dropout(self.embedding(tokens))
        new_state = []
        for norm, layer, s in zip(self.norms, self.layers, self._check_state(state)):
            y, s = layer(norm(h), s)
            h = h + self.dropout(y)
            new_state.append(s)
        return self.head(self.norm(h)), new_state

    def step(self, token: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        """One token, the RNN form: the same numbers as :meth:`forward` at that position.

        Args:
            token: ``(batch,)`` int64 ids in ``[0, vocab_size)``.
            state: per-layer memories ``(batch, memory_size * order)`` or ``None``.

        Returns:
            ``(logits, state)``: ``(batch, vocab_size)`` and the updated per-layer memories.
        """
        token = self._check_tokens(token, 1, "token")
        h = self.dropout(self.embedding(token))
        new_state = []
        for norm, layer, s in zip(self.norms, self.layers, self._check_state(state)):
            y, s = layer.step(norm(h), s)
            h = h + self.dropout(y)
            new_state.append(s)
        return self.head(self.norm(h)), new_state

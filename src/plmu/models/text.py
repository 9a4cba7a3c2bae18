"""Text classifiers built from parallel LMU layers: one text, or a pair of texts.

    ids --Embedding--> x --ParallelLMU x num_layers--> h (each text's last valid step) --> head

The last layer reads only each sequence's final memory state (``return_sequences=False`` with
``lengths``; the paper's eq. 25), so right padding never changes a prediction. The original LMU
and an LSTM can stand in for the parallel LMU as baselines (``model``).
"""

from __future__ import annotations

import torch
from torch import nn

from plmu.checks import _check_positive_int, check_lengths
from plmu.models._tokens import check_token_dtype, check_token_range
from plmu.models.stack import RecurrentStack

__all__ = ["PairClassifier", "SentenceEncoder", "TextClassifier"]


class SentenceEncoder(nn.Module):
    """Token ids -> one vector per text.

    Args:
        vocab_size: rows of the embedding (id 0 is padding).
        embedding_dim: features per token.
        hidden_size: features of every recurrent layer's output (and of the result).
        order, theta, memory_size: each layer's Legendre memory (``theta`` in tokens).
        num_layers: stacked recurrent layers.
        dropout: dropout on the embeddings and between layers.
        model: ``"parallel-lmu"`` (default, :class:`~plmu.ParallelLMU`), or the baselines
            ``"lmu"`` (:class:`~plmu.LMU`) and ``"lstm"``; see
            :class:`~plmu.models.RecurrentStack`.
        **layer_kwargs: passed to every LMU layer (``hidden_activation``...).

    Shapes:
        ``forward(ids, lengths)``: ``ids`` ``(B, T)`` int64 in ``[0, vocab_size)``, right-padded,
        ``lengths`` ``(B,)`` in ``[1, T]`` -> ``(B, hidden_size)``, the last layer's output at
        each text's last token.
    """

    def __init__(
        self,
        vocab_size: int,
        embedding_dim: int,
        hidden_size: int,
        order: int,
        theta: float,
        memory_size: int = 1,
        num_layers: int = 1,
        dropout: float = 0.0,
        model: str = "parallel-lmu",
        **layer_kwargs: object,
    ) -> None:
        super().__init__()
        vocab_size = _check_positive_int(vocab_size, "vocab_size")
        embedding_dim = _check_positive_int(embedding_dim, "embedding_dim")
        self.vocab_size = vocab_size
        self.embedding = nn.Embedding(vocab_size, embedding_dim, padding_idx=0)
        self.dropout = nn.Dropout(dropout)
        self.stack = RecurrentStack(
            model,
            embedding_dim,
            hidden_size,
            num_layers,
            order,
            theta,
            memory_size,
            dropout,
            return_sequences=False,
            **layer_kwargs,
        )
        self.hidden_size = self.stack.hidden_size

    def check_ids(self, ids: object, name: str = "ids") -> torch.Tensor:
        """``ids`` checked: an integer tensor ``(batch, time)`` of ids in ``[0, vocab_size)``.

        The values are checked for CPU tensors only: on CUDA reading them back would add a
        host/device sync to every training step (the LSTM baseline makes none), so there
        ``nn.Embedding``'s device-side assert is the check.
        """
        ids = check_token_dtype(ids, name, "(batch, time)")
        if ids.dim() != 2:
            raise ValueError(f"{name} must have shape (batch, time), got {tuple(ids.shape)}")
        check_token_range(ids, self.vocab_size, name)
        return ids

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self._encode(self.check_ids(ids), lengths)

    def _encode(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.stack(self.dropout(self.embedding(ids)), lengths)


class TextClassifier(nn.Module):
    """One text -> class logits: :class:`SentenceEncoder`, dropout, a linear layer.

    Args:
        num_classes: ``C``.
        dropout: also applied before the linear layer.
        **encoder_kwargs: the :class:`SentenceEncoder` (``vocab_size``, ``embedding_dim``,
            ``hidden_size``, ``order``, ``theta``, ...).

    Shapes:
        ``forward(ids, lengths)``: ``(B, T)``, ``(B,)`` -> logits ``(B, C)``.
    """

    def __init__(self, num_classes: int, dropout: float = 0.0, **encoder_kwargs) -> None:
        super().__init__()
        num_classes = _check_positive_int(num_classes, "num_classes")
        self.encoder = SentenceEncoder(dropout=dropout, **encoder_kwargs)
        self.head = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(self.encoder.hidden_size, num_classes)
        )

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(ids, lengths))


class PairClassifier(nn.Module):
    """Two texts -> class logits with one shared :class:`SentenceEncoder`.

    The encodings ``a`` and ``b`` are combined as ``[a, b, |a - b|, a * b]`` (the usual
    sentence-pair features) and passed through an MLP: linear, ReLU, dropout, linear.

    Args:
        num_classes: ``C``.
        mlp_hidden: width of the MLP's hidden layer.
        dropout: dropout in the encoder and the MLP.
        **encoder_kwargs: the :class:`SentenceEncoder`.

    Shapes:
        ``forward(ids_a, lengths_a, ids_b, lengths_b)``: ``(B, T_a)``, ``(B,)``, ``(B, T_b)``,
        ``(B,)`` -> logits ``(B, C)``.
    """

    def __init__(
        self, num_classes: int, mlp_hidden: int, dropout: float = 0.0, **encoder_kwargs
    ) -> None:
        super().__init__()
        num_classes = _check_positive_int(num_classes, "num_classes")
        mlp_hidden = _check_positive_int(mlp_hidden, "mlp_hidden")
        self.encoder = SentenceEncoder(dropout=dropout, **encoder_kwargs)
        h = self.encoder.hidden_size
        self.head = nn.Sequential(
            nn.Linear(4 * h, mlp_hidden),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(mlp_hidden, num_classes),
        )

    def forward(
        self,
        ids_a: torch.Tensor,
        lengths_a: torch.Tensor,
        ids_b: torch.Tensor,
        lengths_b: torch.Tensor,
    ) -> torch.Tensor:
        ids_a = self.encoder.check_ids(ids_a, "ids_a")
        ids_b = self.encoder.check_ids(ids_b, "ids_b")
        if ids_b.shape[0] != ids_a.shape[0]:
            raise ValueError(
                f"ids_a and ids_b must have the same batch size, got {ids_a.shape[0]} and "
                f"{ids_b.shape[0]}"
            )
        # each side's lengths against its own width (the shared call pads both to the longer)
        for name, lengths in (("lengths_a", lengths_a), ("lengths_b", lengths_b)):
            if lengths is None:
                raise TypeError(f"{name} must be a tensor (batch,) of valid lengths, got None")
        lengths_a = check_lengths(lengths_a, ids_a.shape[0], ids_a.shape[1], "lengths_a")
        lengths_b = check_lengths(lengths_b, ids_b.shape[0], ids_b.shape[1], "lengths_b")
        # one encoder call for both sides: pad both to the longer of the two
        B, T = ids_a.shape[0], max(ids_a.shape[1], ids_b.shape[1])
        ids = ids_a.new_zeros(2 * B, T)
        ids[:B, : ids_a.shape[1]] = ids_a
        ids[B:, : ids_b.shape[1]] = ids_b
        encoded = self.encoder._encode(ids, torch.cat([lengths_a, lengths_b]))
        a, b = encoded[:B], encoded[B:]
        return self.head(torch.cat([a, b, (a - b).abs(), a * b], dim=-1))

"""An LMU encoder-decoder with attention, trained in parallel and decoded as an RNN.

Architecture (our choice; the paper does not spell out its IWSLT model)::

    encoder:  embed(src) -> [ParallelLMU forward (+ one over the reversed sequence) -> Linear
              -> residual + LayerNorm] x encoder_layers                       -> enc (B, S, D)
    decoder:  embed(<s> y) -> [ParallelLMU -> residual + LayerNorm] x decoder_layers -> h (B, T, D)
    attention (Luong, on top of the decoder, no input feeding):
              a = softmax((W_q h) enc^T / sqrt(D)) over the valid source positions
              c = a enc;  o = tanh(W_c [c; h]);  logits = W_o o           -> (B, T, V_tgt)

Every decoder operation is causal and per-position except the LMU memories, so teacher forcing
runs over the whole target in parallel (:meth:`LMUSeq2Seq.forward`), and the same weights decode
step by step (:meth:`LMUSeq2Seq.decode_step`), carrying each decoder layer's memory state: the
cost of one generated token is constant in the number already generated (``O(S)`` for the
attention over the ``S`` source positions).

Decoding (both never emit ``<pad>`` or ``<s>``; a hypothesis ends at ``</s>`` or after
``max_len`` tokens):

* :meth:`LMUSeq2Seq.greedy`: the arg-max token at every step;
* :meth:`LMUSeq2Seq.beam_search`: ``beam_size`` hypotheses, ranked at every step *and* at the
  end by the length-normalised score ``sum(log p) / length ** length_penalty`` (``length``
  counts the tokens including ``</s>``; ``length_penalty = 0`` is the raw log-probability,
  ``1`` the mean per token). A finished hypothesis keeps its score and competes for a slot
  with the live ones; the result is the best finished hypothesis found, even one that live
  hypotheses later pushed out of the beam. With ``beam_size = 1`` this is exactly greedy
  decoding.
"""

from __future__ import annotations

import math
import numbers

import torch
from torch import nn

from plmu.checks import _check_positive_int, _check_real
from plmu.layers import ParallelLMU
from plmu.models._tokens import (
    check_token_dtype,
    check_token_range,
    token_range_error,
    tokens_out_of_range,
)
from plmu.precision import widest_float

__all__ = ["BANNED_TOKENS", "LMUSeq2Seq", "reverse_padded"]

PAD_ID, BOS_ID, EOS_ID = 0, 2, 3
BANNED_TOKENS = (PAD_ID, BOS_ID)  # never generated


def _integer_dtype(dtype: torch.dtype) -> bool:
    return not (dtype.is_floating_point or dtype.is_complex or dtype == torch.bool)


def _normalised_key(
    scores: torch.Tensor, lengths: torch.Tensor, length_penalty: float
) -> torch.Tensor:
    """A key that orders hypotheses as ``scores / lengths ** length_penalty`` does:
    ``length_penalty * log(length) - log(-score)`` (scores are sums of log-probabilities, so
    ``<= 0``; ``-inf`` gives ``-inf``), in :func:`_key_dtype`. ``lengths ** length_penalty``
    itself overflows float32 from ``3 ** 81`` on, and every such score then fell to ``-0.0``
    or nan."""
    dtype = _key_dtype(scores.device)
    log_length = lengths.clamp(min=1).to(dtype).log()
    return length_penalty * log_length - torch.neg(scores.to(dtype)).log()


def _key_dtype(device: torch.device) -> torch.dtype:
    """float64 for :func:`_normalised_key`, float32 on MPS (which has no float64)."""
    return widest_float(device)


def reverse_padded(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Reverse each right-padded sequence within its length; padding stays in place.

    Args:
        x: ``(batch, time, features)``; lengths: ``(batch,)``.

    Returns:
        ``(batch, time, features)``; applying it twice gives ``x`` back.
    """
    B, T = x.shape[:2]
    idx = torch.arange(T, device=x.device).expand(B, T)
    rev = lengths.to(x.device).unsqueeze(1) - 1 - idx
    rev = torch.where(rev >= 0, rev, idx)
    return x.gather(1, rev.unsqueeze(-1).expand_as(x))


class _EncoderLayer(nn.Module):
    def __init__(self, d: int, order: int, theta: float, memory_size: int, bidirectional: bool):
        super().__init__()
        kw = dict(order=order, theta=theta, memory_size=memory_size)
        self.forward_lmu = ParallelLMU(d, d, **kw)
        self.backward_lmu = ParallelLMU(d, d, **kw) if bidirectional else None
        self.merge = nn.Linear(2 * d if bidirectional else d, d)
        self.norm = nn.LayerNorm(d)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor, dropout: nn.Module) -> torch.Tensor:
        y, _ = self.forward_lmu(x)
        if self.backward_lmu is not None:
            yb, _ = self.backward_lmu(reverse_padded(x, lengths))
            y = torch.cat([y, reverse_padded(yb, lengths)], dim=-1)
        return self.norm(x + dropout(self.merge(y)))


class _DecoderLayer(nn.Module):
    def __init__(self, d: int, order: int, theta: float, memory_size: int):
        super().__init__()
        self.lmu = ParallelLMU(d, d, order=order, theta=theta, memory_size=memory_size)
        self.norm = nn.LayerNorm(d)

    def forward(self, x: torch.Tensor, dropout: nn.Module) -> torch.Tensor:
        y, _ = self.lmu(x)
        return self.norm(x + dropout(y))

    def step(
        self, x_t: torch.Tensor, state: torch.Tensor | None, dropout: nn.Module
    ) -> tuple[torch.Tensor, torch.Tensor]:
        y_t, state = self.lmu.step(x_t, state)
        return self.norm(x_t + dropout(y_t)), state


class LMUSeq2Seq(nn.Module):
    """LMU encoder-decoder with attention over the encoder outputs (see the module docstring).

    Args:
        src_vocab_size, tgt_vocab_size: vocabulary sizes, at least 4 (ids ``0..3`` are
            ``<pad> <unk> <s> </s>``).
        d_model: width ``D`` of embeddings, LMU outputs and attention.
        order, theta, memory_size: of every :class:`~plmu.ParallelLMU` layer.
        encoder_layers, decoder_layers: stack depths.
        bidirectional: the encoder also reads each source backwards.
        dropout: on embeddings, layer outputs and the attentional output.
        tie_embeddings: share the target embedding with the output projection.
    """

    def __init__(
        self,
        src_vocab_size: int,
        tgt_vocab_size: int,
        d_model: int = 256,
        order: int = 64,
        theta: float = 64.0,
        memory_size: int = 1,
        encoder_layers: int = 2,
        decoder_layers: int = 2,
        bidirectional: bool = True,
        dropout: float = 0.1,
        tie_embeddings: bool = True,
    ) -> None:
        super().__init__()
        # a vocabulary holds at least the special tokens <pad> <unk> <s> </s> (ids 0..EOS_ID)
        src_vocab_size = _check_positive_int(src_vocab_size, "src_vocab_size", EOS_ID + 1)
        tgt_vocab_size = _check_positive_int(tgt_vocab_size, "tgt_vocab_size", EOS_ID + 1)
        d_model = _check_positive_int(d_model, "d_model")
        encoder_layers = _check_positive_int(encoder_layers, "encoder_layers")
        decoder_layers = _check_positive_int(decoder_layers, "decoder_layers")
        D = d_model
        self.d_model = D
        self.tgt_vocab_size = tgt_vocab_size
        self.src_embed = nn.Embedding(src_vocab_size, D, padding_idx=PAD_ID)
        self.tgt_embed = nn.Embedding(tgt_vocab_size, D, padding_idx=PAD_ID)
        self.encoder = nn.ModuleList(
            _EncoderLayer(D, order, theta, memory_size, bidirectional)
            for _ in range(encoder_layers)
        )
        self.decoder = nn.ModuleList(
            _DecoderLayer(D, order, theta, memory_size) for _ in range(decoder_layers)
        )
        self.query = nn.Linear(D, D, bias=False)
        self.combine = nn.Linear(2 * D, D)
        self.out = nn.Linear(D, tgt_vocab_size)
        if tie_embeddings:
            self.out.weight = self.tgt_embed.weight
        self.dropout = nn.Dropout(dropout)
        self.embed_scale = math.sqrt(D)
        with torch.no_grad():
            for emb in (self.src_embed, self.tgt_embed):
                nn.init.normal_(emb.weight, std=D**-0.5)
                emb.weight[PAD_ID].zero_()

    # ------------------------------------------------------------------ shared pieces

    def _check_batch(
        self, src: object, src_lengths: object, tgt_in: object = None, values: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Check ``src`` ``(batch, S)``, ``src_lengths`` (integers) and, if given, ``tgt_in``
        ``(batch, T)``.

        With ``values`` (the default) the ``src_lengths`` check reads values back, a host/device
        sync on CUDA; the token-id range checks of ``src`` and ``tgt_in`` join that one sync, so
        they run on every device. ``values=False`` checks types and shapes alone (for a batch
        whose values were checked on the host before it moved to the device).
        """
        src = check_token_dtype(src, "src", "(batch, S)")
        if src.dim() != 2 or src.shape[1] == 0:
            raise ValueError(f"src must be (batch, S) with S >= 1, got {tuple(src.shape)}")
        if not isinstance(src_lengths, torch.Tensor):
            raise TypeError(
                f"src_lengths must be a torch.Tensor ({src.shape[0]},), "
                f"got {type(src_lengths).__name__}"
            )
        if not _integer_dtype(src_lengths.dtype):
            raise TypeError(f"src_lengths must hold integers, got dtype {src_lengths.dtype}")
        if src_lengths.shape != src.shape[:1]:
            raise ValueError(
                f"src_lengths must be ({src.shape[0]},), got {tuple(src_lengths.shape)}"
            )
        if tgt_in is not None:
            tgt_in = check_token_dtype(tgt_in, "tgt_in", "(batch, T)")
            if tgt_in.dim() != 2 or tgt_in.shape[0] != src.shape[0] or tgt_in.shape[1] == 0:
                raise ValueError(
                    f"tgt_in must be ({src.shape[0]}, T) with T >= 1, got {tuple(tgt_in.shape)}"
                )
        if not values:
            return src, tgt_in
        S = src.shape[1]
        flags = [
            ((src_lengths < 1) | (src_lengths > S)).any().to(src.device),
            tokens_out_of_range(src, self.src_embed.num_embeddings),
        ]
        if tgt_in is not None:
            flags.append(tokens_out_of_range(tgt_in, self.tgt_vocab_size).to(src.device))
        bad = torch.stack(flags).tolist()  # the one sync
        if bad[0]:
            raise ValueError(f"src_lengths must lie in 1..{S}")
        if bad[1]:
            raise token_range_error(src, self.src_embed.num_embeddings, "src")
        if len(bad) > 2 and bad[2]:
            raise token_range_error(tgt_in, self.tgt_vocab_size, "tgt_in")
        return src, tgt_in

    def _check_target(self, ids: object, name: str, shape: str, rank: int) -> torch.Tensor:
        """Target-side token ids: integer dtype and rank; the values on CPU only (on CUDA
        reading them back would add a sync to every decoding step)."""
        ids = check_token_dtype(ids, name, shape)
        if ids.dim() != rank:
            raise ValueError(f"{name} must have shape {shape}, got {tuple(ids.shape)}")
        check_token_range(ids, self.tgt_vocab_size, name)
        return ids

    def _check_memory(self, enc: object, mask: object) -> None:
        """``enc`` ``(B, S, D)`` and ``mask`` ``(B, S)`` bool, as :meth:`encode` returns them."""
        if not isinstance(enc, torch.Tensor) or enc.dim() != 3 or enc.shape[2] != self.d_model:
            got = tuple(enc.shape) if isinstance(enc, torch.Tensor) else type(enc).__name__
            raise ValueError(f"enc must have shape (batch, S, {self.d_model}) (encode), got {got}")
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
            got = mask.dtype if isinstance(mask, torch.Tensor) else type(mask).__name__
            raise TypeError(f"mask must be a bool tensor (batch, S) (encode), got {got}")
        if mask.shape != enc.shape[:2]:
            raise ValueError(
                f"mask must have shape {tuple(enc.shape[:2])} (enc's batch and S), "
                f"got {tuple(mask.shape)}"
            )

    def encode(
        self, src: torch.Tensor, src_lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode right-padded sources.

        Args:
            src: ``(batch, S)`` token ids in ``[0, src_vocab_size)``; src_lengths: ``(batch,)``
                integers, each in ``1..S``.

        Returns:
            ``(enc, mask)``: encoder outputs ``(batch, S, D)`` and ``(batch, S)`` bool, True at
            valid positions.
        """
        src, _ = self._check_batch(src, src_lengths)
        return self._encode(src, src_lengths)

    def _encode(
        self, src: torch.Tensor, src_lengths: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.dropout(self.src_embed(src) * self.embed_scale)
        lengths = src_lengths.to(src.device)
        for layer in self.encoder:
            x = layer(x, lengths, self.dropout)
        mask = torch.arange(src.shape[1], device=src.device) < lengths.unsqueeze(1)
        return x, mask

    def _attend(self, h: torch.Tensor, enc: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Attention and output layer: h ``(B, T, D)`` -> logits ``(B, T, V)``."""
        scores = self.query(h) @ enc.transpose(1, 2) / self.embed_scale  # (B, T, S)
        scores = scores.masked_fill(~mask.unsqueeze(1), float("-inf"))
        context = torch.softmax(scores, dim=-1) @ enc
        o = torch.tanh(self.combine(torch.cat([context, h], dim=-1)))
        return self.out(self.dropout(o))

    def forward(
        self,
        src: torch.Tensor,
        src_lengths: torch.Tensor,
        tgt_in: torch.Tensor,
        *,
        check_values: bool = True,
    ) -> torch.Tensor:
        """Teacher forcing, in parallel over the target.

        Args:
            src: ``(batch, S)``; src_lengths: ``(batch,)``; tgt_in: ``(batch, T)`` the decoder
                input ``<s> y_1 .. y_{T-1}`` (right padding is harmless: everything is causal).
            check_values: check that ``src_lengths`` lie in ``1..S`` and the ids in their
                vocabularies, which reads them back: one host/device sync on an accelerator.
                ``False`` checks types and shapes only, for a batch checked on the host before
                it moved (:class:`~plmu.training.translation.TranslationModule` does that).

        Returns:
            logits ``(batch, T, tgt_vocab_size)`` for ``y_1 .. y_T``.
        """
        src, tgt_in = self._check_batch(src, src_lengths, tgt_in, values=check_values)
        enc, mask = self._encode(src, src_lengths)
        return self._decode_parallel(tgt_in, enc, mask)

    def decode_parallel(
        self, tgt_in: torch.Tensor, enc: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """Decoder + attention over a whole target prefix ``(B, T)`` -> logits ``(B, T, V)``.

        ``enc`` ``(B, S, D)`` and ``mask`` ``(B, S)`` come from :meth:`encode`.
        """
        tgt_in = self._check_target(tgt_in, "tgt_in", "(batch, T)", 2)
        self._check_memory(enc, mask)
        if tgt_in.shape[0] != enc.shape[0]:
            raise ValueError(
                f"tgt_in must have shape ({enc.shape[0]}, T) (the batch of enc), "
                f"got {tuple(tgt_in.shape)}"
            )
        return self._decode_parallel(tgt_in, enc, mask)

    def _decode_parallel(
        self, tgt_in: torch.Tensor, enc: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        x = self.dropout(self.tgt_embed(tgt_in) * self.embed_scale)
        for layer in self.decoder:
            x = layer(x, self.dropout)
        return self._attend(x, enc, mask)

    def decode_step(
        self,
        y_prev: torch.Tensor,
        states: list[torch.Tensor | None],
        enc: torch.Tensor,
        mask: torch.Tensor,
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """One decoder step, the RNN form.

        Args:
            y_prev: ``(B,)`` the previous token (``<s>`` first), in ``[0, tgt_vocab_size)``.
            states: one ``(B, memory_size * order)`` memory (or ``None``) per decoder layer.
            enc, mask: from :meth:`encode`.

        Returns:
            ``(logits (B, V), new states)``.

        Raises:
            ValueError: ``states`` not a list of one entry per decoder layer, ``enc`` and
                ``mask`` not as :meth:`encode` returns them, or ``y_prev`` not ``(B,)`` with
                ``B`` the batch of ``enc``.
            TypeError: a ``mask`` that is not a bool tensor.
        """
        y_prev = self._check_target(y_prev, "y_prev", "(batch,)", 1)
        n = len(self.decoder)
        if not isinstance(states, (list, tuple)) or len(states) != n:
            is_list = isinstance(states, (list, tuple))
            got = f"{len(states)} entries" if is_list else type(states).__name__
            raise ValueError(
                f"states must be a list of {n} tensors or None (one per decoder layer), got {got}"
            )
        self._check_memory(enc, mask)
        if y_prev.shape[0] != enc.shape[0]:
            raise ValueError(
                f"y_prev must have shape ({enc.shape[0]},) (the batch of enc), "
                f"got {tuple(y_prev.shape)}"
            )
        x = self.dropout(self.tgt_embed(y_prev) * self.embed_scale)  # as in forward
        new_states = []
        for layer, state in zip(self.decoder, states):
            x, state = layer.step(x, state, self.dropout)
            new_states.append(state)
        return self._attend(x.unsqueeze(1), enc, mask).squeeze(1), new_states

    # ------------------------------------------------------------------------ decoding

    @staticmethod
    def _log_probs(logits: torch.Tensor) -> torch.Tensor:
        logp = torch.log_softmax(logits.float(), dim=-1)
        logp[..., list(BANNED_TOKENS)] = float("-inf")
        return logp

    def _max_lengths(self, max_len: int | torch.Tensor, batch: int, device) -> torch.Tensor:
        if isinstance(max_len, torch.Tensor):
            if not _integer_dtype(max_len.dtype):
                raise TypeError(f"max_len must be an int or hold integers, got {max_len.dtype}")
            out = max_len.to(device=device, dtype=torch.long)
            if out.shape != (batch,):
                raise ValueError(f"max_len must be an int or ({batch},), got {tuple(out.shape)}")
        elif isinstance(max_len, numbers.Integral) and not isinstance(max_len, bool):
            out = torch.full((batch,), int(max_len), dtype=torch.long, device=device)
        else:
            raise TypeError(
                f"max_len must be an int or a ({batch},) integer tensor, got {max_len!r}"
            )
        if bool((out < 1).any()):
            raise ValueError("max_len must be >= 1")
        return out

    @staticmethod
    def _strip(rows: torch.Tensor, lengths: torch.Tensor) -> list[list[int]]:
        out = []
        for row, n in zip(rows.tolist(), lengths.tolist()):
            row = row[:n]
            out.append(row[:-1] if row and row[-1] == EOS_ID else row)
        return out

    @torch.no_grad()
    def greedy(
        self, src: torch.Tensor, src_lengths: torch.Tensor, max_len: int | torch.Tensor
    ) -> list[list[int]]:
        """Greedy decoding in the step form.

        Args:
            src, src_lengths: as for :meth:`encode`.
            max_len: most generated tokens (``</s>`` included), an int or a ``(batch,)`` integer
                tensor.

        Returns:
            one token list per source, without ``</s>`` (none for an empty batch). Dropout
            applies in training mode, as in ``forward``: call ``eval()`` first.
        """
        enc, mask = self.encode(src, src_lengths)
        B = src.shape[0]
        limit = self._max_lengths(max_len, B, src.device)
        if B == 0:
            return []
        y = torch.full((B,), BOS_ID, dtype=torch.long, device=src.device)
        states: list[torch.Tensor | None] = [None] * len(self.decoder)
        finished = torch.zeros(B, dtype=torch.bool, device=src.device)
        lengths = torch.zeros(B, dtype=torch.long, device=src.device)
        tokens = []
        for t in range(int(limit.max())):
            logits, states = self.decode_step(y, states, enc, mask)
            y = self._log_probs(logits).argmax(-1)
            y = torch.where(finished, torch.full_like(y, PAD_ID), y)
            tokens.append(y)
            lengths += (~finished).long()
            finished |= (y == EOS_ID) | (t + 1 >= limit)
            if bool(finished.all()):
                break
        return self._strip(torch.stack(tokens, 1), lengths)

    @torch.no_grad()
    def beam_search(
        self,
        src: torch.Tensor,
        src_lengths: torch.Tensor,
        max_len: int | torch.Tensor,
        beam_size: int = 5,
        length_penalty: float = 1.0,
    ) -> list[list[int]]:
        """Length-normalised beam search in the step form (see the module docstring).

        Args:
            src, src_lengths, max_len: as for :meth:`greedy`.
            beam_size: hypotheses kept per source (``1`` equals :meth:`greedy`).
            length_penalty: exponent ``alpha`` of the normaliser ``length ** alpha``.

        Returns:
            the best hypothesis per source, without ``</s>`` (none for an empty batch). Dropout
            applies in training mode, as in ``forward``: call ``eval()`` first.

        Raises:
            TypeError: a ``beam_size`` that is not an int, a ``length_penalty`` that is not a
                real number (a ``str``, a ``bool``).
            ValueError: ``beam_size < 1``, a ``length_penalty`` below 0 or not finite.
        """
        beam_size = _check_positive_int(beam_size, "beam_size")
        length_penalty = _check_real(length_penalty, "length_penalty")
        if not (math.isfinite(length_penalty) and length_penalty >= 0):
            raise ValueError(f"length_penalty must be finite and >= 0, got {length_penalty}")
        enc, mask = self.encode(src, src_lengths)
        B, K, dev = src.shape[0], beam_size, src.device
        limit = self._max_lengths(max_len, B, dev).unsqueeze(1)  # (B, 1)
        if B == 0:
            return []
        enc, mask = enc.repeat_interleave(K, 0), mask.repeat_interleave(K, 0)
        V = self.tgt_vocab_size
        scores = torch.full((B, K), float("-inf"), device=dev)
        scores[:, 0] = 0.0  # one live hypothesis to start with
        lengths = torch.zeros(B, K, dtype=torch.long, device=dev)
        finished = torch.zeros(B, K, dtype=torch.bool, device=dev)
        tokens = torch.zeros(B, K, 0, dtype=torch.long, device=dev)
        # a finished hypothesis only continues with free padding: candidate k * V + <pad>
        stay = (torch.arange(K, device=dev) * V + PAD_ID).expand(B, K)
        y = torch.full((B * K,), BOS_ID, dtype=torch.long, device=dev)
        states: list[torch.Tensor | None] = [None] * len(self.decoder)
        offsets = torch.arange(B, device=dev).unsqueeze(1) * K
        rows_b = torch.arange(B, device=dev)
        T_max = int(limit.max())
        # the best finished hypothesis so far per source: a finished hypothesis can later be
        # pushed out of the beam by live ones whose score then falls, but it was found
        best_key = torch.full((B,), -math.inf, dtype=_key_dtype(dev), device=dev)
        best_tokens = torch.zeros(B, T_max, dtype=torch.long, device=dev)
        best_len = torch.zeros(B, dtype=torch.long, device=dev)
        for t in range(T_max):
            logits, states = self.decode_step(y, states, enc, mask)
            logp = self._log_probs(logits).view(B, K, V)
            # every live hypothesis grows to length t + 1: its K best continuations by the raw
            # score are the K best by the normalised one
            total = (scores.unsqueeze(-1) + logp).masked_fill(finished.unsqueeze(-1), -math.inf)
            live_scores, live_idx = total.view(B, K * V).topk(K, dim=1)
            # they compete with the finished hypotheses (which stay as they are) for the K slots
            cand_scores = torch.cat([live_scores, scores.masked_fill(~finished, -math.inf)], 1)
            cand_len = torch.cat([torch.full_like(lengths, t + 1), lengths], 1)
            _, pick = _normalised_key(cand_scores, cand_len, length_penalty).topk(K, dim=1)
            idx = torch.cat([live_idx, stay], 1).gather(1, pick)
            beam, tok = idx // V, idx % V
            scores = cand_scores.gather(1, pick)
            lengths = cand_len.gather(1, pick)
            was_finished = pick >= K
            finished = was_finished | (tok == EOS_ID) | (lengths >= limit)
            tokens = torch.cat(
                [tokens.gather(1, beam.unsqueeze(-1).expand(-1, -1, t)), tok.unsqueeze(-1)], -1
            )
            just = finished & ~was_finished
            now = _normalised_key(scores, lengths, length_penalty)
            cand, k = torch.where(just, now, -math.inf).max(1)
            better = cand > best_key
            if bool(better.any()):
                best_key = torch.where(better, cand, best_key)
                best_len = torch.where(better, lengths[rows_b, k], best_len)
                best_tokens[better] = 0
                best_tokens[better, : t + 1] = tokens[rows_b, k][better]
            flat = (offsets + beam).view(-1)
            states = [s.index_select(0, flat) for s in states]
            y = tok.view(-1)
            if bool(finished.all()):
                break
        # every hypothesis has finished by now (</s> or its length limit), each recorded
        return self._strip(best_tokens, best_len)

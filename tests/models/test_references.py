"""The model wrappers against independent float64 references written from their weights.

The other model tests compare a model with itself (parallel form against step form, chunks,
padding), which a change shared by every form would pass: a dropped residual, a missing
LayerNorm, a wrong embedding scale. Here each forward is written out from the parameters with
plain tensor algebra: the Legendre memory from PAPER.md 1 (``A``, ``B``, zero-order hold via
``scipy.linalg.expm``), the parallel LMU from PAPER.md 3 (``u = U_x x + b_u``, ``m_t = Abar
m_{t-1} + Bbar u_t``, ``o = f_o(W_m m + W_x x + b)``) stepped one time step at a time, and the
architectures from the models' docstrings (PAPER.md gives none for text8, the text
classifiers or IWSLT). Every parameter is perturbed first, so LayerNorm gains and biases are not
their identity initialisations.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch

import plmu
from plmu.models import SequenceClassifier, SequenceRegressor
from plmu.models.language_model import LMULanguageModel
from plmu.models.seq2seq import LMUSeq2Seq
from plmu.models.text import PairClassifier, TextClassifier

TOL = {"rtol": 1e-9, "atol": 1e-10}


def _zoh(order: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``Abar`` ``(d, d)`` and ``Bbar`` ``(d,)``: PAPER.md 1's ``A``, ``B``, zero-order hold."""
    i = np.arange(order)[:, None]
    j = np.arange(order)[None, :]
    A = (2 * i + 1) * np.where(i < j, -1.0, (-1.0) ** (i - j + 1))
    B = (2 * np.arange(order) + 1) * (-1.0) ** np.arange(order)
    M = np.zeros((order + 1, order + 1))
    M[:order, :order], M[:order, order] = A / theta, B / theta
    E = scipy.linalg.expm(M)
    return torch.from_numpy(E[:order, :order]), torch.from_numpy(E[:order, order])


def _linear(layer: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
    y = x @ layer.weight.T
    return y if layer.bias is None else y + layer.bias


def _layer_norm(norm: torch.nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + norm.eps) * norm.weight + norm.bias


ACTIVATIONS = {"relu": lambda z: z.clamp_min(0.0), "tanh": torch.tanh, "identity": lambda z: z}


def _parallel_lmu(
    layer: plmu.ParallelLMU, x: torch.Tensor, act: str, state: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """PAPER.md 3 one step at a time: outputs ``(B, T, hidden)`` and the last memory ``(B, C
    d)`` for ``x`` ``(B, T, in)``; ``f_u`` the identity, ``W_x x`` in the output."""
    Bn, T, _ = x.shape
    C, d = layer.memory_size, layer.order
    Abar, Bbar = _zoh(d, layer.memory.theta)
    u = _linear(layer.encoder, x)  # (B, T, C)
    m = x.new_zeros(Bn, C, d) if state is None else state.reshape(Bn, C, d)
    outputs = []
    for t in range(T):
        m = m @ Abar.T + u[:, t, :, None] * Bbar
        z = torch.cat([m.reshape(Bn, C * d), x[:, t]], -1)
        outputs.append(ACTIVATIONS[act](_linear(layer.output, z)))
    return torch.stack(outputs, 1), m.reshape(Bn, C * d)


def _perturbed(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """``model`` in float64, eval mode, every parameter moved off its initial value."""
    model = model.double().eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn(p.shape, dtype=p.dtype, generator=gen))
    return model


def _tokens(vocab: int, *shape: int, low: int = 0, seed: int = 1) -> torch.Tensor:
    return torch.randint(low, vocab, shape, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------- the language model (text8)


def _language_model(
    model: LMULanguageModel, tokens: torch.Tensor, act: str, state: list | None = None
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Embedding (unscaled), ``h = h + LMU(LayerNorm(h))`` per block, final LayerNorm, head."""
    h = model.embedding.weight[tokens]
    new_state = []
    for i, (norm, layer) in enumerate(zip(model.norms, model.layers, strict=True)):
        y, s = _parallel_lmu(layer, _layer_norm(norm, h), act, None if state is None else state[i])
        h = h + y
        new_state.append(s)
    return _linear(model.head, _layer_norm(model.norm, h)), new_state


@pytest.mark.parametrize(("act", "memory_size", "mode"), [("relu", 2, "auto"), ("tanh", 1, "fft")])
def test_language_model_equals_its_reference(act, memory_size, mode):
    """Logits and per-layer memories of :class:`LMULanguageModel`, from zero state and
    continuing a carried one (forward and step form), against :func:`_language_model`."""
    kwargs = {"vocab_size": 11, "d_model": 5, "num_layers": 2, "order": 4, "theta": 7.0}
    model = _perturbed(
        LMULanguageModel(**kwargs, memory_size=memory_size, hidden_activation=act, mode=mode)
    )
    tokens = _tokens(11, 2, 25)
    with torch.no_grad():
        expected, expected_state = _language_model(model, tokens[:, :20], act)
        got, state = model(tokens[:, :20])
        torch.testing.assert_close(got, expected, **TOL)
        for s, e in zip(state, expected_state, strict=True):
            torch.testing.assert_close(s, e, **TOL)
        more, _ = _language_model(model, tokens[:, 20:], act, expected_state)
        torch.testing.assert_close(model(tokens[:, 20:], state)[0], more, **TOL)
        torch.testing.assert_close(model.step(tokens[:, 20], state)[0], more[:, 0], **TOL)


# ------------------------------------------------- stacks: the regressor and the classifier


def _stack(stack, x: torch.Tensor, act: str) -> torch.Tensor:
    """Each parallel LMU layer feeding the next (every step)."""
    for layer in stack.layers:
        x, _ = _parallel_lmu(layer, x, act)
    return x


@pytest.mark.parametrize("act", ["relu", "tanh"])
def test_regressor_equals_its_reference(act):
    """:class:`SequenceRegressor`: a stack of parallel LMUs, a linear read-out at every step."""
    net = _perturbed(
        SequenceRegressor(
            2, 3, "parallel-lmu", 4, 2, order=3, theta=5.0, memory_size=2, hidden_activation=act
        )
    )
    x = torch.randn(2, 13, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(net(x), _linear(net.head, _stack(net.stack, x, act)), **TOL)


def test_classifier_equals_its_reference():
    """:class:`SequenceClassifier`: the stack's last layer read at each sequence's length."""
    net = _perturbed(SequenceClassifier(1, 4, "parallel-lmu", 5, 2, order=6, theta=9.0))
    x = torch.randn(3, 11, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    lengths = torch.tensor([11, 6, 1])
    with torch.no_grad():
        h = _stack(net.stack, x, "relu")
        expected = _linear(net.head, h[torch.arange(3), lengths - 1])
        torch.testing.assert_close(net(x, lengths), expected, **TOL)


# ----------------------------------------------------------------------- text classifiers

ENCODER = {"vocab_size": 13, "embedding_dim": 3, "hidden_size": 4, "order": 3, "theta": 6.0}


def _encode(encoder, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Embedding, the stack, each text's output at its last token."""
    h = _stack(encoder.stack, encoder.embedding.weight[ids], "relu")
    return h[torch.arange(ids.shape[0]), lengths - 1]


def test_text_classifier_equals_its_reference():
    """:class:`TextClassifier`: encoder and a linear head."""
    net = _perturbed(TextClassifier(3, num_layers=2, memory_size=2, **ENCODER))
    ids, lengths = _tokens(13, 3, 9, low=1), torch.tensor([9, 4, 2])
    with torch.no_grad():
        expected = _linear(net.head[1], _encode(net.encoder, ids, lengths))
        torch.testing.assert_close(net(ids, lengths), expected, **TOL)


def test_pair_classifier_equals_its_reference():
    """:class:`PairClassifier`: one encoder for both texts, ``[a, b, |a - b|, a * b]``, an MLP
    (linear, ReLU, linear)."""
    net = _perturbed(PairClassifier(3, 6, **ENCODER))
    ids_a, lengths_a = _tokens(13, 2, 7, low=1), torch.tensor([7, 3])
    ids_b, lengths_b = _tokens(13, 2, 10, low=1, seed=4), torch.tensor([2, 10])
    with torch.no_grad():
        a = _encode(net.encoder, ids_a, lengths_a)
        b = _encode(net.encoder, ids_b, lengths_b)
        z = torch.cat([a, b, (a - b).abs(), a * b], -1)
        expected = _linear(net.head[3], _linear(net.head[0], z).clamp_min(0.0))
        torch.testing.assert_close(net(ids_a, lengths_a, ids_b, lengths_b), expected, **TOL)


# ------------------------------------------------------------------ the seq2seq model (IWSLT)


def _reversed(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Each sequence's first ``length`` steps reversed, one sequence at a time."""
    out = x.clone()
    for b, n in enumerate(lengths.tolist()):
        out[b, :n] = x[b, :n].flip(0)
    return out


def _seq2seq(
    model: LMUSeq2Seq, src: torch.Tensor, lengths: torch.Tensor, tgt_in: torch.Tensor
) -> torch.Tensor:
    """The module docstring's architecture: embeddings scaled by ``sqrt(D)``; encoder layers
    ``LayerNorm(x + W [LMU(x); rev(LMU_b(rev(x)))])``; decoder layers ``LayerNorm(x +
    LMU(x))``; Luong attention over the valid source positions (scores divided by ``sqrt(D)``),
    ``tanh(W_c [c; h])``, the output projection."""
    D = model.d_model
    x = model.src_embed.weight[src] * math.sqrt(D)
    for layer in model.encoder:
        y, _ = _parallel_lmu(layer.forward_lmu, x, "relu")
        if layer.backward_lmu is not None:
            yb, _ = _parallel_lmu(layer.backward_lmu, _reversed(x, lengths), "relu")
            y = torch.cat([y, _reversed(yb, lengths)], -1)
        x = _layer_norm(layer.norm, x + _linear(layer.merge, y))
    enc = x
    h = model.tgt_embed.weight[tgt_in] * math.sqrt(D)
    for layer in model.decoder:
        y, _ = _parallel_lmu(layer.lmu, h, "relu")
        h = _layer_norm(layer.norm, h + y)
    scores = (h @ model.query.weight.T) @ enc.transpose(1, 2) / math.sqrt(D)
    valid = torch.arange(src.shape[1]) < lengths[:, None]  # (B, S)
    scores = scores.masked_fill(~valid[:, None], -math.inf)
    context = torch.softmax(scores, -1) @ enc
    o = torch.tanh(_linear(model.combine, torch.cat([context, h], -1)))
    return _linear(model.out, o)


@pytest.mark.parametrize("bidirectional", [True, False])
def test_seq2seq_equals_its_reference(bidirectional):
    """:class:`LMUSeq2Seq` teacher forcing against :func:`_seq2seq` (tied embeddings)."""
    model = _perturbed(
        LMUSeq2Seq(9, 10, d_model=4, order=3, theta=5.0, memory_size=2, bidirectional=bidirectional)
    )
    src, lengths = _tokens(9, 2, 8, low=4), torch.tensor([8, 5])
    tgt_in = _tokens(10, 2, 6, low=4, seed=5)
    with torch.no_grad():
        expected = _seq2seq(model, src, lengths, tgt_in)
        torch.testing.assert_close(model(src, lengths, tgt_in), expected, **TOL)

"""Text classifiers: shapes, and padding never changes a prediction."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from plmu.data.text_classification import pad
from plmu.models.text import PairClassifier, TextClassifier

ENCODER = {"vocab_size": 50, "embedding_dim": 6, "hidden_size": 8, "order": 5, "theta": 12.0}


def _texts(lengths: list[int], seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(1, 50, (n,), generator=g) for n in lengths]


@settings(max_examples=10, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 90), min_size=2, max_size=5),
    num_layers=st.integers(1, 2),
    memory_size=st.integers(1, 3),
    kind=st.sampled_from(["parallel-lmu", "parallel-lmu", "lmu", "lstm"]),
)
def test_text_prediction_is_the_same_alone_or_batched_with_longer_texts(
    lengths, num_layers, memory_size, kind
):
    torch.manual_seed(0)
    model = TextClassifier(
        3, num_layers=num_layers, memory_size=memory_size, model=kind, **ENCODER
    ).eval()
    texts = _texts(lengths, seed=sum(lengths))
    with torch.no_grad():
        batched = model(*pad(texts))
        alone = torch.cat([model(*pad([t])) for t in texts])
    assert batched.shape == (len(lengths), 3)
    torch.testing.assert_close(batched, alone, rtol=1e-5, atol=1e-5)


@settings(max_examples=10, deadline=None)
@given(
    lengths_a=st.lists(st.integers(1, 70), min_size=3, max_size=3),
    lengths_b=st.lists(st.integers(1, 70), min_size=3, max_size=3),
)
def test_pair_prediction_is_the_same_alone_or_batched(lengths_a, lengths_b):
    torch.manual_seed(1)
    model = PairClassifier(3, mlp_hidden=7, num_layers=2, **ENCODER).eval()
    a, b = _texts(lengths_a, 1), _texts(lengths_b, 2)
    with torch.no_grad():
        batched = model(*pad(a), *pad(b))
        alone = torch.cat([model(*pad([x]), *pad([y])) for x, y in zip(a, b)])
    torch.testing.assert_close(batched, alone, rtol=1e-5, atol=1e-5)


def test_pair_features_are_symmetric_in_swapping_nothing_but_order():
    """[a, b, |a-b|, a*b] puts a and b in distinct slots: swapping the texts changes the logits,
    while the same text on both sides gives |a-b| = 0."""
    torch.manual_seed(2)
    model = PairClassifier(2, mlp_hidden=5, **ENCODER).eval()
    x, y = pad(_texts([4], 3)), pad(_texts([6], 4))
    with torch.no_grad():
        assert not torch.allclose(model(*x, *y), model(*y, *x))
        a = model.encoder(*x)
        features = torch.cat([a, a, (a - a).abs(), a * a], dim=-1)
        torch.testing.assert_close(model(*x, *x), model.head(features))
        # two different texts (of different widths): each feature in its slot (the same text
        # twice cannot tell a * b from a * a, nor a and b swapped in the first two slots)
        b = model.encoder(*y)
        features = torch.cat([a, b, (a - b).abs(), a * b], dim=-1)
        torch.testing.assert_close(model(*x, *y), model.head(features), rtol=1e-5, atol=1e-6)


def test_the_classifier_learns_a_token_rule():
    """Label = whether token 7 occurs anywhere: a few Adam steps reach it on training data."""
    torch.manual_seed(0)
    model = TextClassifier(2, **ENCODER)
    texts = _texts([int(n) for n in torch.randint(3, 30, (64,))], seed=5)
    texts = [t[t != 7] if i % 2 else torch.cat([t, torch.tensor([7])]) for i, t in enumerate(texts)]
    texts = [t if len(t) else torch.tensor([3]) for t in texts]
    labels = torch.tensor([1 - i % 2 for i in range(64)])
    ids, lengths = pad(texts)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.03)
    for _ in range(60):
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(ids, lengths), labels)
        loss.backward()
        optimizer.step()
    accuracy = (model(ids, lengths).argmax(-1) == labels).float().mean()
    assert accuracy > 0.9


def test_bad_ids_are_an_error():
    model = TextClassifier(2, **ENCODER)
    with pytest.raises(TypeError, match="ids must hold integer token ids"):
        model(torch.zeros(2, 3), torch.tensor([3, 3]))
    with pytest.raises(ValueError, match="lengths must lie in"):
        model(torch.ones(2, 3, dtype=torch.long), torch.tensor([0, 3]))


def test_pair_lengths_are_checked_against_their_own_side():
    """Both sides run padded to the longer one, so a ``lengths_a`` past ``ids_a``'s width would
    read padding: an error naming the argument instead."""
    model = PairClassifier(2, mlp_hidden=5, **ENCODER)
    a, b = torch.ones(2, 3, dtype=torch.long), torch.ones(2, 6, dtype=torch.long)
    with pytest.raises(ValueError, match=r"lengths_a must lie in \[1, 3\]"):
        model(a, torch.tensor([3, 5]), b, torch.tensor([6, 6]))
    with pytest.raises(ValueError, match=r"lengths_b must have shape \(2,\)"):
        model(a, torch.tensor([3, 3]), b, torch.tensor([6]))
    with pytest.raises(TypeError, match="lengths_b must be a tensor"):
        model(a, torch.tensor([3, 3]), b, None)
    with pytest.raises(ValueError, match="same batch size"):
        model(a, torch.tensor([3, 3]), b[:1], torch.tensor([6]))
    assert model(a, torch.tensor([3, 1]), b, torch.tensor([6, 2])).shape == (2, 2)

import pytest
import torch

from plmu.models import MODELS, RecurrentStack, SequenceClassifier, SequenceRegressor


@pytest.mark.parametrize("model", MODELS)
def test_regressor_shapes_and_causality(model: str) -> None:
    net = SequenceRegressor(2, 3, model, hidden_size=5, num_layers=2, order=4, theta=6.0)
    x = torch.randn(4, 12, 2)
    y = net(x)
    assert y.shape == (4, 12, 3)
    x2 = x.clone()
    x2[:, 8:] += 1.0  # changing the future leaves the past unchanged
    assert torch.allclose(net(x2)[:, :8], y[:, :8], atol=1e-5)


@pytest.mark.parametrize("model", MODELS)
def test_classifier_reads_each_sequence_at_its_length(model: str) -> None:
    net = SequenceClassifier(1, 10, model, hidden_size=6, num_layers=2, order=4, theta=8.0)
    x = torch.randn(3, 9, 1)
    lengths = torch.tensor([9, 5, 2])
    logits = net(x, lengths)
    assert logits.shape == (3, 10)
    for b, n in enumerate(lengths.tolist()):  # padding after the length changes nothing
        alone = net(x[b : b + 1, :n])
        assert torch.allclose(logits[b], alone[0], atol=1e-5)


def test_stack_arguments_checked() -> None:
    with pytest.raises(ValueError, match="model must be one of"):
        RecurrentStack("gru", 1, 4)
    with pytest.raises(ValueError, match="num_layers"):
        RecurrentStack("lstm", 1, 4, num_layers=0)
    with pytest.raises(ValueError, match="needs order and theta"):
        RecurrentStack("parallel-lmu", 1, 4)


def test_parallel_lmu_classifier_uses_the_last_state_only() -> None:
    net = SequenceClassifier(1, 10, "parallel-lmu", hidden_size=8, order=16, theta=784.0)
    assert net.stack.layers[-1].return_sequences is False

"""LMULanguageModel: shapes, parallel == step == chunked, gradients, bad input."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from plmu.models.language_model import LMULanguageModel


def small_model(dtype=torch.float64, **kwargs) -> LMULanguageModel:
    args = {"vocab_size": 27, "d_model": 24, "num_layers": 3, "order": 12, "theta": 40.0}
    args.update(kwargs)
    return LMULanguageModel(memory_size=2, **args).to(dtype).eval()


def run_steps(model, tokens, state=None):
    outputs = []
    for t in range(tokens.shape[1]):
        logits, state = model.step(tokens[:, t], state)
        outputs.append(logits)
    return torch.stack(outputs, dim=1), state


def test_shapes():
    model = small_model()
    logits, state = model(torch.randint(0, 27, (4, 30)))
    assert logits.shape == (4, 30, 27)
    assert len(state) == 3 and all(s.shape == (4, 2 * 12) for s in state)


@settings(max_examples=10, deadline=None)
@given(
    time=st.integers(min_value=1, max_value=90),
    batch=st.integers(min_value=1, max_value=3),
    mode=st.sampled_from(["auto", "fused", "fft", "direct", "chunked", "recurrent"]),
)
def test_step_form_equals_parallel_form(time, batch, mode):
    model = small_model(mode=mode)
    tokens = torch.randint(0, 27, (batch, time))
    parallel, state_p = model(tokens)
    stepped, state_s = run_steps(model, tokens)
    torch.testing.assert_close(stepped, parallel, rtol=1e-9, atol=1e-9)
    for a, b in zip(state_s, state_p):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("split_at", [1, 17, 63])
def test_chunks_with_carried_state_equal_one_call(split_at):
    model = small_model()
    tokens = torch.randint(0, 27, (2, 80))
    whole, _ = model(tokens)
    first, state = model(tokens[:, :split_at])
    second, _ = model(tokens[:, split_at:], state)
    torch.testing.assert_close(torch.cat([first, second], 1), whole, rtol=1e-9, atol=1e-9)


def test_float32_step_form_close_to_parallel():
    model = small_model(dtype=torch.float32)
    tokens = torch.randint(0, 27, (2, 200))
    parallel, _ = model(tokens)
    stepped, _ = run_steps(model, tokens)
    torch.testing.assert_close(stepped, parallel, rtol=1e-4, atol=1e-4)


def test_model_is_causal():
    model = small_model()
    tokens = torch.randint(0, 27, (1, 50))
    changed = tokens.clone()
    changed[0, 30] = (changed[0, 30] + 1) % 27
    a, _ = model(tokens)
    b, _ = model(changed)
    torch.testing.assert_close(a[:, :30], b[:, :30])
    assert not torch.allclose(a[:, 30:], b[:, 30:])


def test_every_parameter_gets_a_gradient():
    model = small_model(dtype=torch.float32, dropout=0.1).train()
    logits, _ = model(torch.randint(0, 27, (2, 70)))
    logits.logsumexp(-1).mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert missing == []


@pytest.mark.parametrize(
    ("tokens", "error", "match"),
    [
        (torch.zeros(2, 5), TypeError, "tokens must hold integer token ids"),
        (torch.zeros(5, dtype=torch.long), ValueError, r"\(batch, time\)"),
        (torch.zeros(2, 0, dtype=torch.long), ValueError, r"\(batch, time\)"),
        (torch.full((1, 3), 27), ValueError, r"tokens must hold token ids in \[0, 27\), got 27"),
        (torch.tensor([[3, -2, 30]]), ValueError, r"\[0, 27\), got -2, 30"),
        ([[1, 2]], TypeError, "torch.Tensor"),
    ],
)
def test_bad_tokens(tokens, error, match):
    with pytest.raises(error, match=match):
        small_model()(tokens)


def test_bad_state_and_step_input():
    model = small_model()
    with pytest.raises(ValueError, match="list of 3 tensors"):
        model(torch.zeros(1, 4, dtype=torch.long), state=[torch.zeros(1, 24)])
    with pytest.raises(ValueError, match=r"\(batch,\)"):
        model.step(torch.zeros(1, 1, dtype=torch.long))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"d_model": 0}, ValueError, "d_model"),
        ({"num_layers": 0}, ValueError, "num_layers"),
        ({"vocab_size": 1.5}, TypeError, "vocab_size"),  # a wrong type (tests/test_errors.py)
    ],
)
def test_bad_constructor_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        small_model(**kwargs)

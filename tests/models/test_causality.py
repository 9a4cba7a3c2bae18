"""Causality of every model meant to be causal: the output at step t never depends on inputs
after t (float64; the FFT-based paths mix all values in their rounding, hence 1e-10 there, and
exact equality for the others)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from plmu import LMU, ParallelLMU
from plmu.layers import LAYER_MODES
from plmu.models import MODELS, LMUSeq2Seq, RecurrentStack
from plmu.models.language_model import LMULanguageModel

EXACT_MODES = ("direct", "chunked", "recurrent")


def assert_past_unchanged(run, x: torch.Tensor, t: int, exact: bool) -> None:
    """Perturb ``x[:, t + 1:]`` and compare ``run``'s outputs at steps ``0..t``."""
    changed = x.clone()
    if x.dtype == torch.long:
        changed[:, t + 1 :] = (changed[:, t + 1 :] + 7) % 20 + 4
    else:
        changed[:, t + 1 :] = 5 * torch.randn_like(changed[:, t + 1 :])
    before, after = run(x)[:, : t + 1], run(changed)[:, : t + 1]
    if exact:
        assert torch.equal(before, after)
    else:
        torch.testing.assert_close(before, after, rtol=0, atol=1e-10)


@settings(max_examples=25, deadline=None)
@given(
    mode=st.sampled_from(LAYER_MODES),
    time=st.integers(2, 90),
    memory_size=st.integers(1, 3),
    memory_activation=st.sampled_from(["identity", "tanh"]),
    input_to_output=st.booleans(),
    grad=st.booleans(),
    data=st.data(),
)
def test_parallel_lmu_is_causal_in_every_mode(
    mode, time, memory_size, memory_activation, input_to_output, grad, data
):
    torch.manual_seed(time)
    layer = ParallelLMU(
        2,
        5,
        order=6,
        theta=9.0,
        memory_size=memory_size,
        memory_activation=memory_activation,
        input_to_output=input_to_output,
        mode=mode,
    ).double()
    x = torch.randn(3, time, 2, dtype=torch.float64)
    state = (
        torch.randn(3, layer.state_size, dtype=torch.float64) if data.draw(st.booleans()) else None
    )
    t = data.draw(st.integers(0, time - 2))
    with torch.set_grad_enabled(grad):
        assert_past_unchanged(lambda z: layer(z, state)[0], x, t, mode in EXACT_MODES)


@pytest.mark.parametrize("model", MODELS)
def test_original_lmu_and_stacks_are_causal(model):
    torch.manual_seed(0)
    x = torch.randn(3, 40, 2, dtype=torch.float64)
    stack = RecurrentStack(model, 2, 4, 2, order=6, theta=9.0, memory_size=2).double()
    for t in (0, 17, 38):
        assert_past_unchanged(stack, x, t, exact=model != "parallel-lmu")
    lmu = LMU(2, 4, order=6, theta=9.0).double()
    assert_past_unchanged(lambda z: lmu(z)[0], x, 17, exact=True)


@pytest.mark.parametrize("mode", LAYER_MODES)
def test_language_model_is_causal_in_every_mode(mode):
    torch.manual_seed(1)
    model = LMULanguageModel(27, 8, 2, order=6, theta=12.0, memory_size=2, mode=mode)
    model = model.double().eval()
    tokens = torch.randint(0, 27, (2, 130))
    for t in (0, 64, 128):
        assert_past_unchanged(lambda z: model(z)[0], tokens, t, mode in EXACT_MODES)


def test_seq2seq_decoder_is_causal():
    torch.manual_seed(2)
    model = LMUSeq2Seq(24, 24, d_model=8, order=4, theta=8.0, memory_size=2).double().eval()
    src = torch.randint(4, 24, (2, 7))
    lengths = torch.tensor([7, 4])
    tgt_in = torch.randint(4, 24, (2, 60))
    for t in (0, 30, 58):
        assert_past_unchanged(lambda z: model(src, lengths, z), tgt_in, t, exact=False)

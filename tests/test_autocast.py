"""Mixed precision: under ``torch.autocast`` every path runs, and the memory stays float32."""

import numpy as np
import pytest
import torch

import plmu

CASES = {
    "scalar last output (psMNIST)": dict(input_size=1, memory_size=1, return_sequences=False),
    "folded last state": dict(input_size=2, memory_size=3, return_sequences=False),
    "last state": dict(input_size=3, memory_size=2, return_sequences=False),
    "fused, one channel": dict(input_size=1, memory_size=1, mode="fused"),
    "fused, several channels": dict(input_size=3, memory_size=4, mode="fused"),
    "fft": dict(input_size=3, memory_size=2, mode="fft"),
    "recurrent": dict(input_size=3, memory_size=2, mode="recurrent"),
    "chunked": dict(input_size=3, memory_size=2, mode="chunked"),
    "direct": dict(input_size=3, memory_size=2, mode="direct"),
}


def _run(layer, x, state):
    y, m = layer(x, state)
    (y.float().square().mean() + m.float().square().mean()).backward()
    grads = [p.grad.clone() for p in layer.parameters()]
    layer.zero_grad()
    return y.detach().float(), m.detach(), grads


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("time", [40, 700])  # 700: several free-response horizons (blocks)
def test_autocast_bfloat16_runs_every_path(case, time):
    torch.manual_seed(0)
    layer = plmu.ParallelLMU(hidden_size=6, order=8, theta=20.0, **CASES[case])
    x = torch.randn(2, time, layer.input_size)
    state = 0.1 * torch.randn(2, layer.state_size)
    y32, m32, g32 = _run(layer, x, state)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y16, m16, g16 = _run(layer, x, state)
    assert m16.dtype == torch.float32  # the memory itself never runs in bfloat16
    for got, want in [(y16, y32), (m16, m32), *zip(g16, g32)]:
        assert torch.isfinite(got).all()
        scale = float(want.abs().max()) + 1e-6
        np.testing.assert_allclose(got.float().numpy(), want.numpy(), atol=0.05 * scale)


@pytest.mark.parametrize("grad", [True, False])
def test_autocast_step_keeps_a_float32_state(grad):
    """Also without autograd, where ``step`` otherwise runs its folded map: under autocast that
    product would run, and round the carried state, in bfloat16 every step."""
    torch.manual_seed(0)
    layer = plmu.ParallelLMU(2, 5, 64, 100.0)
    xs = torch.randn(400, 3, 2)
    with torch.no_grad():
        state = None
        for x in xs:
            _, state = layer.step(x, state)
        want = state
    with torch.set_grad_enabled(grad), torch.autocast("cpu", dtype=torch.bfloat16):
        state = None
        for x in xs:
            _, state = layer.step(x, state)
    assert state.dtype == torch.float32
    error = float((state.detach() - want).norm() / want.norm())
    assert error < 0.02  # the memory in float32; rounded to bfloat16 each step it was ~0.2


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("mode", ["auto", "fused", "fft", "recurrent", "chunked", "direct"])
@pytest.mark.parametrize("memory_size", [1, 3])
def test_low_precision_module_runs_every_mode(dtype, mode, memory_size):
    """``layer.to(torch.bfloat16)`` without autocast: every mode runs (the FFTs inside in
    float32, as no FFT takes bfloat16) and returns ``dtype``, close to the float32 layer."""
    torch.manual_seed(0)
    layer = plmu.ParallelLMU(2, 6, 8, 20.0, memory_size=memory_size, mode=mode)
    x, state = torch.randn(2, 300, 2), 0.1 * torch.randn(2, layer.state_size)
    with torch.no_grad():
        want, want_m = layer(x, state)
    layer.to(dtype)
    y, m = layer(x.to(dtype), state.to(dtype))
    assert y.dtype == m.dtype == dtype
    y.float().square().mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in layer.parameters())
    for got, ref in [(y, want), (m, want_m)]:
        scale = float(ref.abs().max())
        np.testing.assert_allclose(got.float().detach().numpy(), ref.numpy(), atol=0.05 * scale)

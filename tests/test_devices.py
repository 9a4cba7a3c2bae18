"""Every execution path on every device torch offers here: CPU always, CUDA when there is one.

The CUDA cases run only where a GPU is visible (``scripts/gpu_check.sh`` runs them); on CPU the
same tests check the CPU paths, so the tests themselves are exercised everywhere. Float32 on the
device is compared with float64 on the CPU: the recurrence for the memory, autograd through the
same layer for gradients.
"""

import contextlib
import copy
from unittest import mock

import pytest
import torch

import plmu
from conftest import assert_close_to_reference, reference_memory

DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
    ),
]

MEMORY_MODES = ["recurrent", "fft", "direct", "chunked", "auto"]


@pytest.fixture(params=DEVICES)
def device(request):
    """The device; on CUDA with float32 products in full precision for the test: the tolerances
    are float32's, and TF32 (if something switched it on) rounds inputs to 10 mantissa bits."""
    if request.param != "cuda":
        yield torch.device(request.param)
        return
    precision = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield torch.device("cuda")
    finally:
        torch.set_float32_matmul_precision(precision)


@pytest.mark.parametrize("mode", MEMORY_MODES)
@pytest.mark.parametrize("memory_size", [1, 3])
def test_memory_modes_equal_recurrence(device, mode, memory_size):
    """Short and long sequences (past the free-response horizon), with an initial state."""
    mem = plmu.LegendreMemory(memory_size, 8, 20.0, mode=mode).to(device)
    for T in (1, 37, 900):
        u = torch.randn(2, T, memory_size)
        state = torch.randn(2, memory_size * 8)
        m, last = mem(u.to(device), state.to(device))
        assert m.device.type == device.type and m.dtype == torch.float32
        ref = reference_memory(u, 8, 20.0, state)
        assert_close_to_reference(m, ref)
        assert_close_to_reference(last, ref[:, -1])
        assert_close_to_reference(mem.last_state(u.to(device), state.to(device)), ref[:, -1])


def _layer_pair(device, **kw):
    """A float32 layer on ``device`` and its float64 CPU copy (same weights)."""
    args = dict(input_size=3, hidden_size=5, order=8, theta=20.0, memory_size=1)
    args.update(kw)
    ref = plmu.ParallelLMU(**args).double()
    return copy.deepcopy(ref).float().to(device), ref


def _check_forward_backward(layer, ref, x, state=None):
    """Outputs, final state, input and parameter gradients of ``layer`` against ``ref``."""
    device = next(layer.parameters()).device
    xd = x.detach().float().to(device).clone().requires_grad_()
    xr = x.detach().double().clone().requires_grad_()
    sd = None if state is None else state.float().to(device)
    sr = None if state is None else state.double()
    y, last = layer(xd, sd)
    y_ref, last_ref = ref(xr, sr)
    assert y.device.type == device.type
    assert_close_to_reference(y, y_ref.detach().numpy())
    assert_close_to_reference(last, last_ref.detach().numpy())
    weights = torch.randn_like(y_ref)  # a loss that weighs every output
    (y * weights.float().to(device)).sum().backward()
    (y_ref * weights).sum().backward()
    assert_close_to_reference(xd.grad, xr.grad.numpy())
    for (name, p), p_ref in zip(layer.named_parameters(), ref.parameters()):
        if p_ref.grad is not None:
            assert p.grad is not None, name
            assert_close_to_reference(p.grad, p_ref.grad.numpy())


@pytest.mark.parametrize("mode", ["fused", "fft", "chunked", "auto"])
@pytest.mark.parametrize("memory_size", [1, 4])
@pytest.mark.parametrize("T", [50, 2000])  # 2000: several free-response horizons (blocks)
def test_layer_training_step_matches_float64(device, mode, memory_size, T):
    layer, ref = _layer_pair(device, memory_size=memory_size, mode=mode)
    if T > 1000:
        _, block = layer.memory.projection_blocks(T, torch.float32)
        assert block < T  # the overlap-save blocks are exercised
    x, state = torch.randn(2, T, 3), torch.randn(2, memory_size * 8)
    _check_forward_backward(layer, ref, x, state)


@pytest.mark.parametrize("input_size", [1, 3])
def test_last_output_training_step_matches_float64(device, input_size):
    """``return_sequences=False``: the last-state product (and psMNIST's scalar-input path)."""
    layer, ref = _layer_pair(device, input_size=input_size, return_sequences=False)
    _check_forward_backward(layer, ref, torch.randn(3, 300, input_size))


def test_trainable_theta_gradient_matches_float64(device):
    layer, ref = _layer_pair(device, trainable_theta=True, mode="fused")
    _check_forward_backward(layer, ref, torch.randn(2, 120, 3))
    assert layer.memory.log_theta.grad is not None


def test_streaming_and_steps_equal_one_call(device):
    """Inference on the device: chunks with carried state, and the step form, equal one call
    (the cached kernels are built on the device)."""
    layer = plmu.ParallelLMU(1, 6, 16, 40.0).to(device).eval()
    x = torch.randn(1, 1000, 1, device=device)
    with torch.inference_mode():
        y, last = layer(x)
        parts, state = [], None
        for s in range(0, 1000, 300):
            out, state = layer(x[:, s : s + 300], state)
            parts.append(out)
        assert_close_to_reference(torch.cat(parts, 1), y.double().cpu().numpy())
        assert_close_to_reference(state, last.double().cpu().numpy())
        steps, state = [], None
        for t in range(60):
            out, state = layer.step(x[:, t], state)
            steps.append(out)
        assert_close_to_reference(torch.stack(steps, 1), y[:, :60].double().cpu().numpy())


def test_moving_after_use_rebuilds_cached_kernels(device):
    """A layer run (and its kernels cached) on the CPU, then moved, computes on the new device."""
    layer = plmu.ParallelLMU(2, 4, 8, 20.0, memory_size=2).eval()
    x = torch.randn(2, 500, 2)
    with torch.inference_mode():
        y_cpu, _ = layer(x)
        layer.step(x[:, 0])
        layer.to(device)
        y, _ = layer(x.to(device))
        y_t, _ = layer.step(x[:, 0].to(device))
    assert y.device.type == device.type and y_t.device.type == device.type
    assert_close_to_reference(y, y_cpu.double().numpy())
    assert_close_to_reference(y_t, y_cpu[:, 0].double().numpy())


def test_autocast_bfloat16_keeps_the_memory_in_float32(device):
    layer = plmu.ParallelLMU(3, 8, 8, 20.0, memory_size=2).to(device)
    x = torch.randn(2, 400, 3, device=device)
    y32, s32 = layer(x)
    with torch.autocast(device.type, dtype=torch.bfloat16):
        y, state = layer(x)
        y.float().sum().backward()
    assert state.dtype == torch.float32  # the memory state is never rounded to bfloat16
    # its input u = f_u(U_x x + b_u) is a bfloat16 product under autocast: bfloat16 tolerance
    assert_close_to_reference(state, s32.detach().double().cpu().numpy(), rel=3e-2)
    assert_close_to_reference(y.float(), y32.detach().double().cpu().numpy(), rel=3e-2)
    assert all(p.grad is not None for p in layer.parameters() if p.requires_grad)


def test_original_lmu_matches_float64(device):
    ref = plmu.LMU(2, 5, 8, 20.0).double()
    rnn = copy.deepcopy(ref).float().to(device)
    x = torch.randn(2, 60, 2)
    y, (h, m) = rnn(x.to(device))
    y_ref, (h_ref, m_ref) = ref(x.double())
    assert y.device.type == device.type
    assert_close_to_reference(y, y_ref.detach().numpy())
    assert_close_to_reference(h, h_ref.detach().numpy())
    assert_close_to_reference(m, m_ref.detach().numpy())


@contextlib.contextmanager
def _cuda_sync_is_error():
    """Within: any host/device synchronisation raises (CUDA's sync debug mode)."""
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


@contextlib.contextmanager
def _moving_tensors_is_error():
    """Within: copying a tensor to a device raises. On ``meta`` tensors, which hold no values,
    reading one back raises anyway: together the CPU's stand-in for CUDA's sync debug mode,
    where a blocking host-to-device copy (moving a module, say) is a synchronisation too."""

    def refuse(*args, **kwargs):
        raise RuntimeError("a tensor was copied inside a region that must not synchronise")

    with (
        mock.patch.object(torch.Tensor, "to", refuse),
        mock.patch.object(torch.Tensor, "cuda", refuse),
        mock.patch.object(torch.Tensor, "cpu", refuse),
        mock.patch.object(torch.Tensor, "copy_", refuse),
    ):
        yield


def _token_checks_without_sync(device, no_sync):
    """The token-id checks of a training step on ``device`` inside ``no_sync``: they must
    neither read ids back nor copy anything there."""
    from plmu.models.language_model import LMULanguageModel
    from plmu.models.text import TextClassifier

    lm = LMULanguageModel(27, 8, 1, order=4, theta=8.0).to(device)
    clf = TextClassifier(2, vocab_size=10, embedding_dim=4, hidden_size=4, order=4, theta=8.0)
    clf.to(device)  # before the region: moving it there is a blocking copy, a sync
    tokens = torch.randint(0, 27, (2, 50)).to(device)
    with no_sync():
        lm._check_tokens(tokens, 2, "tokens")
        lm._check_tokens(tokens[:, 0], 1, "token")
        clf.encoder.check_ids(tokens % 10)


def test_token_id_checks_make_no_sync_stand_in():
    """On ``meta`` (no values, no CUDA needed): the region of the CUDA test below moves no
    tensor. It moved a model to the GPU, a blocking copy that sync debug mode refuses."""
    _token_checks_without_sync(torch.device("meta"), _moving_tensors_is_error)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_token_id_checks_on_cuda():
    """Token-id range checks add no host/device sync where the model's forward makes none
    (training), and catch bad ids where a sync happens anyway (seq2seq sources with their
    lengths, generation prompts): a ValueError before nn.Embedding's device-side assert."""
    from plmu.generation import iter_tokens
    from plmu.models.language_model import LMULanguageModel
    from plmu.models.seq2seq import LMUSeq2Seq

    _token_checks_without_sync(torch.device("cuda"), _cuda_sync_is_error)
    lm = LMULanguageModel(27, 8, 1, order=4, theta=8.0).cuda()
    s2s = LMUSeq2Seq(10, 12, d_model=8, order=4, theta=8.0, encoder_layers=1).cuda()
    src = torch.full((2, 3), 10, device="cuda")
    with pytest.raises(ValueError, match=r"src must hold token ids in \[0, 10\)"):
        s2s.encode(src, torch.tensor([3, 2], device="cuda"))
    with pytest.raises(ValueError, match=r"prompt must hold token ids in \[0, 27\)"):
        next(iter_tokens(lm, torch.tensor([3, 27], device="cuda"), 1))


def test_original_lmu_takes_lengths_to_the_device_once():
    """``LMU.forward`` with host ``lengths`` and an input on a GPU copied each step's mask to the
    GPU inside the time loop: a blocking copy, i.e. a synchronisation, at every step. The
    lengths go to the input's device once (counted here on the CPU: ``Tensor.to`` calls)."""
    rnn = plmu.LMU(2, 3, 4, 8.0)
    x, lengths = torch.randn(2, 40, 2), torch.tensor([40, 17])
    calls = []
    to = torch.Tensor.to

    def counted(self, *args, **kwargs):
        calls.append(args)
        return to(self, *args, **kwargs)

    with mock.patch.object(torch.Tensor, "to", counted):
        y, (h, m) = rnn(x, lengths=lengths)
    assert len(calls) <= 2
    _, (h1, m1) = rnn(x[1:, :17])
    torch.testing.assert_close(h[1:], h1)
    torch.testing.assert_close(m[1:], m1)
    torch.testing.assert_close(y[1:, 16], h1)


def test_forward_on_the_meta_device_gives_shapes():
    """Shape inference on ``meta`` tensors: the autocast check no longer raises "unknown device
    type for autocast" (the paths that read kernel values, e.g. the fused projection, still need
    real data)."""
    with torch.device("meta"):
        lmu = plmu.LMU(1, 8, 16, 10.0)
        parallel = plmu.ParallelLMU(1, 8, 16, 10.0, mode="recurrent")
    x = torch.empty(2, 5, 1, device="meta")
    for layer in (lmu, parallel):
        y, _ = layer(x)
        assert y.device.type == "meta" and y.shape == (2, 5, 8)

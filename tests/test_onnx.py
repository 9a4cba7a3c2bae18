"""The one-step form of a ParallelLMU exports to ONNX and runs in onnxruntime unchanged."""

import numpy as np
import pytest
import torch

import plmu

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


class StepModule(torch.nn.Module):
    """``(x_t, state) -> (y_t, new_state)``: the RNN form as a plain forward, for export."""

    def __init__(self, layer: plmu.ParallelLMU) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x_t, state):
        return self.layer.step(x_t, state)


def test_step_exports_to_onnx_and_matches(tmp_path):
    layer = plmu.ParallelLMU(3, 8, 12, 30.0, memory_size=2).eval()
    x = torch.randn(40, 2, 3)
    path = tmp_path / "parallel_lmu_step.onnx"
    example = (x[0], torch.zeros(2, layer.state_size))
    torch.onnx.export(
        StepModule(layer),
        example,
        str(path),
        input_names=["x_t", "state"],
        output_names=["y_t", "new_state"],
        dynamo=True,
    )
    onnx.checker.check_model(onnx.load(str(path)))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected, _ = layer(x.transpose(0, 1))  # the parallel forward, (2, 40, 8)
    state = np.zeros((2, layer.state_size), dtype=np.float32)
    outs = []
    for t in range(x.shape[0]):
        y_t, state = session.run(None, {"x_t": x[t].numpy(), "state": state})
        outs.append(y_t)
    got = np.stack(outs, axis=1)
    np.testing.assert_allclose(got, expected.numpy(), atol=1e-5)

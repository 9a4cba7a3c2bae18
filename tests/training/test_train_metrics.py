import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from plmu.training.metrics import NRMSE, nrmse


def test_nrmse_reference_values() -> None:
    target = torch.randn(200, generator=torch.Generator().manual_seed(0))
    assert float(nrmse(target, target)) == 0.0
    assert float(nrmse(torch.full_like(target, float(target.mean())), target)) == pytest.approx(1.0)
    prediction = target + 0.1
    expected = 0.1 / np.std(target.numpy())
    assert float(nrmse(prediction, target)) == pytest.approx(expected, rel=1e-5)


def test_nrmse_shape_mismatch() -> None:
    with pytest.raises(ValueError, match="same shape"):
        nrmse(torch.zeros(3), torch.zeros(4))


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(1, 20), min_size=1, max_size=5), st.integers(0, 1000))
def test_metric_accumulates_like_one_batch(sizes: list[int], seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    parts = [(torch.randn(n, 3, generator=g), torch.randn(n, 3, generator=g)) for n in sizes]
    metric = NRMSE()
    for prediction, target in parts:
        metric.update(prediction, target)
    whole_p = torch.cat([p for p, _ in parts])
    whole_t = torch.cat([t for _, t in parts])
    assert float(metric.compute()) == pytest.approx(float(nrmse(whole_p, whole_t)), rel=1e-4)


def test_metric_mask_drops_entries() -> None:
    target = torch.randn(2, 10, 1)
    prediction = target.clone()
    prediction[:, :3] += 100.0  # only the masked-out warm-up steps are wrong
    mask = torch.arange(10).expand(2, 10).unsqueeze(-1) >= 3
    metric = NRMSE()
    metric.update(prediction, target, mask)
    assert float(metric.compute()) == 0.0
    # errors on the kept steps too: the masked-out entries count neither in the error nor in
    # the target's spread (the 0.0 above holds also when only the error is masked)
    prediction = target + 0.1 * torch.randn(2, 10, 1)
    prediction[:, :3] += 100.0
    target[:, :3] += 50.0
    metric = NRMSE()
    metric.update(prediction, target, mask)
    kept = nrmse(prediction[:, 3:], target[:, 3:])
    assert float(metric.compute()) == pytest.approx(float(kept), rel=1e-5)

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from plmu.precision import widest_float
from plmu.training import metrics
from plmu.training.metrics import NRMSE, WeightedMean, nrmse


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


def test_widest_float_is_float32_only_on_mps() -> None:
    assert widest_float(torch.device("cpu")) == torch.float64
    assert widest_float("cuda:1") == torch.float64
    assert widest_float("mps") == torch.float32  # MPS has no float64


def test_metric_sums_take_the_widest_float_of_the_device_they_move_to(monkeypatch) -> None:
    """Moving the metric to a device without float64 (MPS) casts its sums first: float64
    cannot move there. No MPS here: the chooser is patched to call the CPU such a device."""
    target = torch.randn(50, generator=torch.Generator().manual_seed(1))
    prediction = target + 0.1
    metric = NRMSE()
    assert metric.squared_error.dtype == torch.float64
    monkeypatch.setattr(metrics, "widest_float", lambda device: torch.float32)
    metric = metric.to("cpu")
    for _ in range(2):  # reset() restores float32 sums (the defaults were cast too)
        assert {getattr(metric, n).dtype for n in metric._defaults} == {torch.float32}
        metric.update(prediction, target)
        assert float(metric.compute()) == pytest.approx(float(nrmse(prediction, target)), rel=1e-5)
        metric.reset()
    monkeypatch.undo()
    assert metric.to("cpu").squared_error.dtype == torch.float64  # back where float64 is


def test_weighted_mean_sums_a_90m_token_split_without_rounding() -> None:
    """A 90M-token evaluation (the size of text8's training split): 3,000 batches of about
    30,000 scored tokens. In float32 the token count passed 2^24 and came out 17 short, and the
    mean was off by 5e-7; the float64 sums hold the count exactly and the weighted sum to
    float64 rounding."""
    import math

    g = torch.Generator().manual_seed(0)
    values = 1 + torch.rand(3000, generator=g)  # float32 batch means (bits per character)
    weights = torch.randint(29000, 31000, (3000,), generator=g).tolist()
    metric = WeightedMean()
    for value, weight in zip(values, weights):
        metric.update(value, weight)
    tokens = sum(weights)
    exact = math.fsum(float(v) * w for v, w in zip(values.double(), weights))
    assert float(metric.weight) == tokens
    assert float(metric.weighted_sum) == pytest.approx(exact, rel=1e-13)
    mean = metric.compute()
    assert mean.dtype == torch.float32
    assert float(mean) == float(torch.tensor(exact / tokens, dtype=torch.float32))


@pytest.mark.parametrize("cls", [WeightedMean, NRMSE])
def test_metric_sums_stay_wide_when_the_module_is_cast(cls) -> None:
    """``module.to(torch.bfloat16)`` (Lightning's "bf16-true" precision) casts a metric's
    states (torchmetrics guards ``.half()`` and friends, not ``.to(dtype)``): the sums became
    bfloat16, 8 bits of mantissa. They stay the widest float of the device."""
    module = torch.nn.ModuleDict({"metric": cls()}).to(torch.bfloat16)
    metric = module["metric"]
    assert {getattr(metric, n).dtype for n in metric.sums} == {torch.float64}
    metric.reset()
    assert {getattr(metric, n).dtype for n in metric.sums} == {torch.float64}


def test_weighted_mean_sums_are_float32_on_mps(monkeypatch) -> None:
    """The MPS choice, by the chooser (patched to call the CPU such a device): the sums are
    cast to float32 before they move there, and reset() keeps them float32."""
    metric = WeightedMean()
    assert metric.weighted_sum.dtype == metric.weight.dtype == torch.float64
    monkeypatch.setattr(metrics, "widest_float", lambda device: torch.float32)
    metric = metric.to("cpu")
    for _ in range(2):
        assert {getattr(metric, n).dtype for n in metric._defaults} == {torch.float32}
        metric.update(torch.tensor(2.0), 3)
        metric.update(torch.tensor(4.0), torch.tensor(1))
        assert float(metric.compute()) == 2.5
        metric.reset()
    monkeypatch.undo()
    assert metric.to("cpu").weight.dtype == torch.float64  # back where float64 is


# ------------------------------------------- the training modules' test metrics, recomputed


def _test_results(module, loader) -> dict[str, float]:
    """``Trainer.test`` of ``module`` on ``loader``: the logged epoch metrics."""
    import lightning as L

    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    (results,) = trainer.test(module, dataloaders=loader, verbose=False)
    return results


def test_classification_accuracy_is_the_fraction_of_argmax_hits() -> None:
    """Train and evaluate share this code, so their agreement shows nothing; here the logits
    are the data (an identity net), 7 of 10 argmaxes are right, in batches of 4, 4 and 2."""
    from torch.utils.data import DataLoader, TensorDataset

    from plmu.training.classification import SequenceClassification

    logits = torch.randn(10, 3, generator=torch.Generator().manual_seed(0))
    labels = logits.argmax(-1)
    labels[7:] = (labels[7:] + 1) % 3
    module = SequenceClassification(torch.nn.Identity(), num_classes=3, lr=1e-3)
    results = _test_results(module, DataLoader(TensorDataset(logits, labels), batch_size=4))
    assert results["test_accuracy"] == pytest.approx(0.7, abs=1e-6)
    expected = torch.nn.functional.cross_entropy(logits, labels)
    assert results["test_loss"] == pytest.approx(float(expected), rel=1e-5)


def test_regression_metrics_count_only_the_masked_in_steps() -> None:
    """Mackey-Glass's warm-up mask: the masked-out steps (wildly wrong here) count neither in
    ``test_nrmse`` nor in ``test_loss``."""
    from torch.utils.data import DataLoader, TensorDataset

    from plmu.training.regression import SequenceRegression

    g = torch.Generator().manual_seed(0)
    target = torch.randn(6, 12, 1, generator=g)
    prediction = target + 0.3 * torch.randn(6, 12, 1, generator=g)
    prediction[:, :4] += 100.0
    mask = (torch.arange(12) >= 4).expand(6, 12)
    module = SequenceRegression(torch.nn.Identity(), lr=1e-3)
    loader = DataLoader(TensorDataset(prediction, target, mask), batch_size=3)
    results = _test_results(module, loader)
    kept = (prediction[:, 4:], target[:, 4:])
    assert results["test_nrmse"] == pytest.approx(float(nrmse(*kept)), rel=1e-5)
    expected = torch.nn.functional.mse_loss(*kept)
    assert results["test_loss"] == pytest.approx(float(expected), rel=1e-5)


def test_language_model_loss_and_bpc_are_over_the_scored_tokens() -> None:
    """text8's scored windows: only the tokens the mask selects count, each batch weighted by
    how many it scores (batches of 3 and 1 windows scoring 5 to 8 tokens)."""
    import math

    from torch.utils.data import DataLoader, TensorDataset

    from plmu.models.language_model import LMULanguageModel
    from plmu.training.language_modeling import LanguageModeling

    g = torch.Generator().manual_seed(0)
    net = LMULanguageModel(7, 8, 1, order=4, theta=8.0)
    x = torch.randint(0, 7, (4, 8), generator=g)
    y = torch.randint(0, 7, (4, 8), generator=g)
    mask = torch.arange(8) >= torch.tensor([0, 3, 1, 2]).unsqueeze(1)
    module = LanguageModeling(net, lr=1e-3)
    results = _test_results(module, DataLoader(TensorDataset(x, y, mask), batch_size=3))
    with torch.no_grad():
        losses = torch.nn.functional.cross_entropy(
            net(x)[0].flatten(0, 1), y.flatten(), reduction="none"
        )
    expected = float(losses[mask.flatten()].mean())
    assert results["test_loss"] == pytest.approx(expected, rel=1e-5)
    assert results["test_bpc"] == pytest.approx(expected / math.log(2), rel=1e-5)


def test_weighted_mean_adds_the_processes_sums() -> None:
    """Two processes' shards of unequal sizes (11 and 10 examples): the synced mean is the mean
    over all 21, as one process gets it. ``self.log(..., sync_dist=True)`` averaged the batch
    counts as integers under Lightning 2.6 (10, not 10.5). The sync is simulated: torchmetrics
    gathers every state from every process and sums it."""
    values = torch.randn(21, generator=torch.Generator().manual_seed(0))
    shards = [values[0::2], values[1::2]]
    ranks = []
    for shard in shards:
        metric = WeightedMean()
        for batch in shard.split(8):
            metric.update(batch.mean(), len(batch))
        ranks.append(metric)

    def gather(state: torch.Tensor, group=None) -> list[torch.Tensor]:
        name = next(n for n in ("weighted_sum", "weight") if getattr(ranks[0], n) is state)
        return [getattr(rank, name) for rank in ranks]

    synced = WeightedMean(dist_sync_fn=gather, distributed_available_fn=lambda: True)
    synced.weighted_sum, synced.weight = ranks[0].weighted_sum, ranks[0].weight
    synced._update_count = 1
    assert float(synced.compute()) == pytest.approx(float(values.mean()), rel=1e-6)


def test_weighted_mean_keeps_a_nan_and_ignores_weightless_batches() -> None:
    metric = WeightedMean()
    metric.update(torch.tensor(2.0), 3)
    metric.update(torch.tensor(0.0), 0)  # a batch without scored tokens
    assert float(metric.compute()) == 2.0
    metric.update(torch.tensor(float("nan")), 1)  # a diverged run reads as one
    assert torch.isnan(metric.compute())
    with pytest.raises(ValueError, match="value must be a scalar"):
        metric.update(torch.zeros(2), 1)


def test_weighted_mean_of_no_weight_is_an_error_naming_it() -> None:
    metric = WeightedMean("val_bpc")
    metric.update(torch.tensor(2.0), 0)
    metric.update(torch.tensor(0.0), torch.tensor(0))
    with pytest.raises(ValueError, match=r"^val_bpc: every batch of the epoch weighed 0"):
        metric.compute()


def test_an_evaluation_that_scores_no_token_is_an_error_not_nan() -> None:
    """Every target masked out: the test loss and bits per character were logged as NaN (the
    mean of nothing), which reads as a diverged model. The test now stops with an error that
    names the metric."""
    from torch.utils.data import DataLoader, TensorDataset

    from plmu.models.language_model import LMULanguageModel
    from plmu.training.language_modeling import LanguageModeling

    g = torch.Generator().manual_seed(0)
    net = LMULanguageModel(7, 8, 1, order=4, theta=8.0)
    x = torch.randint(0, 7, (4, 8), generator=g)
    y = torch.randint(0, 7, (4, 8), generator=g)
    mask = torch.zeros(4, 8, dtype=torch.bool)
    module = LanguageModeling(net, lr=1e-3)
    loader = DataLoader(TensorDataset(x, y, mask), batch_size=3)
    with pytest.raises(ValueError, match=r"test_(loss|bpc): every batch of the epoch weighed 0"):
        _test_results(module, loader)


def test_regression_loss_is_the_mse_over_the_counted_steps_however_batched() -> None:
    """Sequences with masks of different lengths in batches of 2 and 1: ``test_loss`` is the
    MSE over every counted step; it was each batch's MSE weighted by its number of sequences,
    which depends on how the set is batched (and sharded under DDP)."""
    from torch.utils.data import DataLoader, TensorDataset

    from plmu.training.regression import SequenceRegression

    g = torch.Generator().manual_seed(0)
    target = torch.randn(3, 10, 1, generator=g)
    prediction = target + torch.randn(3, 10, 1, generator=g)
    mask = torch.arange(10) >= torch.tensor([0, 8, 2]).unsqueeze(1)
    module = SequenceRegression(torch.nn.Identity(), lr=1e-3)
    results = _test_results(
        module, DataLoader(TensorDataset(prediction, target, mask), batch_size=2)
    )
    expected = torch.nn.functional.mse_loss(prediction[mask], target[mask])
    assert results["test_loss"] == pytest.approx(float(expected), rel=1e-5)

"""No host/device synchronisation in a training or validation step of any experiment.

A sync (``.item()``, ``int()``/``float()``/``bool()`` of a tensor, ``tolist``, boolean-mask
indexing, ``nonzero``, ``unique``, ``torch.cuda.synchronize``, and a tensor made from Python data
on a given device, ``torch.tensor(4, device=...)``: a blocking host-to-device copy) stalls the
GPU pipeline every step.
On the CPU nothing stalls, so :class:`NoHostSync` makes the operations that would sync on an
accelerator raise instead, and :func:`as_on_an_accelerator` turns off the value checks that run
only on host tensors (free there, skipped on an accelerator). Each experiment's module then runs
a few real Lightning training and validation steps with its hooks, steps and backward guarded
(the first training step is not: it builds the cached constants, once per shape). The CUDA
test at the end runs the same steps under ``torch.cuda.set_sync_debug_mode("error")``.
"""

from __future__ import annotations

import functools
import math
import sys

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.data import DataLoader, TensorDataset

from plmu.data.iwslt import PAD, TranslationDataset, collate
from plmu.models.classifier import SequenceClassifier
from plmu.models.language_model import LMULanguageModel
from plmu.models.regressor import SequenceRegressor
from plmu.models.seq2seq import LMUSeq2Seq
from plmu.models.text import PairClassifier, TextClassifier
from plmu.training.classification import SequenceClassification
from plmu.training.language_modeling import LanguageModeling
from plmu.training.metrics import NRMSE
from plmu.training.regression import SequenceRegression
from plmu.training.translation import TranslationModule

# aten operations whose result the host must wait for (a value or a data-dependent shape)
SYNCING = {
    "_local_scalar_dense",  # .item(), int(), float(), bool()
    "is_nonzero",
    "equal",
    "nonzero",
    "masked_select",
    "_unique",
    "_unique2",
    "unique_dim",
    "unique_consecutive",
    "bincount",
    "repeat_interleave",
}


class HostSyncError(AssertionError):
    """An operation that would synchronise the host with an accelerator."""


def _bool_index(indices: object) -> bool:
    return isinstance(indices, (list, tuple)) and any(
        isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices
    )


class NoHostSync(TorchDispatchMode):
    """Raise :class:`HostSyncError` at any operation that would sync on an accelerator."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        indexing = name in ("index", "index_put", "index_put_", "_index_put_impl_")
        if name in SYNCING or (indexing and _bool_index(args[1])):
            raise HostSyncError(f"{func} synchronises the host with the device")
        return func(*args, **(kwargs or {}))


def _refuse(what: str):
    def refuse(*args, **kwargs):
        raise HostSyncError(f"{what} synchronises the host with the device")

    return refuse


def _refuse_copy_from_host(make):
    """``torch.tensor``/``torch.as_tensor`` that refuse Python data (a number, a list) sent to a
    named device: on an accelerator that is a blocking host-to-device copy, a sync (PyTorch's
    sync debug mode reports ``torch.tensor(4, device="cuda")``); ``torch.full`` is not one."""

    @functools.wraps(make)
    def guarded(data, *args, **kwargs):
        if kwargs.get("device") is not None and not isinstance(data, torch.Tensor):
            raise HostSyncError(
                f"{make.__name__}({data!r}, device=...) copies from the host: a sync"
            )
        return make(data, *args, **kwargs)

    return guarded


def _patch_syncs(patch: pytest.MonkeyPatch) -> None:
    """The syncing Python-level calls that :class:`NoHostSync` cannot see, made to raise."""
    patch.setattr(torch.Tensor, "tolist", _refuse("Tensor.tolist"))
    patch.setattr(torch.cuda, "synchronize", _refuse("torch.cuda.synchronize"))
    for name in ("tensor", "as_tensor"):
        patch.setattr(torch, name, _refuse_copy_from_host(getattr(torch, name)))


@pytest.fixture
def no_host_sync(monkeypatch: pytest.MonkeyPatch):
    """A context manager: inside it every syncing operation raises."""

    class Guard:
        def __enter__(self):
            self.mode = NoHostSync()
            self.patch = pytest.MonkeyPatch()
            _patch_syncs(self.patch)
            self.mode.__enter__()
            return self

        def __exit__(self, *exc):
            self.mode.__exit__(*exc)
            self.patch.undo()
            return False

    return Guard


@pytest.fixture
def as_on_an_accelerator(monkeypatch: pytest.MonkeyPatch) -> None:
    """The value checks that run on host tensors only (``plmu.checks._reads_values``) skip,
    as they do for an accelerator's tensors."""
    for module in list(sys.modules.values()):
        if getattr(module, "__name__", "").startswith("plmu") and hasattr(module, "_reads_values"):
            monkeypatch.setattr(module, "_reads_values", lambda tensor: False)


def _guard_methods(
    module: L.LightningModule, guard, warmup_steps: int = 1, warmup_epochs: int = 0
) -> list[str]:
    """Run ``module``'s per-step methods inside ``guard``; the first ``warmup_steps`` training
    steps (and their backward) build the caches unguarded, and so do the validation steps of
    the first ``warmup_epochs`` epochs. Returns the names of the methods that ran guarded."""
    ran: list[str] = []
    state = {"step": 0}

    def wrap(name: str, counts_step: bool = False):
        method = getattr(module, name)

        @functools.wraps(method)
        def guarded(*args, **kwargs):
            warming = state["step"] < warmup_steps if module.training else None
            if warming is None:
                warming = module.current_epoch < warmup_epochs
            if warming:
                if counts_step:
                    state["step"] += 1
                return method(*args, **kwargs)
            ran.append(name)
            with guard():
                return method(*args, **kwargs)

        setattr(module, name, guarded)

    for name in ("on_train_batch_start", "training_step", "on_train_batch_end"):
        wrap(name, counts_step=name == "on_train_batch_end")
    wrap("backward")
    wrap("validation_step")
    return ran


def _fit(
    module: L.LightningModule,
    train: DataLoader,
    val: DataLoader,
    accelerator: str = "cpu",
    epochs: int = 1,
) -> L.Trainer:
    trainer = L.Trainer(
        accelerator=accelerator,
        devices=1,
        max_epochs=epochs,
        limit_train_batches=3,
        limit_val_batches=2,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, train, val)
    return trainer


def _generator() -> torch.Generator:
    return torch.Generator().manual_seed(0)


def _regression(model: str) -> tuple[L.LightningModule, DataLoader, DataLoader]:
    """Mackey-Glass: (x, y, mask) windows with a warm-up mask."""
    g = _generator()
    net = SequenceRegressor(1, 1, model=model, hidden_size=6, num_layers=2, order=4, theta=5.0)
    x, y = torch.randn(12, 10, 1, generator=g), torch.randn(12, 10, 1, generator=g)
    mask = (torch.arange(10) >= 3).expand(12, 10)
    data = TensorDataset(x, y, mask)
    return SequenceRegression(net, lr=1e-3), DataLoader(data, 4), DataLoader(data, 4)


def _psmnist(model: str) -> tuple[L.LightningModule, DataLoader, DataLoader]:
    g = _generator()
    net = SequenceClassifier(
        input_size=1, num_classes=10, model=model, hidden_size=6, num_layers=1, order=4, theta=5.0
    )
    data = TensorDataset(torch.randn(12, 16, 1, generator=g), torch.randint(0, 10, (12,)))
    return SequenceClassification(net, 10, lr=1e-3), DataLoader(data, 4), DataLoader(data, 4)


def _text(pair: bool) -> tuple[L.LightningModule, DataLoader, DataLoader]:
    """IMDB (one text with its lengths) or QQP/SNLI (a pair)."""
    g = _generator()
    sizes = dict(vocab_size=20, embedding_dim=6, hidden_size=6, order=4, theta=5.0)
    sizes.update(memory_size=6, num_layers=1)
    ids = torch.randint(0, 20, (12, 9), generator=g)
    lengths = torch.randint(1, 10, (12,), generator=g)
    labels = torch.randint(0, 3, (12,), generator=g)
    if pair:
        net = PairClassifier(3, 8, **sizes)
        other = torch.randint(0, 20, (12, 7), generator=g)
        data = TensorDataset(ids, lengths, other, torch.randint(1, 8, (12,), generator=g), labels)
    else:
        net = TextClassifier(3, **sizes)
        data = TensorDataset(ids, lengths, labels)
    return SequenceClassification(net, 3, lr=1e-3), DataLoader(data, 4), DataLoader(data, 4)


def _text8() -> tuple[L.LightningModule, DataLoader, DataLoader]:
    """Training windows (x, y); scored validation windows (x, y, mask)."""
    g = _generator()
    x, y = torch.randint(0, 7, (12, 10), generator=g), torch.randint(0, 7, (12, 10), generator=g)
    mask = torch.arange(10) >= torch.randint(0, 10, (12, 1), generator=g)
    net = LMULanguageModel(7, 8, 2, order=4, theta=8.0)
    module = LanguageModeling(net, lr=1e-3)
    return module, DataLoader(TensorDataset(x, y), 4), DataLoader(TensorDataset(x, y, mask), 4)


def _text8_unmasked() -> tuple[L.LightningModule, DataLoader, DataLoader]:
    """Validation windows without a mask: ``_nll``'s count is a Python int, the weight of the
    epoch means (it was made into a device tensor, a blocking copy, at every step)."""
    module, train, _ = _text8()
    return module, train, train


def _iwslt() -> tuple[L.LightningModule, DataLoader, DataLoader]:
    g = _generator()

    def ids(n: int) -> list[int]:
        return torch.randint(4, 12, (n,), generator=g).tolist()

    targets = [1 + i % 5 for i in range(12)]
    sources = [[*ids(2 + i % 3), 3] for i in range(12)]
    data = TranslationDataset(sources, [ids(n) for n in targets], ["x"] * 12)
    torch.manual_seed(0)
    sizes = dict(d_model=8, order=2, theta=2.0, encoder_layers=1, decoder_layers=1)
    net = LMUSeq2Seq(12, 12, bidirectional=True, **sizes)
    module = TranslationModule(net, lambda row: " ".join(map(str, row)))
    loader = DataLoader(data, batch_size=4, collate_fn=collate)
    return module, loader, loader


EXPERIMENTS = {
    "mackey-glass-parallel-lmu": lambda: _regression("parallel-lmu"),
    "mackey-glass-lmu": lambda: _regression("lmu"),
    "mackey-glass-lstm": lambda: _regression("lstm"),
    "psmnist-parallel-lmu": lambda: _psmnist("parallel-lmu"),
    "psmnist-lmu": lambda: _psmnist("lmu"),
    "imdb": lambda: _text(pair=False),
    "qqp-snli": lambda: _text(pair=True),
    "text8": _text8,
    "text8-unmasked": _text8_unmasked,
    "iwslt15-en-vi": _iwslt,
}


@pytest.mark.parametrize("name", sorted(EXPERIMENTS))
def test_training_and_validation_steps_do_not_sync(name, no_host_sync, as_on_an_accelerator):
    module, train, val = EXPERIMENTS[name]()
    ran = _guard_methods(module, no_host_sync)
    _fit(module, train, val)
    assert {"training_step", "backward", "validation_step", "on_train_batch_end"} <= set(ran)


def test_the_guard_catches_the_syncs() -> None:
    """The guard itself: each kind of sync raises, whole-tensor work does not."""
    x, mask = torch.arange(6.0), torch.arange(6) > 2
    syncs = [
        lambda: x.sum().item(),
        lambda: int(x.sum()),
        lambda: bool(mask.any()),
        lambda: x[mask],
        lambda: mask.nonzero(),
        lambda: x.unique(),
        lambda: x.tolist(),
        lambda: torch.cuda.synchronize(),
        lambda: torch.tensor(4, device=x.device),
        lambda: torch.as_tensor(4.0, device=x.device, dtype=torch.float32),
    ]
    guard = pytest.MonkeyPatch()
    for sync in syncs:
        with guard.context() as patch:
            _patch_syncs(patch)
            with NoHostSync(), pytest.raises(HostSyncError):
                sync()
    with guard.context() as patch:
        _patch_syncs(patch)
        with NoHostSync():
            torch.where(mask, x, 0).sum() / mask.sum()
            torch.full((), 4.0, device=x.device) + torch.as_tensor(x, device=x.device)
            torch.tensor(4) * x  # on the host, no device named: no copy


class _SyncDebugError:
    """``torch.cuda.set_sync_debug_mode("error")`` inside, the previous mode after."""

    def __enter__(self):
        self.previous = torch.cuda.get_sync_debug_mode()
        torch.cuda.set_sync_debug_mode("error")
        return self

    def __exit__(self, *exc):
        torch.cuda.set_sync_debug_mode(self.previous)
        return False


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", sorted(EXPERIMENTS))
def test_cuda_training_and_validation_steps_do_not_sync(name):
    """On a GPU, CUDA itself reports every sync: two epochs of real steps, the first training
    step and the first epoch's validation (Lightning moves its logging states to the GPU
    there) unguarded; then the timing and token counts are read (one sync, outside a step)."""
    module, train, val = EXPERIMENTS[name]()
    ran = _guard_methods(module, _SyncDebugError, warmup_epochs=1)
    _fit(module, train, val, accelerator="gpu", epochs=2)
    assert {"training_step", "backward", "validation_step", "on_train_batch_end"} <= set(ran)
    if isinstance(module, LanguageModeling):
        assert module.train_tokens == 6 * 4 * 10 and module.train_seconds > 0
    if isinstance(module, TranslationModule):
        throughput = module.throughput()
        assert throughput["train_tokens_per_s"] > 0 and module.timing["train_tokens"] > 0


# ----------------------------------------------------------------- the same results as before


def test_masked_mse_is_the_mse_of_the_boolean_index() -> None:
    """The regression loss as it was (``F.mse_loss(prediction[mask], y[mask])``): the value to
    float rounding, the same gradient (zero where masked out, even at an inf there), nan for an
    empty mask; float32 under bfloat16 autocast, as ``F.mse_loss`` gives."""
    from plmu.training.regression import masked_mse

    g = _generator()
    target = torch.randn(3, 11, 2, generator=g)
    prediction = torch.randn(3, 11, 2, generator=g)
    mask = torch.rand(3, 11, 1, generator=g).expand(3, 11, 2) > 0.4
    prediction[~mask] = math.inf  # masked out: must not reach the loss or the gradient
    old_input = prediction.clone().requires_grad_()
    new_input = prediction.clone().requires_grad_()
    old = F.mse_loss(old_input[mask], target[mask])
    new = masked_mse(new_input, target, mask)
    torch.testing.assert_close(new, old, rtol=1e-6, atol=0)
    old.backward()
    new.backward()
    torch.testing.assert_close(new_input.grad, old_input.grad, rtol=1e-6, atol=0)
    assert masked_mse(prediction, target, torch.zeros_like(mask)).isnan()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert masked_mse(prediction.bfloat16(), target, mask).dtype == torch.float32


def test_nrmse_with_a_mask_is_the_nrmse_of_the_kept_entries() -> None:
    g = _generator()
    target = torch.randn(4, 9, 1, generator=g)
    prediction = target + 0.2 * torch.randn(4, 9, 1, generator=g)
    prediction[:, :3] = math.nan  # masked out
    mask = (torch.arange(9) >= 3).view(1, 9, 1)
    metric = NRMSE()
    metric.update(prediction[:2], target[:2], mask)
    metric.update(prediction[2:], target[2:], mask)
    kept = prediction[:, 3:].double(), target[:, 3:].double()
    expected = (kept[0] - kept[1]).pow(2).mean().sqrt() / kept[1].std(unbiased=False)
    torch.testing.assert_close(metric.compute(), expected.float(), rtol=1e-6, atol=0)
    assert metric.count == 4 * 6


def test_language_model_loss_and_count_are_as_with_the_boolean_index() -> None:
    """``_nll`` with a mask: the mean over the scored tokens as ``losses[mask]`` gave it, and
    the count as a tensor; a batch scoring nothing gives 0 with count 0, and weighs nothing
    in the epoch means (it was not logged at all)."""
    module, _, val = _text8()
    x, y, mask = next(iter(val))
    with torch.no_grad():
        loss, count = module._nll((x, y, mask))
        losses = F.cross_entropy(module(x).flatten(0, 1), y.flatten(), reduction="none")
        zero_loss, zero_count = module._nll((x, y, torch.zeros_like(mask)))
    flat = mask.flatten()
    torch.testing.assert_close(loss, losses[flat].sum() / flat.sum(), rtol=1e-6, atol=0)
    assert isinstance(count, torch.Tensor) and int(count) == int(flat.sum())
    assert float(zero_loss) == 0.0 and int(zero_count) == 0

    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
    x_all, y_all, mask_all = val.dataset.tensors
    with_empty = torch.cat([mask_all, torch.zeros_like(mask_all[:4])])
    loader = DataLoader(
        TensorDataset(torch.cat([x_all, x_all[:4]]), torch.cat([y_all, y_all[:4]]), with_empty),
        batch_size=4,
    )
    found = trainer.validate(module, loader, verbose=False)[0]["val_loss"]
    expected = trainer.validate(module, val, verbose=False)[0]["val_loss"]
    assert found == pytest.approx(expected, rel=1e-6)


def test_translation_counts_the_training_tokens_on_the_device() -> None:
    """``train_tokens_per_s``'s tokens (source + target, padding excluded) are those counted
    per batch on the host before; ``train_s`` is the time of the steps."""
    module, train, val = _iwslt()
    _fit(module, train, val)
    expected = sum(
        int(batch.src_lengths.sum()) + int((batch.tgt_out != PAD).sum())
        for batch in list(train)[:3]
    )
    throughput = module.throughput()
    assert module.timing["train_tokens"] == expected and module.timing["train_s"] > 0
    assert throughput["train_tokens_per_s"] == pytest.approx(expected / module.timing["train_s"])
    assert module.throughput()["train_tokens_per_s"] == throughput["train_tokens_per_s"]


def test_translation_checks_a_batch_on_the_host_before_it_moves(as_on_an_accelerator) -> None:
    """Steps on an accelerator's tensors do not read the lengths and ids back; the module
    checks them while the batch is still on the host, so a bad batch is still refused with
    the seq2seq model's message."""
    module, _, val = _iwslt()
    batch = next(iter(val))
    batch.src_lengths[1] = batch.src.shape[1] + 1
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
    with pytest.raises(ValueError, match=r"src_lengths must lie in 1\.\.5"):
        trainer.validate(module, DataLoader([batch], collate_fn=lambda b: b[0]), verbose=False)
    batch = next(iter(val))
    batch.tgt_in[0, 1] = 12
    with pytest.raises(ValueError, match=r"tgt_in must hold token ids in \[0, 12\)"):
        trainer.validate(module, DataLoader([batch], collate_fn=lambda b: b[0]), verbose=False)


def test_step_timer_on_the_cpu_adds_the_wall_time_of_each_step() -> None:
    from plmu.training.base import StepTimer

    timer = StepTimer()
    cpu = torch.device("cpu")
    timer.stop(cpu)  # no step begun: nothing
    assert timer.seconds == 0.0
    timer.start(cpu)
    torch.randn(200, 200) @ torch.randn(200, 200)
    timer.stop(cpu)
    first = timer.seconds
    timer.start(cpu)
    timer.stop(cpu)
    assert 0 < first <= timer.seconds


def test_seq2seq_forward_without_value_checks_still_checks_shapes(no_host_sync) -> None:
    """``check_values=False`` reads nothing back (one host/device sync on an accelerator) but
    still refuses a wrong dtype or shape; the default checks the values, as before."""
    net = LMUSeq2Seq(
        12, 12, d_model=8, order=2, theta=2.0, encoder_layers=1, decoder_layers=1
    ).eval()
    src, lengths, tgt_in = torch.randint(4, 12, (2, 5)), torch.tensor([5, 3]), torch.ones(2, 4)
    checked = net(src, lengths, tgt_in.long())  # (builds the cached constants)
    with no_host_sync():
        logits = net(src, lengths, tgt_in.long(), check_values=False)
        with pytest.raises(TypeError, match="tgt_in must hold integer token ids"):
            net(src, lengths, tgt_in, check_values=False)
        with pytest.raises(ValueError, match="src_lengths must be"):
            net(src, lengths[:1], tgt_in.long(), check_values=False)
    torch.testing.assert_close(logits, checked, rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"src_lengths must lie in 1\.\.5"):
        net(src, torch.tensor([6, 3]), tgt_in.long())

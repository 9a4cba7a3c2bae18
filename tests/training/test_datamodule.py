"""EpochRandomSampler: an order given by seed and epoch alone (what makes a resumed run exact)."""

import itertools
from types import SimpleNamespace

import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from plmu.training.datamodule import (
    EpochRandomSampler,
    ResumableDataLoader,
    ShardSampler,
    SplitDataModule,
)


def test_order_depends_on_seed_and_epoch_only():
    data = range(50)
    first = EpochRandomSampler(data, seed=3)
    passes = [list(first) for _ in range(3)]  # the epoch advances by itself without set_epoch
    assert all(sorted(p) == list(range(50)) for p in passes)
    assert passes[0] != passes[1] != passes[2]
    resumed = EpochRandomSampler(data, seed=3)  # a new sampler, as after a resume
    resumed.set_epoch(2)
    assert list(resumed) == passes[2]
    resumed.set_epoch(1)
    assert list(resumed) == passes[1]
    other = EpochRandomSampler(data, seed=4)
    assert list(other) != passes[0]


def test_orders_do_not_depend_on_the_global_random_state():
    sampler = EpochRandomSampler(range(30), seed=0)
    torch.manual_seed(1)
    a = list(sampler)
    sampler.set_epoch(0)
    torch.manual_seed(2)
    assert list(sampler) == a


def test_a_loader_with_it_is_a_shuffled_loader_for_lightning():
    """Lightning decides from the sampler's type whether a loader shuffles (under DDP it then
    puts a shuffling DistributedSampler in its place)."""
    from lightning.pytorch.utilities.data import _is_dataloader_shuffled

    loader = DataLoader(range(10), sampler=EpochRandomSampler(range(10)), batch_size=2)
    assert _is_dataloader_shuffled(loader)


# ------------------------------------------------------------------- ResumableDataLoader

DATA = range(40)  # 10 batches of 4


def _loader(num_workers: int = 0, sampler=None) -> ResumableDataLoader:
    return ResumableDataLoader(
        DATA,
        batch_size=4,
        sampler=sampler if sampler is not None else EpochRandomSampler(DATA, seed=1),
        num_workers=num_workers,
        generator=torch.Generator(),
    )


def _take(loader: DataLoader, epoch: int, count: int | None = None) -> list[list[int]]:
    """Lightning's order: start a pass, set the sampler's epoch, then fetch ``count`` batches."""
    batches = iter(loader)
    loader.sampler.set_epoch(epoch)
    return [batch.tolist() for batch in itertools.islice(batches, count)]


def _epoch_batches(epoch: int) -> list[list[int]]:
    sampler = EpochRandomSampler(DATA, seed=1)
    sampler.set_epoch(epoch)
    order = list(sampler)
    return [order[i : i + 4] for i in range(0, len(order), 4)]


@pytest.mark.parametrize("num_workers", [0, 1])
def test_a_pass_orders_the_epoch_set_after_it_started(num_workers: int) -> None:
    """Lightning calls set_epoch after iter(); a torch iterator with workers would already
    have drawn indices from the sampler (epoch 0's order) when it is created."""
    loader = _loader(num_workers)
    assert _take(loader, 3) == _epoch_batches(3)
    assert _take(loader, 1) == _epoch_batches(1)


@pytest.mark.parametrize("num_workers", [0, 1])
def test_resumes_mid_epoch_with_the_rest_of_its_batches(num_workers: int) -> None:
    first = _loader(num_workers)
    trained = _take(first, 2, 3)
    # the workers prefetched more than 3 batches; only those received count
    assert first.state_dict() == {"epoch": 2, "batches": 3}
    resumed = _loader(num_workers)  # a new process
    resumed.load_state_dict(first.state_dict())
    assert trained + _take(resumed, 2) == _epoch_batches(2)
    assert resumed.state_dict() == {"epoch": 2, "batches": 10}
    assert _take(resumed, 3) == _epoch_batches(3)  # the next epoch is whole


def test_a_second_resume_in_the_same_epoch_counts_from_the_epoch_start() -> None:
    first = _loader()
    trained = _take(first, 0, 3)
    second = _loader()
    second.load_state_dict(first.state_dict())
    trained += _take(second, 0, 4)
    assert second.state_dict() == {"epoch": 0, "batches": 7}
    third = _loader()
    third.load_state_dict(second.state_dict())
    assert trained + _take(third, 0) == _epoch_batches(0)


@pytest.mark.parametrize(
    "state",
    [{"epoch": 1, "batches": 3}, {"epoch": 2, "batches": 10}, {"epoch": None, "batches": 3}],
)
def test_a_position_applies_only_to_an_unfinished_pass_of_its_epoch(state: dict) -> None:
    loader = _loader()
    loader.load_state_dict(state)
    assert _take(loader, 2) == _epoch_batches(2)


def test_a_loader_without_an_epoch_resumes_its_pass() -> None:
    loader = ResumableDataLoader(DATA, batch_size=4)  # sequential: no sampler epoch
    assert loader.state_dict() == {"epoch": None, "batches": 0}
    loader.load_state_dict({"epoch": None, "batches": 8})
    assert [batch.tolist() for batch in loader] == [[32, 33, 34, 35], [36, 37, 38, 39]]
    assert len(loader) == 10  # Lightning counts the skipped batches as done


@pytest.mark.parametrize("state", [{}, {"epoch": 1, "batches": -1}, {"epoch": "1", "batches": 2}])
def test_a_bad_state_is_refused(state: dict) -> None:
    with pytest.raises(ValueError, match="not a ResumableDataLoader state"):
        _loader().load_state_dict(state)


def test_under_ddp_each_rank_resumes_its_shard() -> None:
    """Lightning rebuilds the loader with a DistributedSampler (set_epoch, seeded); every rank
    has as many batches, so rank 0's saved position holds for all."""
    from lightning.pytorch.utilities.data import _update_dataloader

    def rank_loader(rank: int) -> DataLoader:
        sampler = DistributedSampler(DATA, num_replicas=2, rank=rank, shuffle=True, seed=0)
        return _update_dataloader(_loader(), sampler)

    whole = _take(rank_loader(1), 4)
    assert isinstance(rank_loader(1), ResumableDataLoader) and len(whole) == 5
    first = rank_loader(0)
    _take(first, 4, 2)
    resumed = rank_loader(1)
    resumed.load_state_dict(first.state_dict())
    assert _take(resumed, 4) == whole[2:]


class _Ranges(SplitDataModule):
    def build(self):
        return TensorDataset(torch.arange(20.0)), range(6), range(6)


def test_the_datamodule_loaders_leave_the_global_generator_alone() -> None:
    """Creating an iterator draws the workers' base seed; from the loader's own generator,
    or a resumed run, which creates iterators where the uninterrupted run did not, would
    drop out differently."""
    from lightning.fabric.utilities.types import _Stateful

    data = _Ranges(batch_size=4, seed=5)
    data.setup()
    train = data.train_dataloader()
    assert isinstance(train, ResumableDataLoader) and isinstance(train, _Stateful)
    assert isinstance(train.sampler, EpochRandomSampler) and train.sampler.seed == 5
    assert not isinstance(data.val_dataloader(), ResumableDataLoader)
    state = torch.get_rng_state()
    for loader in (train, data.val_dataloader(), data.test_dataloader()):
        next(iter(loader))
    assert torch.equal(torch.get_rng_state(), state)


def _attached(data: SplitDataModule, device: str | None) -> SplitDataModule:
    """``data`` as a trainer whose root device is ``device`` sees it (``None``: no trainer)."""
    if device is not None:
        data.trainer = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device(device)))
    return data


@pytest.mark.parametrize(
    ("device", "num_workers", "pinned"),
    [
        ("cuda", 1, True),
        ("cuda:1", 2, True),
        ("cuda", 0, False),
        ("cpu", 1, False),
        (None, 1, False),
    ],
)
def test_loaders_pin_batches_that_workers_load_for_a_cuda_device(device, num_workers, pinned):
    """Training on a GPU, batches from worker processes are pinned (page-locked) by the
    loader's pinning thread, so that Lightning's non_blocking copy to the device overlaps the
    step; they never were. Not on the CPU, nor without workers (pinning would then be one
    more copy inside the training loop)."""
    data = _attached(_Ranges(batch_size=4, num_workers=num_workers), device)
    data.setup()
    loaders = (data.train_dataloader(), data.val_dataloader(), data.test_dataloader())
    assert [loader.pin_memory for loader in loaders] == [pinned] * 3


def test_loader_options_decide_pinning_and_a_cpu_trainer_pins_nothing():
    import lightning as L

    class Unpinned(_Ranges):
        def loader_options(self, split, dataset, batch_size, shuffle):
            return {"pin_memory": False}

    data = _attached(Unpinned(batch_size=4, num_workers=1), "cuda")
    data.setup()
    assert not data.train_dataloader().pin_memory
    data = _Ranges(batch_size=4, num_workers=1)
    data.trainer = L.Trainer(accelerator="cpu", devices=1, logger=False)  # the real attributes
    data.setup()
    assert data.trainer.strategy.root_device.type == "cpu"
    assert not data.train_dataloader().pin_memory


# ---------------------------------------------------------------- evaluation under DDP


@pytest.mark.parametrize("size", [0, 1, 2, 3, 7, 8, 13])
@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_shards_hold_every_example_once(size: int, world: int) -> None:
    """The ranks' shards together are the set, each example once and in order within a shard;
    they differ by one example at most. A set smaller than the world is read whole by every
    rank (each rank then evaluates at least one batch, as DDP's collective calls need)."""
    shards = [list(ShardSampler(range(size), num_replicas=world, rank=r)) for r in range(world)]
    assert [len(ShardSampler(range(size), world, r)) for r in range(world)] == list(
        map(len, shards)
    )
    if size < world:
        assert shards == [list(range(size))] * world
    else:
        assert sorted(i for shard in shards for i in shard) == list(range(size))
        assert all(shard == sorted(shard) for shard in shards)
        assert max(map(len, shards)) - min(map(len, shards)) <= 1


class _Odd(SplitDataModule):
    def build(self):
        return TensorDataset(torch.arange(20.0)), range(7), range(100, 107)


def _as_lightning_prepares(loader: DataLoader, rank: int, world: int) -> DataLoader:
    """``loader`` as Lightning's DDP strategy serves it to ``rank``: a loader whose sampler is
    no ``DistributedSampler`` gets one (``shuffle=False`` for evaluation), which pads."""
    from lightning.pytorch.utilities.data import _update_dataloader

    if isinstance(loader.sampler, DistributedSampler):
        return loader
    sampler = DistributedSampler(loader.dataset, num_replicas=world, rank=rank, shuffle=False)
    return _update_dataloader(loader, sampler)


@pytest.mark.parametrize("world", [2, 3])
def test_under_ddp_the_evaluation_loaders_read_every_example_once(world: int) -> None:
    """Lightning's DistributedSampler padded the 7 validation and test examples to 8 (or 9),
    and the metrics counted the repeats; the datamodule's own shards do not repeat any. The
    training loader is left to Lightning (its shards must have as many batches each)."""

    def examples(split: str) -> list[int]:
        found = []
        for rank in range(world):
            data = _Odd(batch_size=3)
            data.trainer = SimpleNamespace(
                distributed_sampler_kwargs={"num_replicas": world, "rank": rank},
                strategy=SimpleNamespace(root_device=torch.device("cpu")),
            )
            data.setup()
            loader = data.val_dataloader() if split == "validation" else data.test_dataloader()
            assert isinstance(data.train_dataloader().sampler, EpochRandomSampler)
            for batch in _as_lightning_prepares(loader, rank, world):
                found += batch.tolist()
        return sorted(found)

    assert examples("validation") == list(range(7))
    assert examples("test") == list(range(100, 107))

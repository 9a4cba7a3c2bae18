"""EpochRandomSampler: an order given by seed and epoch alone (what makes a resumed run exact)."""

import torch
from torch.utils.data import DataLoader

from plmu.training.datamodule import EpochRandomSampler


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

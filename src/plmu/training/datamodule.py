"""A small LightningDataModule base: three torch Datasets and their DataLoaders.

The training loader is a :class:`ResumableDataLoader`: Lightning stores its position in every
checkpoint, so a run resumed from a checkpoint written mid-epoch reads the rest of that epoch's
batches, in the uninterrupted run's order, and not the epoch's first batches again. Under DDP the
validation and test loaders read a :class:`ShardSampler` shard each, so that every example is
evaluated once (Lightning's ``DistributedSampler`` repeats examples to even the shards).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Sized
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler

__all__ = ["EpochRandomSampler", "ResumableDataLoader", "ShardSampler", "SplitDataModule"]


class EpochRandomSampler(RandomSampler):
    """A random order of ``data_source`` that depends only on ``seed`` and the epoch.

    Lightning calls :meth:`set_epoch` with the epoch about to run, also after a resume, so a
    resumed run visits the examples in the order the uninterrupted run would have (a generator
    carried from epoch to epoch starts again from its seed on resume). Without ``set_epoch`` the
    epoch advances by one per pass. It is a ``RandomSampler``, so under DDP Lightning sees a
    shuffled loader and puts a ``DistributedSampler`` (``shuffle=True``, also seeded by epoch) in
    its place.

    Args:
        data_source: the dataset (only its length is used).
        seed: the order of epoch ``e`` is ``torch.randperm`` seeded with ``seed + e``.
    """

    def __init__(self, data_source: Sized, seed: int = 0) -> None:
        super().__init__(data_source)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """The epoch whose order the next pass yields."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        self.epoch += 1
        yield from torch.randperm(len(self.data_source), generator=generator).tolist()


class ShardSampler(DistributedSampler):
    """Process ``rank``'s share of an evaluation set under DDP: the examples ``rank``,
    ``rank + num_replicas``, ``rank + 2 * num_replicas``, ... in order, so that the shards of the
    ``num_replicas`` processes hold every example once.

    Lightning gives an evaluation loader a ``DistributedSampler``, which repeats examples until
    every process has as many (23 examples on 2 processes: 12 each, one twice), and the test
    and validation metrics counted the repeats. Here the shards differ by one example at most
    and nothing is repeated; the metrics (``torchmetrics`` states, the losses
    :meth:`~plmu.training.base.PlmuModule.log_mean`'s weighted sums) are summed over the
    processes, which works for shards of unequal lengths provided every process evaluates at
    least one batch (so that all take part in the same collective calls, DDP's buffer broadcast
    at the first forward included). A set with fewer examples than processes is therefore read
    whole by every process: each metric, a ratio of sums over the examples, comes out as the
    set's own.

    It is a ``DistributedSampler``, so Lightning keeps it rather than put its own in its place.

    Args:
        data_source: the dataset (only its length is used).
        num_replicas: the number of processes (``trainer.world_size``).
        rank: this process's global rank, in ``[0, num_replicas)``.
    """

    def __init__(self, data_source: Sized, num_replicas: int, rank: int) -> None:
        super().__init__(
            data_source,  # type: ignore[arg-type]
            num_replicas=num_replicas,
            rank=rank,
            shuffle=False,
        )

    def _indices(self) -> range:
        n = len(self.dataset)  # type: ignore[arg-type]
        if n < self.num_replicas:
            return range(n)
        return range(self.rank, n, self.num_replicas)

    def __iter__(self) -> Iterator[int]:
        return iter(self._indices())

    def __len__(self) -> int:
        return len(self._indices())


class ResumableDataLoader(DataLoader):
    """A ``DataLoader`` that continues an epoch where a checkpoint left it.

    It has Lightning's stateful-loader interface. :meth:`state_dict` is the position of the
    current pass: its epoch (the ``epoch`` of its sampler, e.g. an :class:`EpochRandomSampler`
    or Lightning's ``DistributedSampler``, read as the pass starts; ``None`` if it has none) and
    the batches the pass has handed out, counted as the main process receives them (batches that
    worker processes prefetched are not counted). Lightning saves it in every checkpoint and,
    resuming from one written mid-epoch, gives it back to :meth:`load_state_dict` before the
    pass starts. A pass of the same epoch then leaves out the batches already trained on; any
    other pass (another epoch, or the saved pass was complete) is whole. The batches are left
    out at the index sampler: the sampler still draws the epoch's whole order, so the rest is the
    uninterrupted run's, but no item of a skipped batch is read or collated.

    Lightning starts a pass (``iter``) before it calls the sampler's ``set_epoch``, and a torch
    iterator with worker processes draws indices from the sampler as soon as it is created. A
    pass here creates its iterator when its first batch is asked for, so the sampler always
    orders the epoch Lightning gave it. Creating an iterator draws the workers' base seed from
    the loader's ``generator``, or from the global generator when it has none; give it one (as
    :class:`SplitDataModule` does): a resumed run creates an iterator mid-epoch where the
    uninterrupted run did not, and a draw from the global generator would change the dropout
    that follows.

    Under DDP Lightning rebuilds the loader with a ``DistributedSampler``, which gives every
    process as many batches; rank 0 saves the position and every rank resumes from it. Meant
    for sized datasets (Lightning fetches one batch ahead from a loader without a length, and
    that batch would count as trained on).
    """

    _epoch: int | None = None  # the epoch of the current pass
    _batches: int = 0  # batches the current pass has handed out, skipped ones included
    _skip: int = 0  # batches the current pass leaves out
    _resume: tuple[int | None, int] | None = None  # a loaded position, for the next pass

    def state_dict(self) -> dict[str, Any]:
        """The position of the current pass: ``{"epoch": int | None, "batches": int}``."""
        return {"epoch": self._epoch, "batches": self._batches}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Continue the next pass from ``state_dict`` (a :meth:`state_dict`) if it is a pass of
        the same epoch."""
        epoch, batches = state_dict.get("epoch"), state_dict.get("batches")
        if not (
            (epoch is None or isinstance(epoch, int)) and isinstance(batches, int) and batches >= 0
        ):
            raise ValueError(f"not a ResumableDataLoader state: {state_dict!r}")
        self._resume = (epoch, batches)

    def __iter__(self) -> Iterator[Any]:
        epoch = _sampler_epoch(self)
        skip = 0
        if self._resume is not None:
            (saved_epoch, saved_batches), self._resume = self._resume, None
            if saved_epoch == epoch and saved_batches < len(self):
                skip = saved_batches
        self._epoch, self._batches, self._skip = epoch, skip, skip
        for batch in super().__iter__():
            self._batches += 1
            yield batch

    @property
    def _index_sampler(self) -> Iterable:
        # torch's iterators take their indices (a batch's list of them, when the loader
        # batches) from this private DataLoader property, also when a persistent iterator
        # starts a new pass (tests/training/test_datamodule.py checks it on the torch in use)
        return _SkipFirst(super()._index_sampler, self)


class _SkipFirst:
    """``sampler`` less its first ``loader._skip`` items (read when a pass starts)."""

    def __init__(self, sampler: Iterable, loader: ResumableDataLoader) -> None:
        self.sampler = sampler
        self.loader = loader

    def __len__(self) -> int:
        return len(self.sampler)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[Any]:
        return itertools.islice(iter(self.sampler), self.loader._skip, None)


def _sampler_epoch(loader: DataLoader) -> int | None:
    """The ``epoch`` of ``loader``'s sampler (its batch sampler's sampler first), if it has one."""
    for sampler in (getattr(loader.batch_sampler, "sampler", None), loader.sampler):
        epoch = getattr(sampler, "epoch", None)
        if isinstance(epoch, int) and not isinstance(epoch, bool):
            return epoch
    return None


class SplitDataModule(L.LightningDataModule):
    """Serves ``train_set``, ``val_set`` and ``test_set`` (standard torch Datasets).

    Subclasses build the three sets in :meth:`build` (called once, by the first ``setup``; the
    runner calls ``setup("fit")`` before building the model and Lightning calls it again) and may
    override :meth:`saved_state` to store what a loaded checkpoint needs to rebuild the model
    without reading data (a vocabulary, a normaliser).

    Batches that go to a CUDA device (the trainer's root device) from worker processes are
    pinned (``pin_memory=True``): the loader's pinning thread copies each into page-locked
    memory beside the training loop, and Lightning's copy to the device, ``non_blocking``
    there, then overlaps the computation. Without workers (``num_workers=0``) the batches are
    not pinned: pinning would be one more copy inside the loop (PyTorch's guide to
    ``pin_memory`` and ``non_blocking``), for the small batches here.

    Under DDP (a trainer with ``distributed_sampler_kwargs``), the validation and test loaders
    read a :class:`ShardSampler` shard each, unless the options bring their own sampler or batch
    sampler: every example is evaluated once, and the metrics equal those of one process.

    The three loaders share :meth:`_loader`; a subclass changes them through
    :meth:`loader_options` (a ``collate_fn``, a ``batch_sampler``, a ``generator``, ...) and, when
    it keeps its datasets elsewhere, :meth:`split_set`. The splits are named ``"train"``,
    ``"validation"`` and ``"test"``. The training loader is a :class:`ResumableDataLoader` that
    shuffles with an :class:`EpochRandomSampler` (``seed``) unless the options bring their own
    sampler or batch sampler. Every loader has its own ``generator`` (seeded with ``seed``) for
    its worker processes' seeds: creating an iterator then leaves the global generator, which
    dropout draws from, alone. (Otherwise a resumed run, which creates its iterators at other
    times than the uninterrupted run, e.g. no sanity check, would drop out differently.)

    Args:
        batch_size: examples per batch (per process under DDP).
        num_workers: DataLoader worker processes.
        eval_batch_size: batch size for validation/test (default ``batch_size``).
        seed: the training order of epoch ``e`` is a permutation seeded with ``seed + e``.
    """

    def __init__(
        self,
        batch_size: int,
        num_workers: int = 0,
        eval_batch_size: int | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None

    def build(self) -> tuple[Dataset, Dataset, Dataset]:
        """Return ``(train, val, test)``; reads or generates the data."""
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        """Build the three sets with :meth:`build` the first time (any ``stage``)."""
        if self.train_set is None:
            self.train_set, self.val_set, self.test_set = self.build()

    def saved_state(self) -> dict[str, Any]:
        """What a checkpoint stores to rebuild this datamodule without data (default: nothing)."""
        return {}

    def split_set(self, split: str) -> Dataset:
        """The Dataset served by ``split``'s loader (``"train"``, ``"validation"``, ``"test"``).

        Raises:
            RuntimeError: ``setup`` has not built it yet.
        """
        sets = {"train": self.train_set, "validation": self.val_set, "test": self.test_set}
        dataset = sets[split]
        if dataset is None:
            raise RuntimeError("call setup() before asking for a DataLoader")
        return dataset

    def loader_options(
        self, split: str, dataset: Dataset, batch_size: int, shuffle: bool
    ) -> dict[str, Any]:
        """Extra ``DataLoader`` keyword arguments for ``split`` (default: none).

        They are applied last, so they may also replace ``num_workers``,
        ``persistent_workers`` or ``pin_memory``. When they hold a ``batch_sampler``,
        ``batch_size`` and the shuffling sampler are not passed (the batch sampler does the
        batching); when they hold a ``sampler``, it replaces the shuffling one. A training
        sampler that orders an epoch by a seed and the epoch alone (``set_epoch``, like
        :class:`EpochRandomSampler`) keeps a resumed run exact.

        Args:
            split: ``"train"``, ``"validation"`` or ``"test"``.
            dataset: the split's Dataset.
            batch_size: ``batch_size`` for training, ``eval_batch_size`` otherwise.
            shuffle: whether the split is shuffled (training only).
        """
        return {}

    def _loader(self, split: str, batch_size: int, shuffle: bool) -> DataLoader:
        """``split``'s DataLoader: :meth:`split_set` with :meth:`loader_options` applied (a
        :class:`ResumableDataLoader` for ``"train"``)."""
        dataset = self.split_set(split)
        options = self.loader_options(split, dataset, batch_size, shuffle)
        kwargs: dict[str, Any] = {
            "num_workers": self.num_workers,
            "persistent_workers": self.num_workers > 0,
            "generator": torch.Generator().manual_seed(self.seed),
        }
        if "batch_sampler" not in options:
            kwargs["batch_size"] = batch_size
            if shuffle and "sampler" not in options:
                kwargs["sampler"] = EpochRandomSampler(dataset, self.seed)
            elif split != "train" and "sampler" not in options:
                shards = self._shards()
                if shards is not None:
                    kwargs["sampler"] = ShardSampler(dataset, **shards)  # type: ignore[arg-type]
        kwargs.update(options)
        if "pin_memory" not in options:
            kwargs["pin_memory"] = kwargs["num_workers"] > 0 and self._to_cuda()
        loader = ResumableDataLoader if split == "train" else DataLoader
        return loader(dataset, **kwargs)

    def _shards(self) -> dict[str, int] | None:
        """``{"num_replicas", "rank"}`` of the distributed run of the trainer this datamodule is
        attached to; ``None`` for one process or no trainer."""
        shards = getattr(self.trainer, "distributed_sampler_kwargs", None)
        if not shards or shards.get("num_replicas", 1) <= 1:
            return None
        return {"num_replicas": int(shards["num_replicas"]), "rank": int(shards["rank"])}

    def _to_cuda(self) -> bool:
        """Whether the batches go to a CUDA device: the root device of the trainer this
        datamodule is attached to (none outside ``fit``/``test``: no)."""
        strategy = getattr(self.trainer, "strategy", None)
        device = getattr(strategy, "root_device", None)
        return isinstance(device, torch.device) and device.type == "cuda"

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("validation", self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.eval_batch_size, shuffle=False)

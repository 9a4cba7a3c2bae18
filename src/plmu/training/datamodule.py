"""A small LightningDataModule base: three torch Datasets and their DataLoaders."""

from __future__ import annotations

from collections.abc import Iterator, Sized
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler

__all__ = ["EpochRandomSampler", "SplitDataModule"]


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


class SplitDataModule(L.LightningDataModule):
    """Serves ``train_set``, ``val_set`` and ``test_set`` (standard torch Datasets).

    Subclasses build the three sets in :meth:`build` (called once, by the first ``setup``; the
    runner calls ``setup("fit")`` before building the model and Lightning calls it again) and may
    override :meth:`saved_state` to store what a loaded checkpoint needs to rebuild the model
    without reading data (a vocabulary, a normaliser).

    The three loaders share :meth:`_loader`; a subclass changes them through
    :meth:`loader_options` (a ``collate_fn``, a ``batch_sampler``, a ``generator``, ...) and, when
    it keeps its datasets elsewhere, :meth:`split_set`. The splits are named ``"train"``,
    ``"validation"`` and ``"test"``.

    Args:
        batch_size: examples per batch (per process under DDP).
        num_workers: DataLoader worker processes.
        eval_batch_size: batch size for validation/test (default ``batch_size``).
    """

    def __init__(
        self, batch_size: int, num_workers: int = 0, eval_batch_size: int | None = None
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = num_workers
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

        They are applied last, so they may also replace ``num_workers`` or
        ``persistent_workers``. When they hold a ``batch_sampler``, ``batch_size`` and
        ``shuffle`` are not passed (the sampler does the batching); when they hold a
        ``sampler`` (e.g. an :class:`EpochRandomSampler`), ``shuffle`` is not passed.

        Args:
            split: ``"train"``, ``"validation"`` or ``"test"``.
            dataset: the split's Dataset.
            batch_size: ``batch_size`` for training, ``eval_batch_size`` otherwise.
            shuffle: whether the split is shuffled (training only).
        """
        return {}

    def _loader(self, split: str, batch_size: int, shuffle: bool) -> DataLoader:
        """``split``'s DataLoader: :meth:`split_set` with :meth:`loader_options` applied."""
        dataset = self.split_set(split)
        options = self.loader_options(split, dataset, batch_size, shuffle)
        kwargs: dict[str, Any] = {
            "num_workers": self.num_workers,
            "persistent_workers": self.num_workers > 0,
        }
        if "batch_sampler" not in options:
            kwargs["batch_size"] = batch_size
            if "sampler" not in options:
                kwargs["shuffle"] = shuffle
        kwargs.update(options)
        return DataLoader(dataset, **kwargs)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("validation", self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.eval_batch_size, shuffle=False)

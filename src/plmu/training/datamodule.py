"""A small LightningDataModule base: three torch Datasets and their DataLoaders."""

from __future__ import annotations

from typing import Any

import lightning as L
from torch.utils.data import DataLoader, Dataset

__all__ = ["SplitDataModule"]


class SplitDataModule(L.LightningDataModule):
    """Serves ``train_set``, ``val_set`` and ``test_set`` (standard torch Datasets).

    Subclasses build the three sets in :meth:`build` (called once, by the first ``setup``; the
    runner calls ``setup("fit")`` before building the model and Lightning calls it again) and may
    override :meth:`saved_state` to store what a loaded checkpoint needs to rebuild the model
    without reading data (a vocabulary, a normaliser).

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
        if self.train_set is None:
            self.train_set, self.val_set, self.test_set = self.build()

    def saved_state(self) -> dict[str, Any]:
        """What a checkpoint stores to rebuild this datamodule without data (default: nothing)."""
        return {}

    def _loader(self, dataset: Dataset | None, batch_size: int, shuffle: bool) -> DataLoader:
        if dataset is None:
            raise RuntimeError("call setup() before asking for a DataLoader")
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, self.eval_batch_size, shuffle=False)

"""psMNIST: classify MNIST digits read pixel by pixel in one fixed permuted order (accuracy).

The data protocol is in :mod:`plmu.data.mnist`. ``model`` picks the network: the paper's
parallel LMU (order 468, hidden 346, theta 784, 166k parameters; one layer whose final memory
state is one matrix product over the sequence), the original LMU (hidden 212, order 256, the
psMNIST initialisation) or an LSTM.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
from torch.utils.data import Dataset

from plmu.data.mnist import default_data_dir, psmnist_splits
from plmu.models import SequenceClassifier
from plmu.training.classification import SequenceClassification
from plmu.training.datamodule import SplitDataModule
from plmu.training.registry import Experiment, register

__all__ = ["EXPERIMENT", "PsMNISTData", "build_net"]

NUM_CLASSES = 10


class PsMNISTData(SplitDataModule):
    """psMNIST train/validation/test sets from the IDX files in ``data_dir``.

    The files are downloaded in :meth:`prepare_data` (once per machine) when missing.
    """

    def __init__(self, config: dict, data_dir: Path | None) -> None:
        super().__init__(config["batch_size"], config["num_workers"])
        self.config = config
        self.data_dir = Path(data_dir) if data_dir is not None else default_data_dir()

    def prepare_data(self) -> None:
        from plmu.data.mnist import FILES, download_mnist, find_idx

        if any(find_idx(self.data_dir, name) is None for name in FILES):
            download_mnist(self.data_dir)

    def build(self) -> tuple[Dataset, Dataset, Dataset]:
        return psmnist_splits(
            self.data_dir,
            val_size=self.config["val_size"],
            permutation_seed=self.config["permutation_seed"],
            download=False,
        )


def build_net(config: dict) -> SequenceClassifier:
    """The classifier the config's ``model`` names: ``(B, 784, 1) -> logits (B, 10)``."""
    model = config["model"]
    common = {"input_size": 1, "num_classes": NUM_CLASSES, "model": model}
    if model == "parallel-lmu":
        return SequenceClassifier(
            **common,
            hidden_size=config["hidden_size"],
            num_layers=config["num_layers"],
            order=config["order"],
            theta=config["theta"],
            memory_size=config["memory_size"],
            dropout=config["dropout"],
        )
    if model == "lmu":
        return SequenceClassifier(
            **common,
            hidden_size=config["lmu_hidden_size"],
            num_layers=config["num_layers"],
            order=config["lmu_order"],
            theta=config["theta"],
            memory_size=config["memory_size"],
            dropout=config["dropout"],
            init=config["lmu_init"],
        )
    if model == "lstm":
        return SequenceClassifier(
            **common,
            hidden_size=config["lstm_hidden_size"],
            num_layers=config["num_layers"],
            dropout=config["dropout"],
        )
    raise ValueError(
        f"config key 'model' must be one of ['lmu', 'lstm', 'parallel-lmu'], got {model!r}"
    )


def build_data(config: dict, data_dir: Path | None, saved: dict | None) -> PsMNISTData:
    return PsMNISTData(config, data_dir)


def build_model(config: dict, datamodule: L.LightningDataModule) -> SequenceClassification:
    return SequenceClassification(
        build_net(config), NUM_CLASSES, config["lr"], config["weight_decay"]
    )


EXPERIMENT = register(
    Experiment(
        name="psmnist",
        summary="permuted sequential MNIST, 784 pixels one at a time (accuracy)",
        build_data=build_data,
        build_model=build_model,
    )
)

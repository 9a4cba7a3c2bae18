"""psMNIST: classify MNIST digits read pixel by pixel in one fixed permuted order (accuracy).

The data protocol is in :mod:`plmu.data.mnist`. ``model`` picks the network: the paper's
parallel LMU (order 468, hidden 346, theta 784, 166k parameters; one layer whose final memory
state is one matrix product over the sequence), the original LMU (hidden 212, order 256, the
psMNIST initialisation) or an LSTM.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import Dataset

from plmu.data.mnist import default_data_dir, psmnist_splits, psmnist_test_set
from plmu.layers import LMU_INITS
from plmu.models import SequenceClassifier
from plmu.training.classification import SequenceClassification
from plmu.training.config import ConfigError
from plmu.training.datamodule import SplitDataModule
from plmu.training.registry import Experiment, register

__all__ = ["EXPERIMENT", "PsMNISTData", "build_net", "check_config"]

NUM_CLASSES = 10


class PsMNISTData(SplitDataModule):
    """psMNIST train/validation/test sets from the IDX files in ``data_dir``.

    The files are downloaded in :meth:`prepare_data` (once per machine) when missing. A
    datamodule rebuilt from a checkpoint (``saved`` given, as ``load_checkpoint`` and
    ``plmu evaluate`` do) tests on the t10k files alone: :meth:`prepare_data` fetches only
    those and ``setup("test")`` reads only those, so evaluating needs no training file (any
    other stage then reads, and if need be downloads, all four).

    The pixel permutation is part of the task, and ``torch.randperm`` of ``permutation_seed``
    may give other values under another torch version, so a checkpoint stores the permutation
    itself, once: in ``checkpoint["plmu"]["saved"]`` (:meth:`saved_state`; ``saved`` rebuilds
    the datamodule for ``load_checkpoint`` and ``plmu evaluate``, and the runner gives it to
    :meth:`load_state_dict` before a resumed fit). Lightning's datamodule state
    (:meth:`state_dict`) is empty, so Lightning stores nothing; checkpoints written before held
    the permutation there too, and Lightning still hands it to :meth:`load_state_dict` on
    resuming them. A stored permutation wins over ``permutation_seed``; checkpoints without one
    use the seed.
    """

    def __init__(self, config: dict, data_dir: Path | None, saved: dict | None = None) -> None:
        super().__init__(config["batch_size"], config["num_workers"], seed=config["seed"])
        self.config = config
        self.data_dir = Path(data_dir) if data_dir is not None else default_data_dir()
        stored = (saved or {}).get("permutation")
        self.permutation = None if stored is None else _stored(stored)
        self.from_checkpoint = saved is not None

    def prepare_data(self) -> None:
        from plmu.data import mnist

        names = mnist.TEST_FILES if self.from_checkpoint else tuple(mnist.FILES)
        data_dir = mnist.files_dir(self.data_dir, names)  # also torchvision's ROOT/MNIST/raw
        if any(mnist.find_idx(data_dir, name) is None for name in names):
            mnist.download_mnist(data_dir, names=names)

    def setup(self, stage: str | None = None) -> None:
        """Build the three sets (first call); a datamodule rebuilt from a checkpoint builds the
        test set alone for ``stage="test"`` (reading the t10k files only)."""
        if stage == "test" and self.from_checkpoint and self.train_set is None:
            if self.test_set is None:
                with self._stored_permutation_named():
                    self.test_set = psmnist_test_set(
                        self.data_dir,
                        permutation_seed=self.config["permutation_seed"],
                        download=False,
                        order=self.permutation,
                        num_classes=NUM_CLASSES,
                    )
                self.permutation = self.test_set.order
            return
        super().setup(stage)

    def build(self) -> tuple[Dataset, Dataset, Dataset]:
        """The three sets. A ``val_size`` the training images cannot spare (its maximum
        depends on the data, so load_config cannot check it) is a ``ConfigError`` naming
        the config key."""
        with self._stored_permutation_named():
            try:
                sets = psmnist_splits(
                    self.data_dir,
                    val_size=self.config["val_size"],
                    permutation_seed=self.config["permutation_seed"],
                    # prepare_data fetched only the test files of a checkpoint's datamodule
                    download=self.from_checkpoint,
                    order=self.permutation,
                    num_classes=NUM_CLASSES,
                )
            except ValueError as error:
                if not str(error).startswith("val_size "):
                    raise
                raise ConfigError.naming_key(error) from None
        self.permutation = sets[0].order
        return sets

    @contextmanager
    def _stored_permutation_named(self) -> Iterator[None]:
        """A stored permutation that does not fit the images is named as the checkpoint's."""
        try:
            yield
        except ValueError as error:
            if self.permutation is None or "permutation" not in str(error):
                raise
            raise ValueError(
                f"the checkpoint's pixel permutation does not fit the images in "
                f"{self.data_dir}: {error}"
            ) from None

    def saved_state(self) -> dict:
        """``{"permutation": [...]}`` once known (after ``setup``, or from ``saved``)."""
        return {} if self.permutation is None else {"permutation": self.permutation.tolist()}

    def state_dict(self) -> dict:
        """Nothing: the permutation is in ``checkpoint["plmu"]["saved"]`` (:meth:`saved_state`),
        which the runner restores; here it stored the permutation a second time."""
        return {}

    def load_state_dict(self, state_dict: dict) -> None:
        """A resumed fit: the checkpoint's permutation (its ``saved``, or the Lightning state of a
        checkpoint written before that was empty) replaces the one ``setup`` built."""
        stored = state_dict.get("permutation")
        if stored is None:
            return
        order = _stored(stored)
        if self.permutation is not None and torch.equal(order, self.permutation):
            return
        self.permutation = order
        if self.train_set is not None:  # rebuild the sets in the stored order
            self.train_set = self.val_set = self.test_set = None
            self.setup()
        elif self.test_set is not None:  # the test set alone (setup("test") of a checkpoint's)
            self.test_set = None
            self.setup("test")


def _stored(permutation: object) -> torch.Tensor:
    """A checkpoint's stored permutation as an int64 tensor (its length is checked in build)."""
    order = torch.as_tensor(permutation)
    if order.dim() != 1 or order.dtype.is_floating_point or order.dtype == torch.bool:
        raise ValueError(f"the checkpoint's pixel permutation is malformed: {permutation!r:.80}")
    return order.long()


MODELS = ("lmu", "lstm", "parallel-lmu")


def check_config(config: dict) -> None:
    """Refuse a ``model`` or ``lmu_init`` the networks do not have, naming the config key (a
    ``ConfigError``; ``lmu_init`` reached ``LMUCell`` as ``init``, which its message named)."""
    if config["model"] not in MODELS:
        raise ConfigError(
            f"config key 'model' must be one of {list(MODELS)}, got {config['model']!r}"
        )
    if config["lmu_init"] not in LMU_INITS:
        raise ConfigError(
            f"config key 'lmu_init' must be 'default' or 'psmnist', got {config['lmu_init']!r}"
        )


def build_net(config: dict) -> SequenceClassifier:
    """The classifier the config's ``model`` names: ``(B, 784, 1) -> logits (B, 10)``."""
    check_config(config)
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
    return SequenceClassifier(  # "lstm", the one left
        **common,
        hidden_size=config["lstm_hidden_size"],
        num_layers=config["num_layers"],
        dropout=config["dropout"],
    )


def build_data(config: dict, data_dir: Path | None, saved: dict | None) -> PsMNISTData:
    """The datamodule; :func:`check_config` first, so a bad model setting is refused before
    any data is read."""
    check_config(config)
    return PsMNISTData(config, data_dir, saved)


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

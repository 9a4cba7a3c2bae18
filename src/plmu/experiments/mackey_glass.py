"""Mackey-Glass: predict the chaotic series 15 steps ahead (NRMSE); the `make demo` experiment.

The data protocol is in :mod:`plmu.data.mackey_glass`. ``model`` picks the network: the
4-layer parallel LMU (default), the original LMU (the paper's order 4, theta 4, hidden 49) or an
LSTM, each near the paper's 18k parameters.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from torch.utils.data import Dataset

from plmu.data.mackey_glass import check_forecast_settings, forecast_splits
from plmu.models import SequenceRegressor
from plmu.training.config import ConfigError
from plmu.training.datamodule import SplitDataModule
from plmu.training.registry import Experiment, register
from plmu.training.regression import SequenceRegression

__all__ = ["EXPERIMENT", "MackeyGlassData", "build_net"]


class MackeyGlassData(SplitDataModule):
    """Train windows and the validation/test sequences, generated from the config's seeds."""

    def __init__(self, config: dict) -> None:
        super().__init__(
            config["batch_size"], config["num_workers"], eval_batch_size=1, seed=config["seed"]
        )
        self.config = config
        self.normaliser: dict[str, float] | None = None

    def build(self) -> tuple[Dataset, Dataset, Dataset]:
        c = self.config
        train, val, test, self.normaliser = forecast_splits(
            c["train_length"],
            c["val_length"],
            c["test_length"],
            horizon=c["horizon"],
            window=c["window"],
            stride=c["stride"],
            warmup=c["warmup"],
            seed=c["data_seed"],
        )
        return train, val, test

    def saved_state(self) -> dict:
        return {} if self.normaliser is None else {"normaliser": self.normaliser}


def build_net(config: dict) -> SequenceRegressor:
    """The regressor the config's ``model`` names: ``(B, T, 1) -> (B, T, 1)``."""
    model = config["model"]
    sizes = {  # (hidden_size, order, theta) per model
        "parallel-lmu": (config["hidden_size"], config["order"], config["theta"]),
        "lmu": (config["lmu_hidden_size"], config["lmu_order"], config["lmu_theta"]),
        "lstm": (config["lstm_hidden_size"], None, None),
    }
    if model not in sizes:
        raise ValueError(f"config key 'model' must be one of {sorted(sizes)}, got {model!r}")
    hidden_size, order, theta = sizes[model]
    return SequenceRegressor(
        input_size=1,
        output_size=1,
        model=model,
        hidden_size=hidden_size,
        num_layers=config["num_layers"],
        order=order,
        theta=theta,
        memory_size=config["memory_size"],
        dropout=config["dropout"],
    )


def build_data(config: dict, data_dir: Path | None, saved: dict | None) -> MackeyGlassData:
    """The datamodule. The lengths, horizon and windows are checked together first (a
    ``ConfigError`` naming the config key), not once ``setup`` generates the series."""
    # generated, never read: data_dir is not used (train and evaluate refuse one given for it;
    # a checkpoint of an earlier plmu may still name one)
    c = config
    try:
        check_forecast_settings(
            c["train_length"],
            c["val_length"],
            c["test_length"],
            **{key: c[key] for key in ("horizon", "window", "stride", "warmup")},
        )
    except ValueError as error:  # the message starts with the setting, named as its key
        raise ConfigError.naming_key(error) from None
    return MackeyGlassData(config)


def build_model(config: dict, datamodule: L.LightningDataModule) -> SequenceRegression:
    return SequenceRegression(build_net(config), config["lr"], config["weight_decay"])


def plot_prediction(module: SequenceRegression, datamodule: MackeyGlassData, out: Path) -> dict:
    """Save ``OUT/prediction.png``: prediction against truth on the test series."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x, y, mask = datamodule.test_set[0]
    # in the weights' dtype: Lightning casts them under precision=64-true, bf16-true, ...
    prediction = module(x.unsqueeze(0).to(module.device, module.dtype)).squeeze(0).float().cpu()
    norm = datamodule.normaliser or {"mean": 0.0, "std": 1.0}
    truth = y.squeeze(-1) * norm["std"] + norm["mean"]
    guess = prediction.squeeze(-1) * norm["std"] + norm["mean"]
    steps = torch.arange(len(truth))[mask][: datamodule.config["plot_steps"]]
    fig, ax = plt.subplots(figsize=(10, 3.5), layout="constrained")
    ax.plot(steps, truth[steps], label="truth", color="black", linewidth=1.2)
    ax.plot(steps, guess[steps], label="prediction", color="tab:orange", linewidth=1.0)
    ax.set_xlabel("step t (test series)")
    ax.set_ylabel(f"x(t + {datamodule.config['horizon']})")
    ax.set_title(f"Mackey-Glass, {datamodule.config['model']}: prediction vs truth")
    ax.legend(loc="upper right")
    out.mkdir(parents=True, exist_ok=True)
    path = out / "prediction.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return {"plot": str(path.absolute())}  # as best_checkpoint: not relative to the cwd


EXPERIMENT = register(
    Experiment(
        name="mackey-glass",
        summary="Mackey-Glass series, predict 15 steps ahead (NRMSE); the CPU demo",
        build_data=build_data,
        build_model=build_model,
        finish=plot_prediction,
        reads_data=False,
    )
)

"""text8 character-level language modelling (PAPER.md section 4): ``plmu train text8``.

Data: :mod:`plmu.data.text8` (27 symbols, 90M/5M/5M split by position). Model:
:class:`~plmu.models.language_model.LMULanguageModel`, trained on whole windows in parallel;
metric ``test_bpc``, bits per character over every character of the test split but the first,
each scored once, with at least ``eval_context`` characters of history past the split's first
``eval_context``. The ``finish`` hook generates
``sample_length`` characters in the step form into ``OUT/sample.txt`` and adds
``train_chars_per_second`` and ``generate_chars_per_second`` to ``OUT/metrics.json``.
"""

from __future__ import annotations

import time
from pathlib import Path

import lightning as L
from torch.utils.data import Dataset

from plmu.data.text8 import (
    ALPHABET,
    VOCAB_SIZE,
    CharWindows,
    ScoredWindows,
    default_data_dir,
    load_text8,
    locate_text8,
    split,
)
from plmu.generation import check_generation_args, generate_text
from plmu.models.language_model import LMULanguageModel
from plmu.training.config import ConfigError
from plmu.training.datamodule import SplitDataModule
from plmu.training.language_modeling import LanguageModeling
from plmu.training.registry import Experiment, register

__all__ = ["EXPERIMENT", "Text8Data", "build_data", "build_model", "finish"]


class Text8Data(SplitDataModule):
    """Training windows of ``seq_len`` characters; scored windows for validation and test.

    ``data_dir`` ``None`` gives a datamodule that never reads data (a checkpoint rebuilt to
    generate text); asking it for data raises a ``ValueError`` that asks for ``--data-dir``.
    """

    vocab_size = VOCAB_SIZE

    def __init__(self, config: dict, data_dir: Path | None) -> None:
        super().__init__(config["batch_size"], config["num_workers"], seed=config["seed"])
        self.config = config
        self.data_dir = data_dir

    def _dir(self) -> Path:
        if self.data_dir is None:
            raise ValueError("no text8 data directory for this checkpoint: pass --data-dir")
        return self.data_dir

    def prepare_data(self) -> None:
        locate_text8(self._dir())  # downloads text8.zip when neither file is there

    def build(self) -> tuple[Dataset, Dataset, Dataset]:
        parts = split(load_text8(self._dir()))
        seq_len, context = self.config["seq_len"], self.config["eval_context"]
        return (
            CharWindows(parts["train"], seq_len),
            ScoredWindows(parts["valid"], seq_len, context),
            ScoredWindows(parts["test"], seq_len, context),
        )

    def saved_state(self) -> dict:
        return {"alphabet": ALPHABET}


def build_data(config: dict, data_dir: Path | None, saved: dict | None) -> Text8Data:
    """Fresh run: ``data_dir`` or :func:`~plmu.data.text8.default_data_dir`. From a checkpoint
    (``saved``): ``data_dir`` as given, ``None`` reads nothing. The ``sample_*`` settings and
    ``0 <= eval_context < seq_len`` are checked here, before any data is read (a
    ``ConfigError``)."""
    if saved and saved.get("alphabet", ALPHABET) != ALPHABET:
        raise ValueError(f"checkpoint alphabet {saved['alphabet']!r} is not text8's {ALPHABET!r}")
    # the sample is generated only after training and testing: a bad setting fails now, not then
    keys = ("sample_prompt", "sample_length", "sample_temperature")
    try:
        check_generation_args(*(config[key] for key in keys), names=keys)
    except (TypeError, ValueError) as error:
        raise ConfigError.naming_key(error) from None
    # ScoredWindows would cut a longer context to seq_len - 1 (one window per scored character)
    seq_len, context = config["seq_len"], config["eval_context"]
    if not 0 <= context < seq_len:
        raise ConfigError(
            f"config key 'eval_context' must lie in [0, seq_len) = [0, {seq_len}), got {context}"
        )
    if data_dir is None and saved is None:
        data_dir = default_data_dir()
    return Text8Data(config, data_dir)


def build_net(config: dict) -> LMULanguageModel:
    """The language model the config describes."""
    return LMULanguageModel(
        vocab_size=VOCAB_SIZE,
        d_model=config["d_model"],
        num_layers=config["num_layers"],
        order=config["order"],
        theta=config["theta"],
        memory_size=config["memory_size"],
        hidden_activation=config["hidden_activation"],
        dropout=config["dropout"],
    )


def build_model(config: dict, datamodule: L.LightningDataModule) -> LanguageModeling:
    module = LanguageModeling(
        build_net(config), config["lr"], config["weight_decay"], config["warmup_steps"]
    )
    module.sample_settings = {
        key: config[key] for key in ("sample_prompt", "sample_length", "sample_temperature", "seed")
    }
    return module


def finish(module: LanguageModeling, datamodule: L.LightningDataModule, out: Path) -> dict:
    """Write ``out/sample.txt`` (prompt + generated text, step form) and return the
    throughputs: ``generate_chars_per_second`` (batch 1, sampling included) and, when this run
    trained, ``train_chars_per_second``."""
    s = module.sample_settings
    start = time.perf_counter()
    text = generate_text(
        module.net,
        s["sample_prompt"],
        s["sample_length"],
        temperature=s["sample_temperature"],
        seed=s["seed"],
    )
    seconds = time.perf_counter() - start
    out.mkdir(parents=True, exist_ok=True)
    (out / "sample.txt").write_text(s["sample_prompt"].lower() + text + "\n")
    metrics = {"generate_chars_per_second": round(s["sample_length"] / seconds, 1)}
    if module.train_seconds > 0:
        metrics["train_chars_per_second"] = round(module.train_tokens_per_second, 1)
    return metrics


EXPERIMENT = register(
    Experiment(
        name="text8",
        summary="text8 character-level language model (27 symbols), bits per character",
        build_data=build_data,
        build_model=build_model,
        finish=finish,
    )
)

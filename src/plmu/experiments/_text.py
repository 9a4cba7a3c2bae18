"""What the text classification experiments (imdb, qqp, snli) share: their builders.

Config keys (flat, see ``src/plmu/configs/<name>.yaml``): data ``max_length``, ``vocab_size``,
``min_frequency``, ``truncation_side``, ``val_fraction``; network ``model`` (``parallel-lmu``,
or the baselines ``lmu`` and ``lstm``), ``embedding_dim``,
``hidden_size``, ``order``, ``theta``, ``memory_size``, ``num_layers``, ``dropout`` and, for
pairs, ``mlp_hidden``; optimiser ``lr``, ``weight_decay``.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import lightning as L

from plmu.data.text_classification import TextClassificationData
from plmu.data.text_tasks import TASKS
from plmu.models.text import PairClassifier, TextClassifier
from plmu.training.classification import SequenceClassification
from plmu.training.registry import Experiment, register

__all__ = ["build_data", "build_model", "register_text_experiment"]


def build_data(
    name: str, config: dict[str, Any], data_dir: Path | None, saved: dict[str, Any] | None
) -> TextClassificationData:
    """The datamodule of the text task ``name``; reads nothing until ``setup``."""
    return TextClassificationData(TASKS[name], config, data_dir, saved)


def build_model(config: dict[str, Any], data: L.LightningDataModule) -> SequenceClassification:
    """A :class:`TextClassifier` (or :class:`PairClassifier` for pairs) trained with
    cross-entropy; the vocabulary size comes from ``data``'s tokenizer."""
    if not isinstance(data, TextClassificationData):
        raise TypeError(f"data must be a TextClassificationData, got {type(data).__name__}")
    encoder = {
        "vocab_size": data.vocab_size_built,
        "embedding_dim": int(config["embedding_dim"]),
        "hidden_size": int(config["hidden_size"]),
        "order": int(config["order"]),
        "theta": float(config["theta"]),
        "memory_size": int(config["memory_size"]),
        "num_layers": int(config["num_layers"]),
        "model": str(config["model"]),
    }
    dropout = float(config["dropout"])
    if data.task.is_pair:
        net = PairClassifier(
            data.num_classes, int(config["mlp_hidden"]), dropout=dropout, **encoder
        )
    else:
        net = TextClassifier(data.num_classes, dropout=dropout, **encoder)
    return SequenceClassification(
        net,
        data.num_classes,
        lr=float(config["lr"]),
        weight_decay=float(config.get("weight_decay", 0.0)),
    )


def register_text_experiment(name: str, summary: str) -> Experiment:
    """Register the text task ``name`` (a key of :data:`TASKS`) as an experiment."""
    if name not in TASKS:
        raise ValueError(f"unknown text task {name!r}; known: {sorted(TASKS)}")
    return register(
        Experiment(
            name=name,
            summary=summary,
            build_data=partial(build_data, name),
            build_model=build_model,
        )
    )

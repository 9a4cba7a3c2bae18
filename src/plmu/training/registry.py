"""The experiment registry: one :class:`Experiment` per paper benchmark.

Each experiment module in :mod:`plmu.experiments` calls :func:`register` at import time; the
runner and the command line look experiments up by name with :func:`get`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import lightning

__all__ = ["Experiment", "UnknownExperimentError", "get", "names", "register"]

BuildData = Callable[[dict, "Path | None", "dict | None"], lightning.LightningDataModule]
BuildModel = Callable[[dict, lightning.LightningDataModule], lightning.LightningModule]
Finish = Callable[[lightning.LightningModule, lightning.LightningDataModule, Path], dict]


@dataclass(frozen=True)
class Experiment:
    """A named benchmark: how to build its data and its model from a flat config dict.

    Attributes:
        name: the name used on the command line, e.g. ``"mackey-glass"``.
        summary: one line for ``plmu train --help``.
        build_data: ``(config, data_dir, saved) -> LightningDataModule``. ``saved`` is ``None``
            on a fresh run; when a checkpoint is loaded it is the dict the datamodule's optional
            ``saved_state()`` returned at save time. With ``saved`` given and ``data_dir`` None
            it must not read data.
        build_model: ``(config, datamodule) -> LightningModule``. On a fresh run it is called
            after ``datamodule.prepare_data()`` and ``datamodule.setup("fit")`` (Lightning calls
            both again in ``fit``, so they must be idempotent); when loading a checkpoint right
            after ``build_data(saved=...)``. The module names the validation metric that picks
            the best checkpoint in its ``monitor`` and ``monitor_mode`` attributes (default
            ``"val_loss"``, ``"min"``) and logs test metrics as ``test_<metric>``.
        finish: optional ``(module, datamodule, out) -> dict``, called after testing on rank 0:
            writes artefacts (plots, samples) into ``out`` and returns extra metrics that are
            merged into ``OUT/metrics.json``.
        reads_data: whether the experiment reads data from a ``data_dir``; one that generates
            its data (Mackey-Glass) sets ``False``, and ``train``/``evaluate`` given a
            ``data_dir`` for it refuse it (it would be ignored).
    """

    name: str
    summary: str
    build_data: BuildData
    build_model: BuildModel
    finish: Finish | None = None
    reads_data: bool = True


class UnknownExperimentError(ValueError):
    """Raised by :func:`get` for a name that no experiment registered."""


_REGISTRY: dict[str, Experiment] = {}


def register(experiment: Experiment) -> Experiment:
    """Add ``experiment`` to the registry and return it.

    Registering again from the same module replaces the entry (a module may be reloaded); a name
    already taken by another module raises ``ValueError``.
    """
    if not isinstance(experiment, Experiment):
        raise TypeError(f"experiment must be an Experiment, got {type(experiment).__name__}")
    known = _REGISTRY.get(experiment.name)
    if known is not None and known.build_model.__module__ != experiment.build_model.__module__:
        raise ValueError(
            f"an experiment named {experiment.name!r} is already registered "
            f"(by {known.build_model.__module__})"
        )
    _REGISTRY[experiment.name] = experiment
    return experiment


def _load_builtin() -> None:
    import plmu.experiments  # noqa: F401  (registers the built-in experiments)


def get(name: str) -> Experiment:
    """Return the experiment called ``name``; ``ValueError`` listing the known names if none."""
    _load_builtin()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownExperimentError(
            f"unknown experiment {name!r}; known experiments: {', '.join(names())}"
        ) from None


def names() -> list[str]:
    """The registered experiment names, sorted."""
    _load_builtin()
    return sorted(_REGISTRY)

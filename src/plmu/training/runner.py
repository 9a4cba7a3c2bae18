"""Train and evaluate any registered experiment with Lightning.

``train`` builds the config, the datamodule and the model from the registry, then runs
``Trainer.fit`` and ``Trainer.test`` (on the best checkpoint by the module's monitored validation
metric). ``--devices``/``--accelerator``/``--strategy``/``--num-nodes`` go straight to the
Trainer, so one command trains on CPU, one GPU or many with DDP (also under torchrun/SLURM).

Everything a run writes lies under its output directory ``OUT``:

- ``OUT/config.yaml``: the resolved config;
- ``OUT/checkpoints/best.ckpt`` and ``last.ckpt`` (written at the end of every epoch and, with
  the config key ``checkpoint_every_n_steps``, also every that many optimizer steps); each holds
  ``checkpoint["plmu"] = {"experiment", "config", "saved", "data_dir", "version"}`` so that
  :func:`load_checkpoint` can rebuild the run; each is written to a part file beside it and
  renamed into place (:class:`~plmu.training.checkpoints._AtomicCheckpointIO`), never staged in
  the system temp directory;
- ``OUT/logs/version_N/metrics.csv`` and ``OUT/tensorboard/version_N/`` (one version per
  invocation, so a resumed run never overwrites its earlier logs);
- ``OUT/metrics.json``: ``experiment``, ``model`` (the config's ``model``; ``parallel-lmu`` for
  text8 and iwslt15-en-vi, which have one network, of parallel LMU layers, and no such key),
  every ``test_*`` metric, ``params`` (trainable), ``epochs`` (completed:
  trained to their last batch, so not one that ``max_steps`` stopped inside), ``global_step``
  (optimizer steps), ``seconds`` (training wall-clock summed over resumed sessions) and whatever
  the experiment's ``finish`` returns.

A run whose ``OUT/checkpoints/last.ckpt`` exists resumes from it; the resumed run starts from
the checkpoint's config, and ``--config``/``--set`` given again apply on top (e.g. ``--set
epochs=20`` to train longer). Only the keys in :data:`~plmu.training.config.RESUME_KEYS` may
change (``epochs``, ``max_steps``, ``patience``, ``checkpoint_every_n_steps``, ``num_workers``,
``num_threads``, ``log_every_n_steps``: how long it trains, when it saves or stops, how it reads
and logs); a new value of any other one is refused, naming every changed key
(:func:`~plmu.training.checkpoints._check_resume_config`): a data or task key (``horizon``,
``max_length``, ``seq_len``, ...), a seed or ``batch_size`` would train the rest of the run on
another task or batches than the checkpoint's, ``lr``/``weight_decay`` would be replaced by the
restored optimizer state's, a model setting would not fit the weights or be put back by them
(e.g. ``theta``). :func:`evaluate` takes no overrides: it tests a checkpoint on its own config.
A killed run loses the steps since its last checkpoint: at most an epoch, or
``checkpoint_every_n_steps`` steps; one stopped by Ctrl-C or SIGTERM none
(:class:`~plmu.training.stopping._GracefulStop`). Resumed, it trains on as the uninterrupted run
would have: Lightning restores the weights, the optimizer, the LR schedule and the loops;
:class:`~plmu.training.run_info.RunInfo` the random generators (dropout); the training loader
(:class:`~plmu.training.datamodule.ResumableDataLoader`) the epoch's order and, from a
checkpoint written mid-epoch, its position, so the rest of that epoch follows. A run that
``max_steps`` stops inside an epoch validates its final weights and writes ``last.ckpt`` inside
that epoch, so a larger ``max_steps`` continues it exactly; with ``max_steps`` set, an epoch-end
checkpoint is marked finished as it loads (Lightning #19617 replayed that epoch).

This module assembles the run; its parts live beside it: :mod:`plmu.training.checkpoints` (the
callbacks that save checkpoints, how they are written and read, the checks before a resume),
:mod:`plmu.training.stopping` (early stopping, Ctrl-C and SIGTERM) and
:mod:`plmu.training.run_info` (:class:`~plmu.training.run_info.RunInfo`).
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import lightning as L
import torch
import yaml
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only

from plmu.training import registry
from plmu.training.base import count_parameters
from plmu.training.checkpoints import (
    CheckpointError,
    _AtomicCheckpointIO,
    _check_optimizer_fits,
    _check_resume_config,
    _check_weights_fit,
    _checkpoint_completed_epochs,
    _LastCheckpoint,
    _read_checkpoint,
    _remove_part_files,
    _StepCheckpoint,
    load_checkpoint,
    read_run_info,
)
from plmu.training.config import load_config
from plmu.training.run_info import RunInfo
from plmu.training.stopping import _EarlyStopping, _GracefulStop

__all__ = [
    "CheckpointError",
    "RunInfo",
    "evaluate",
    "format_summary",
    "load_checkpoint",
    "read_run_info",
    "train",
]

# Lightning suggests worker processes for every DataLoader; num_workers is a config key instead.
warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
warnings.filterwarnings("ignore", message=r".*log_every_n_steps.*")
# Lightning's own internals (torch.utils._pytree) warn about a deprecated API on every run.
warnings.filterwarnings("ignore", message=r".*treespec, LeafSpec.*")
# A resumed run writes into its own checkpoint folder on purpose.
warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")


def train(
    experiment: str,
    *,
    out: str | Path | None = None,
    config_file: str | Path | None = None,
    overrides: Iterable[str] = (),
    data_dir: str | Path | None = None,
    resume: str | Path | None = None,
    devices: int | str = "auto",
    accelerator: str = "auto",
    strategy: str = "auto",
    num_nodes: int = 1,
    progress_bar: bool = True,
    callbacks: Iterable[Callback] = (),
) -> dict[str, Any]:
    """Train ``experiment``, test the best checkpoint, write ``OUT/metrics.json``; return it.

    Args:
        experiment: a registered name (``plmu.training.registry.names()``).
        out: the output directory (default ``runs/<experiment>``).
        config_file: YAML file overriding any config keys.
        overrides: ``"key=value"`` strings applied last.
        data_dir: where the experiment reads (or downloads) its data (a resumed run defaults to
            the directory it was started with).
        resume: a checkpoint to resume from; by default ``OUT/checkpoints/last.ckpt`` when it
            exists.
        devices, accelerator, strategy, num_nodes: passed to ``lightning.Trainer``.
        progress_bar: show Lightning's progress bar.
        callbacks: extra Lightning callbacks.
    """
    exp = registry.get(experiment)
    _check_data_dir_applies(exp, data_dir)
    _check_strategy_trains_in_place(strategy)
    out = _output_dir(Path(out) if out is not None else Path("runs") / exp.name)
    data_dir = None if data_dir is None else Path(data_dir)
    checkpoint_path = Path(resume) if resume is not None else out / "checkpoints" / "last.ckpt"
    base = None
    resumed: dict[str, Any] | None = None
    if resume is not None or checkpoint_path.is_file():
        resumed = _read_checkpoint(checkpoint_path, "last.ckpt")  # resume the latest
        info = resumed["plmu"]
        if info["experiment"] != exp.name:
            remedy = "resume another checkpoint" if resume is not None else "use another --out"
            raise CheckpointError(
                f"{checkpoint_path} belongs to experiment {info['experiment']!r}, "
                f"not {exp.name!r}; {remedy}"
            )
        base = info["config"]
        if data_dir is None and info.get("data_dir"):
            data_dir = Path(info["data_dir"])  # the resumed run reads the same data
    else:
        checkpoint_path = None
    config = load_config(exp.name, config_file, overrides, base=base)
    if base is not None:
        _check_resume_config(
            load_config(exp.name, base=base), config, checkpoint_path, resume is not None
        )
        _check_resume_epochs(config, resumed, checkpoint_path)

    _set_threads(config)
    L.seed_everything(config["seed"], workers=True, verbose=False)
    datamodule = exp.build_data(config, data_dir, None)
    datamodule.prepare_data()
    datamodule.setup("fit")
    if resumed is not None:
        # the checkpoint's data state (a vocabulary, a pixel permutation) replaces the one built
        # again, before the model is sized from it; also for checkpoints that predate
        # Lightning's datamodule state (which Lightning restores later, the same)
        datamodule.load_state_dict(resumed["plmu"].get("saved") or {})
    module = exp.build_model(config, datamodule)
    if resumed is not None:
        # the config keys are those of the checkpoint or RESUME_KEYS: this catches weights
        # that the model built from the checkpoint's own config does not take
        _check_weights_fit(module, resumed.get("state_dict", {}), checkpoint_path)
        _check_optimizer_fits(
            module, resumed.get("optimizer_states") or [], checkpoint_path, resume is not None
        )
        del resumed

    run_info = RunInfo(exp.name, config, data_dir)
    trainer = _trainer(
        config,
        out,
        module,
        [run_info, *callbacks],
        devices=devices,
        accelerator=accelerator,
        strategy=strategy,
        num_nodes=num_nodes,
        progress_bar=progress_bar,
    )
    _write_config(out, config)  # only now: a refused command leaves a run's config.yaml alone
    _remove_part_files(out)
    for logger in trainer.loggers:  # the config beside the curves (hparams.yaml, TensorBoard)
        logger.log_hyperparams({"experiment": exp.name, **config})
    if checkpoint_path is not None:  # only now: a refused command does not say it resumed
        _info(f"resuming from {checkpoint_path}")
    trainer.fit(module, datamodule=datamodule, ckpt_path=checkpoint_path)
    seconds = run_info.seconds
    _say_why_it_stopped_early(trainer, run_info.completed_epochs(trainer), config["epochs"])
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    results = trainer.test(module, datamodule=datamodule, ckpt_path=best or None)
    metrics = {
        "experiment": exp.name,
        "model": _model_name(config),
        **_test_metrics(results),
        "params": count_parameters(module),
        "epochs": run_info.completed_epochs(trainer),
        "global_step": trainer.global_step,
        "seconds": round(seconds, 2),
        "best_checkpoint": best or None,
    }
    return _finish(trainer, exp, module, datamodule, out, metrics, f"plmu train {exp.name}")


def evaluate(
    checkpoint: str | Path,
    *,
    data_dir: str | Path | None = None,
    out: str | Path | None = None,
    devices: int | str = "auto",
    accelerator: str = "auto",
    strategy: str = "auto",
    num_nodes: int = 1,
    progress_bar: bool = True,
) -> dict[str, Any]:
    """Test a checkpoint; write ``OUT/metrics.json`` (and the experiment's artefacts); return it.

    ``data_dir`` defaults to the directory the run was trained with; ``out`` to
    ``evaluate/`` beside the run's ``checkpoints/`` folder.
    """
    checkpoint = Path(checkpoint)
    raw = _read_checkpoint(checkpoint)
    info = raw["plmu"]
    _check_data_dir_applies(registry.get(info["experiment"]), data_dir)
    if data_dir is None and info.get("data_dir"):
        data_dir = info["data_dir"]
    if out is None:
        # absolute: "best.ckpt" given inside RUN/checkpoints has the parent "." (no name)
        folder = checkpoint.absolute().parent
        out = (folder.parent if folder.name == "checkpoints" else folder) / "evaluate"
    out = _output_dir(Path(out))
    exp, config, module, datamodule = load_checkpoint(checkpoint, data_dir)
    _set_threads(config)
    L.seed_everything(config["seed"], workers=True, verbose=False)
    # the data first, as in train: the Trainer's CSVLogger makes OUT/logs/version_N as the
    # test starts, and a --data-dir without the data left that folder behind, empty
    datamodule.prepare_data()
    datamodule.setup("test")
    trainer = _trainer(
        config,
        out,
        module,
        [],
        devices=devices,
        accelerator=accelerator,
        strategy=strategy,
        num_nodes=num_nodes,
        progress_bar=progress_bar,
        fitting=False,
    )
    start = time.perf_counter()
    results = trainer.test(module, datamodule=datamodule)
    metrics = {
        "experiment": exp.name,
        "model": _model_name(config),
        **_test_metrics(results),
        "params": count_parameters(module),
        "epochs": _checkpoint_completed_epochs(raw),
        "global_step": int(raw.get("global_step", 0)),
        "seconds": round(time.perf_counter() - start, 2),
        "checkpoint": str(checkpoint.absolute()),
    }
    return _finish(trainer, exp, module, datamodule, out, metrics, f"plmu evaluate {checkpoint}")


def format_summary(title: str, metrics: dict[str, Any]) -> str:
    """A small two-column table of ``metrics`` under ``title``."""
    rows = [(key, _format_value(value)) for key, value in metrics.items() if value is not None]
    width = max((len(key) for key, _ in rows), default=0)
    rule = "-" * max(len(title), width + 2 + max((len(v) for _, v in rows), default=0))
    lines = [rule, title, rule, *(f"{key:<{width}}  {value}" for key, value in rows), rule]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ helpers


def _trainer(
    config: dict,
    out: Path,
    module: L.LightningModule,
    callbacks: list[Callback],
    *,
    devices: int | str,
    accelerator: str,
    strategy: str,
    num_nodes: int,
    progress_bar: bool,
    fitting: bool = True,
) -> L.Trainer:
    monitor = getattr(module, "monitor", "val_loss")
    mode = getattr(module, "monitor_mode", "min")
    callbacks = list(callbacks)
    loggers: list = [CSVLogger(out, name="logs")]
    if fitting:
        # Two callbacks: Lightning >= 2.5 refreshes `save_last` only when the top-k checkpoint
        # changes, so a separate unmonitored one writes last.ckpt after every epoch.
        last: dict[str, Any] = {
            "dirpath": out / "checkpoints",
            "filename": "last",
            "monitor": None,
            "save_top_k": 1,
            "enable_version_counter": False,
        }
        callbacks += [
            _GracefulStop(out / "checkpoints" / "last.ckpt"),
            ModelCheckpoint(
                dirpath=out / "checkpoints",
                filename="best",
                monitor=monitor,
                mode=mode,
                save_top_k=1,
                enable_version_counter=False,
            ),
            _LastCheckpoint(**last),
        ]
        every = config.get("checkpoint_every_n_steps")
        if every is not None:
            # A third callback: one ModelCheckpoint saves every n steps or every n epochs, not
            # both. It writes the same last.ckpt (save_top_k=1 and one file name: it replaces
            # the file, never deletes it), so the latest of the two saves is the one resumed.
            callbacks.append(_StepCheckpoint(**last, every_n_train_steps=every))
        if config.get("patience") is not None:
            callbacks.append(_EarlyStopping(monitor, patience=config["patience"], mode=mode))
        loggers.append(TensorBoardLogger(out, name="tensorboard", default_hp_metric=False))
    limits = {
        key: config[key]
        for key in ("limit_train_batches", "limit_val_batches", "limit_test_batches")
        if config.get(key) is not None
    }
    try:
        return L.Trainer(
            default_root_dir=out,
            max_epochs=config["epochs"],
            max_steps=config.get("max_steps", -1),
            accelerator=accelerator,
            devices=devices,
            strategy=strategy,
            num_nodes=num_nodes,
            precision=config.get("precision", "32-true"),
            gradient_clip_val=config.get("gradient_clip_val"),
            accumulate_grad_batches=config.get("accumulate_grad_batches", 1),
            log_every_n_steps=config.get("log_every_n_steps", 10),
            callbacks=callbacks,
            logger=loggers,
            enable_progress_bar=progress_bar,
            enable_checkpointing=fitting,
            plugins=[_AtomicCheckpointIO()],
            **limits,
        )
    except ImportError as error:  # e.g. --accelerator tpu without torch_xla: Lightning's
        # ModuleNotFoundError says what to install, in one line rather than a traceback
        raise ValueError(
            f"--accelerator {accelerator}, --strategy {strategy} and precision "
            f"{config.get('precision', '32-true')!r} need a package that is not installed: "
            f"{error}"
        ) from error


def _model_name(config: dict) -> str:
    """metrics.json's ``model``: the config's ``model`` key (``parallel-lmu``, ``lmu``,
    ``lstm``); ``parallel-lmu`` for the experiments without one, text8 and iwslt15-en-vi, whose
    only network is built of parallel LMU layers (it was ``null`` there)."""
    return config.get("model", "parallel-lmu")


def _test_metrics(results: list[dict[str, float]]) -> dict[str, float]:
    metrics: dict[str, float] = {}
    for result in results:
        metrics.update({k: float(v) for k, v in result.items() if k.startswith("test_")})
    return dict(sorted(metrics.items()))


def _finish(
    trainer: L.Trainer,
    exp: registry.Experiment,
    module: L.LightningModule,
    datamodule: L.LightningDataModule,
    out: Path,
    metrics: dict[str, Any],
    title: str,
) -> dict[str, Any]:
    if not trainer.is_global_zero:
        return metrics
    if exp.finish is not None:
        module.eval()
        with torch.no_grad():
            metrics.update(exp.finish(module, datamodule, out) or {})
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str) + "\n")
    print(format_summary(f"{title}  ->  {out}", metrics), flush=True)
    return metrics


def _check_data_dir_applies(exp: registry.Experiment, data_dir: str | Path | None) -> None:
    """Refuse a ``data_dir`` given for an experiment that generates its data: it was ignored
    silently, though its user probably expected it read (as ``--seed`` with ``--greedy``)."""
    if data_dir is not None and not exp.reads_data:
        raise ValueError(
            f"{exp.name} generates its data and reads none: --data-dir {data_dir} would be "
            f"ignored; leave it out"
        )


# Lightning's strategies that run the fit in processes started from this one (spawn, fork; the
# notebook one forks) and send back only the weights and the logged metrics.
_CHILD_PROCESS_STRATEGIES = ("ddp_spawn", "ddp_fork", "ddp_notebook")


def _check_strategy_trains_in_place(strategy: object) -> None:
    """Refuse, naming ``--strategy``, a strategy that trains in child processes: their loggers
    and callbacks (the run's time, its completed epochs, the CSV log's columns) never came back,
    and the test after the fit failed with a traceback from the CSV log, which it truncated.
    ``ddp`` starts the other processes as commands of their own and runs rank 0 here."""
    if isinstance(strategy, str) and strategy.startswith(_CHILD_PROCESS_STRATEGIES):
        raise ValueError(
            f"--strategy {strategy} is not supported by plmu train: it trains in child "
            f"processes whose loggers and callbacks do not come back; use --strategy ddp "
            f"(also under torchrun or SLURM)"
        )


def _check_resume_epochs(config: dict, checkpoint: dict, path: Path) -> None:
    """Refuse, naming ``epochs``, a resumed run given fewer ``epochs`` than its checkpoint has
    trained, before any data is read: Lightning refused it only as the fit began, with
    ``Trainer(max_epochs=...)`` in its message."""
    done = _checkpoint_completed_epochs(checkpoint)
    if config["epochs"] < done:
        raise ValueError(
            f"config key 'epochs' is {config['epochs']}, but {path} has trained {done} epochs: "
            f"give epochs >= {done} to resume it, test it with plmu evaluate, or train into "
            f"another --out"
        )


def _output_dir(out: Path) -> Path:
    """``out``, refused before any work when it (or the nearest part of it that exists) is a
    file, or a folder this process may not write into (read-only, another user's): Lightning's
    loggers failed on it only after the data was prepared, with a bare ``[Errno 17] File
    exists`` (``[Errno 13] Permission denied``, ``[Errno 30] Read-only file system``)."""
    for path in (out, *out.parents):
        if path.is_dir():
            if not os.access(path, os.W_OK | os.X_OK):
                raise ValueError(
                    f"output directory --out {out} cannot be written: {path} is not writable"
                )
            return out
        if path.exists():
            problem = "is a file" if path == out else f"cannot be made: {path} is a file"
            raise ValueError(f"output directory --out {out} {problem}, not a directory")
    return out


def _set_threads(config: dict) -> None:
    threads = config.get("num_threads")
    if threads is not None:
        if not isinstance(threads, int) or threads < 1:
            raise ValueError(f"config key 'num_threads' must be an int >= 1, got {threads!r}")
        torch.set_num_threads(threads)


def _say_why_it_stopped_early(trainer: L.Trainer, epochs: int, planned: int) -> None:
    """Print why early stopping ended the run before its planned ``epochs`` (a run that ended
    at epoch 3 of 30 said nothing about it)."""
    if epochs >= planned:
        return
    for callback in trainer.callbacks:
        reason = callback.stopped_because() if isinstance(callback, _EarlyStopping) else None
        if reason is not None:
            _info(f"early stopping ended training after epoch {epochs} of {planned}: {reason}")


@rank_zero_only
def _info(message: str) -> None:
    print(f"plmu: {message}", flush=True)


@rank_zero_only
def _write_config(out: Path, config: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        return f"{value:.6g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)

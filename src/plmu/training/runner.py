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
  renamed into place (:class:`_AtomicCheckpointIO`), never staged in the system temp directory;
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
(:func:`_check_resume_config`): a data or task key (``horizon``, ``max_length``, ``seq_len``,
...), a seed or ``batch_size`` would train the rest of the run on another task or batches than
the checkpoint's, ``lr``/``weight_decay`` would be replaced by the restored optimizer state's, a
model setting would not fit the weights or be put back by them (e.g. ``theta``).
:func:`evaluate` takes no overrides: it tests a checkpoint on its own config. A killed run
loses the steps since its last checkpoint: at most an epoch, or ``checkpoint_every_n_steps``
steps; one stopped by Ctrl-C or SIGTERM none (:class:`_GracefulStop`). Resumed, it trains on as
the uninterrupted run would have: Lightning restores the weights, the optimizer, the LR schedule
and the loops; :class:`RunInfo` the random generators (dropout); the training loader
(:class:`~plmu.training.datamodule.ResumableDataLoader`) the epoch's order and, from a
checkpoint written mid-epoch, its position, so the rest of that epoch follows. A run that
``max_steps`` stops inside an epoch validates its final weights and writes ``last.ckpt`` inside
that epoch, so a larger ``max_steps`` continues it exactly; with ``max_steps`` set, an epoch-end
checkpoint is marked finished as it loads (Lightning #19617 replayed that epoch).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import signal
import sys
import threading
import time
import uuid
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import yaml
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
from lightning.pytorch.callbacks import early_stopping as _early_stopping
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.plugins import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException

import plmu
from plmu.training import registry
from plmu.training.base import count_parameters
from plmu.training.config import RESUME_KEYS, load_config

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


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable or was not written by ``plmu train``."""


class RunInfo(Callback):
    """Stores ``checkpoint["plmu"]``, the training time accumulated over resumed sessions and the
    random number generators' states, so that a resumed run drops out exactly as the
    uninterrupted run would have (the training loader keeps its order and position itself).
    Also tells :meth:`completed_epochs` whether this session's last epoch was stopped inside
    (not saved: it is read once the fit is over)."""

    _stopped_inside_epoch = False  # this session's last epoch ended before its last batch

    def __init__(self, experiment: str, config: dict, data_dir: Path | None) -> None:
        self.experiment = experiment
        self.config = config
        self.data_dir = None if data_dir is None else str(Path(data_dir).resolve())
        self.previous_seconds = 0.0
        self.started = time.perf_counter()

    @property
    def seconds(self) -> float:
        """Training wall-clock: earlier sessions plus this one so far."""
        return self.previous_seconds + time.perf_counter() - self.started

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.started = time.perf_counter()
        self._stopped_inside_epoch = False

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._stopped_inside_epoch = not trainer.is_last_batch

    def completed_epochs(self, trainer: L.Trainer) -> int:
        """The epochs trained to their last batch, once ``trainer.fit`` has returned.

        Lightning ends an epoch that ``max_steps`` stops inside as it ends a whole one, and
        ``trainer.current_epoch`` counts it; a session that resumes such a run and has nothing
        left to train reads the count from the checkpoint, written inside the epoch, which does
        not count it.
        """
        return trainer.current_epoch - int(self._stopped_inside_epoch)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Lightning gives a resumed run's training loader its saved position (the fit loop's
        # "combined_loader" state) when it first sets the loader up, which is normally after
        # the checkpoint's loop state was read. A configure_optimizers that asks for
        # trainer.estimated_stepping_batches (text8's) sets it up earlier, and the position is
        # never given (Lightning issue #20550). Give it here: after the restore, before the
        # first batch; a no-op when Lightning has done it (the pending states are cleared).
        # A private method: should a later Lightning drop it, the text8 resume test says so.
        load = getattr(trainer.fit_loop, "_load_combined_loader_states", None)
        if load is not None:
            load()

    def on_load_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if trainer.max_steps != -1:
            _finish_saved_epoch(checkpoint.get("loops") or {})

    def state_dict(self) -> dict[str, Any]:
        return {"seconds": self.seconds, "rng": _rng_states()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.previous_seconds = float(state_dict.get("seconds", 0.0))
        if state_dict.get("rng") is not None:  # restored before the next epoch's shuffle
            _set_rng_states(state_dict["rng"])

    def on_save_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        datamodule = trainer.datamodule
        saved = getattr(datamodule, "saved_state", None)
        checkpoint["plmu"] = {
            "experiment": self.experiment,
            "config": dict(self.config),
            "saved": (saved() if callable(saved) else None) or {},
            "data_dir": self.data_dir,
            "version": plmu.__version__,
        }


def _finish_saved_epoch(loops: dict[str, Any]) -> None:
    """Mark the epoch a checkpoint was written at the end of as finished (Lightning #19617).

    Lightning writes an epoch-end checkpoint before it counts the epoch as completed. Resuming
    with ``max_steps`` set, it then replays that epoch as an empty one (its end hooks run again
    and the sampler's epoch moves on), so the next epoch's order is skipped and with ``epochs``
    reached first a whole epoch is lost. Called from a callback's ``on_load_checkpoint``, before
    the loops are restored: the saved progress then reads as "between two epochs".
    """
    fit = loops.get("fit_loop") or {}
    epoch = fit.get("epoch_progress") or {}
    parts = [epoch.get("total"), epoch.get("current")]
    if not all(
        p and p["ready"] == p["started"] == p["processed"] == p["completed"] + 1 for p in parts
    ):
        return
    for part in parts:
        part["completed"] = part["processed"]
    for key in ("epoch_loop.batch_progress", "epoch_loop.scheduler_progress"):
        progress = fit.get(key)
        if progress and "current" in progress:
            progress["current"] = dict.fromkeys(progress["current"], 0)
    if "epoch_loop.batch_progress" in fit:
        fit["epoch_loop.batch_progress"]["is_last_batch"] = False


def _checkpoint_completed_epochs(checkpoint: dict[str, Any]) -> int:
    """The epochs a checkpoint's run had trained to their last batch.

    ``checkpoint["epoch"]`` is the epoch it was written in (Lightning counts an epoch as completed
    only after its end hooks, where the epoch-end checkpoints are written); the fit loop's
    ``is_last_batch`` says whether that epoch's last batch was trained.
    """
    fit = (checkpoint.get("loops") or {}).get("fit_loop") or {}
    batches = fit.get("epoch_loop.batch_progress") or {}
    return int(checkpoint.get("epoch", -1)) + int(bool(batches.get("is_last_batch", True)))


def _mid_epoch_save_point(trainer: L.Trainer, batch_idx: int) -> bool:
    """Whether the end of batch ``batch_idx`` is where a mid-epoch checkpoint resumes exactly:
    the batch ended an optimizer step (no accumulated gradient is lost) and is not the epoch's
    last (a checkpoint there would be resumed as the epoch's end, without its validation)."""
    stepped = (batch_idx + 1) % trainer.accumulate_grad_batches == 0
    return stepped and not trainer.is_last_batch


def _stopped_inside_epoch(trainer: L.Trainer) -> bool:
    """Whether ``max_steps`` ends the run at this batch, which is not its epoch's last."""
    return 0 < trainer.max_steps <= trainer.global_step and not trainer.is_last_batch


class _LastCheckpoint(ModelCheckpoint):
    """``last.ckpt`` at every epoch end, and where ``max_steps`` stops a run inside an epoch.

    Lightning validates at epoch ends only, so a run that ``max_steps`` stops inside an epoch
    would end without a validation, a ``best.ckpt`` or early stopping's last look. Asking the
    trainer to stop after that batch makes Lightning validate first (as it does for early
    stopping); the weights are unchanged by it.

    ``last.ckpt`` is then written after that validation (right after the batch when nothing is
    validated), while Lightning's loops still record a position
    inside the epoch (and the training loader its batch count): the same command with a larger
    ``max_steps`` continues the epoch as the longer run would have, and the best checkpoint's
    record includes that validation. Written at the epoch-end hook that follows, it would record
    the epoch as finished, and the resumed run would skip the epoch's other batches.
    """

    _pending = False  # a save waiting for the validation after the max_steps batch

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if _stopped_inside_epoch(trainer):
            trainer.should_stop = True  # validate these weights before the run ends
            if trainer.enable_validation and sum(trainer.num_val_batches) > 0:
                self._pending = True
            else:
                super().on_train_epoch_end(trainer, pl_module)  # the epoch-end save, now

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._pending and not trainer.sanity_checking:
            self._pending = False
            # the monitored checkpoints save at the epoch-end hook, which comes after this:
            # let them take this validation now, so this checkpoint records it (they then skip
            # the epoch-end save, as at the same step)
            for callback in trainer.checkpoint_callbacks:
                if callback is not self and getattr(callback, "monitor", None) is not None:
                    callback.on_train_epoch_end(trainer, pl_module)
            super().on_train_epoch_end(trainer, pl_module)
        else:
            super().on_validation_end(trainer, pl_module)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._pending:  # the validation did not come: save as without one
            self._pending = False
            super().on_train_epoch_end(trainer, pl_module)
        elif not _stopped_inside_epoch(trainer):
            super().on_train_epoch_end(trainer, pl_module)


class _StepCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint(every_n_train_steps=...)`` that saves only after a batch that ended an
    optimizer step, and never after an epoch's last batch.

    With gradient accumulation the batches between optimizer steps hold gradients that no
    checkpoint stores (Lightning's own check, that the step count moved since its last save,
    lets one through after a skipped last batch or a resume). A checkpoint written after the
    last batch comes before the epoch's validation, and Lightning resumes from it as from the end
    of the epoch, without validating it: the best checkpoint and early stopping would miss that
    epoch. The end-of-epoch ``last.ckpt``, written after the validation, covers that step.
    """

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if _mid_epoch_save_point(trainer, batch_idx):
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)


# why a run stopped early, kept in the callback's state by the Lightning releases that have
# EarlyStoppingReason (2.6 does; None with older ones, which do not record it)
_NON_FINITE = getattr(
    getattr(_early_stopping, "EarlyStoppingReason", None), "NON_FINITE_METRIC", None
)


class _EarlyStopping(EarlyStopping):
    """``EarlyStopping`` (config key ``patience``) that a resumed run obeys.

    Lightning restores the callback's state, ``patience`` included, but not the trainer's
    decision to stop: the same command run again after an early stop trained on (one more epoch
    at least, and more whenever that epoch improved), where it should only test, and ``--set
    patience=N`` given on resuming was replaced by the checkpoint's. Here the configured
    patience stays, and a run whose restored state has used it up stops before training (a
    larger ``patience`` continues it, as a larger ``epochs`` does). A run stopped by a
    non-finite metric (whatever its patience; the wait count does not show it, so the resumed
    run trained one more epoch, on the weights that gave it) stays stopped, whatever
    ``patience`` says (with a Lightning that records why it stopped, as 2.6 does).
    """

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        patience = self.patience
        super().load_state_dict(state_dict)
        self.patience = patience

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        if self.wait_count >= max(self.patience, 1):  # an improvement sets it to 0
            trainer.should_stop = True
        if _NON_FINITE is not None and getattr(self, "stopping_reason", None) == _NON_FINITE:
            trainer.should_stop = True


_SIGTERM_STATUS = 128 + signal.SIGTERM  # 143: the exit status of a process SIGTERM ended
# the signals that stop training gracefully: their default handlers and names in messages
_STOP_SIGNALS: dict[int, tuple[Any, str]] = {
    signal.SIGINT: (signal.default_int_handler, "Ctrl-C"),
    signal.SIGTERM: (signal.SIG_DFL, "SIGTERM"),
}


class _GracefulStop(Callback):
    """The first Ctrl-C (SIGINT) or SIGTERM stops training at the next safe point with
    ``last.ckpt`` written there; a second one stops at once (as Ctrl-C and Lightning's own SIGTERM
    handling did before).

    The safe point is the end of the next batch that ends an optimizer step, where
    ``checkpoint_every_n_steps`` saves too (the resumed run continues the epoch from there, as
    that path does); at an epoch's last batch it is the start of the next epoch, after the
    validation and the epoch-end ``last.ckpt``; after the last epoch's, the end of training (the
    test is not run). Then Ctrl-C raises ``KeyboardInterrupt``, which Lightning turns into its usual
    exit (``plmu`` exits 130), and SIGTERM Lightning's ``SIGTERMException`` with status 143
    (128 + 15, which ``plmu`` exits with).

    Under DDP every process takes part: a signal may reach one process (``kill`` of rank 0) or
    all of them (Ctrl-C, a scheduler), at different moments, so the processes agree at every
    batch end (an all-reduce of the signal received, SIGTERM over SIGINT) and all stop at the
    same safe point, with rank 0 writing the one ``last.ckpt`` that every rank resumes from.
    Before, Ctrl-C stopped every process at once and SIGTERM at the next batch (Lightning's
    handling), without a checkpoint: a run lost its steps since the last one.

    Only in the main thread, and for each signal only where it had its default handler when
    ``fit`` began (Python's ``default_int_handler`` for SIGINT, ``SIG_DFL`` for SIGTERM);
    otherwise that process's signal changes nothing. Lightning installs its own SIGTERM handler
    after ``on_fit_start`` (it sets a flag its loops stop on, at the end of any batch, with no
    checkpoint; under DDP it also passes the signal on to the other processes Lightning
    started); the handlers here replace it at ``on_train_start``, so only one of the two acts,
    and Lightning's teardown then restores the same handlers as :meth:`_restore` does: the ones
    from before ``fit`` (installed before Lightning records the handlers, the SIGINT one was
    put back by its teardown after a stop).
    """

    def __init__(self, last: Path) -> None:
        self.last = last
        self.requested: int | None = None  # the signal that asked this process to stop
        self._handled: list[int] = []  # the signals to take over at on_train_start
        self._rank = 0  # the global rank, which prints the message
        self._previous: dict[int, Any] = {}  # the handlers replaced, to restore

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.requested = None
        self._handled = []
        self._rank = trainer.global_rank
        if threading.current_thread() is threading.main_thread():
            self._handled = [
                signum
                for signum, (default, _) in _STOP_SIGNALS.items()
                if signal.getsignal(signum) is default
            ]

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if signal.SIGTERM in self._handled and trainer.received_sigterm:
            raise SIGTERMException(_SIGTERM_STATUS)  # Lightning's handler had it (sanity check)
        for signum in self._handled:
            signal.signal(signum, self._on_signal)
            self._previous[signum] = _STOP_SIGNALS[signum][0]  # for SIGTERM not Lightning's

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self.requested is not None:  # the second signal: at once
            self._stop(signum)
        self.requested = signum
        if self._rank != 0:  # under DDP rank 0 speaks for all (Ctrl-C reaches every one)
            return
        name = _STOP_SIGNALS[signum][1]
        print(
            f"\nplmu: {name}: stopping after this step with checkpoints/last.ckpt written "
            f"({name} again to stop at once)",
            file=sys.stderr,
            flush=True,
        )

    def _agreed(self, trainer: L.Trainer) -> int | None:
        """The signal that asks every process to stop, or ``None``: this process's alone, or
        under DDP the largest that any process received (SIGTERM 15 over SIGINT 2). A collective
        call under DDP: every rank makes it at the same hooks."""
        if trainer.world_size == 1:
            return self.requested
        flag = torch.tensor(self.requested or 0, device=trainer.strategy.root_device)
        return int(trainer.strategy.reduce(flag, reduce_op="max")) or None

    def _stop(self, signum: int) -> None:
        self._restore()
        if signum == signal.SIGTERM:
            raise SIGTERMException(_SIGTERM_STATUS)
        raise KeyboardInterrupt

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        signum = self._agreed(trainer)
        if signum is not None and _mid_epoch_save_point(trainer, batch_idx):
            # a full checkpoint; left unset, Lightning prints a notice that it chose that
            trainer.save_checkpoint(self.last, weights_only=False)  # every rank, rank 0 writes
            self._stop(signum)

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if batch_idx == 0:  # after the epoch end and last.ckpt (or a signal in the validation)
            signum = self._agreed(trainer)
            if signum is not None:
                self._stop(signum)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        signum = self._agreed(trainer)
        if signum is not None:  # in the last batch: training is done, skip the test
            self._stop(signum)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore()

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        if isinstance(exception, KeyboardInterrupt):
            # Lightning ignores SIGINT while it shuts down; its teardown restores the handler
            self._previous.pop(signal.SIGINT, None)
        self._restore()


class _AtomicCheckpointIO(TorchCheckpointIO):
    """Writes a checkpoint into a hidden file in its own folder, then renames it into place.

    Lightning stages every checkpoint in the system temp directory (``TMPDIR``, through an
    fsspec transaction) and moves it into place: a write outside the run's folder, and where the
    temp directory is on another file system (a tmpfs ``/tmp``) the move is a copy over the old
    file, so a run killed during it is left with a truncated ``last.ckpt`` and nothing to resume
    from. Here the bytes go to ``.NAME.XXXXXXXX.part`` beside ``NAME``, are flushed to disk and
    renamed over the old file (atomic on POSIX and Windows): a run stopped at any point keeps its
    previous checkpoint whole, and a failed write leaves no part file behind.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None
    ) -> None:
        if storage_options is not None:  # as TorchCheckpointIO
            raise TypeError(
                "`Trainer.save_checkpoint(..., storage_options=...)` with `storage_options` arg"
                f" is not supported for `{type(self).__name__}`."
            )
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        part = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.part")
        # os.open with 0o666: the file gets the permissions the umask gives a new file
        handle = os.open(
            part, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666
        )
        try:
            with os.fdopen(handle, "wb") as stream:
                torch.save(checkpoint, stream)
                stream.flush()
                os.fsync(stream.fileno())
            os.replace(part, path)
        except BaseException:
            with contextlib.suppress(OSError):
                part.unlink()
            raise


@rank_zero_only
def _remove_part_files(out: Path) -> None:
    """Remove the part files of checkpoints whose writing a killed run left unfinished."""
    for part in (out / "checkpoints").glob(".*.ckpt.*.part"):
        with contextlib.suppress(OSError):
            part.unlink()


def _read_checkpoint(path: str | Path, suggest: str = "best.ckpt") -> dict[str, Any]:
    """The checkpoint at ``path``; a folder is refused naming the file ``suggest`` in it."""
    path = Path(path)
    if path.is_dir():
        # the run folder or its checkpoints/ folder: name the file that is (or would be) there
        inside = path / suggest
        if not inside.is_file() and path.absolute().name != "checkpoints":  # "." has no name
            inside = path / "checkpoints" / suggest
        raise CheckpointError(
            f"checkpoint {path} is a folder; give a checkpoint file, e.g. {inside}"
        )
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        # Lightning checkpoints hold plain Python objects besides tensors; only load trusted files.
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # torch raises many types for a damaged file
        raise CheckpointError(
            f"checkpoint {path} cannot be read ({type(error).__name__})"
        ) from None
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("plmu"), dict):
        raise CheckpointError(f"{path} is not a checkpoint written by plmu train")
    return checkpoint


def read_run_info(path: str | Path) -> dict[str, Any]:
    """``checkpoint["plmu"]`` of the checkpoint at ``path`` (experiment, config, saved, ...)."""
    return _read_checkpoint(path)["plmu"]


def load_checkpoint(
    path: str | Path, data_dir: str | Path | None = None
) -> tuple[registry.Experiment, dict, L.LightningModule, L.LightningDataModule]:
    """Rebuild a trained run from its checkpoint.

    Returns ``(experiment, config, module, datamodule)``: the module has the checkpoint's weights
    and is in eval mode; the datamodule was built with ``saved`` from the checkpoint and
    ``data_dir`` (no data is read until its ``setup`` is called).
    """
    checkpoint = _read_checkpoint(path)
    info = checkpoint["plmu"]
    experiment = registry.get(info["experiment"])
    config = load_config(experiment.name, base=info["config"])
    datamodule = experiment.build_data(
        config, None if data_dir is None else Path(data_dir), info.get("saved") or {}
    )
    module = experiment.build_model(config, datamodule)
    try:
        module.load_state_dict(checkpoint["state_dict"])
    except (KeyError, RuntimeError) as error:
        first = str(error).strip().splitlines()[0]
        raise CheckpointError(f"{path}: weights do not fit the model ({first})") from None
    module.eval()
    return experiment, config, module, datamodule


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


def _output_dir(out: Path) -> Path:
    """``out``, refused before any work when it (or the nearest part of it that exists) is a
    file: Lightning's loggers failed on it only after the data was prepared, with a bare
    ``[Errno 17] File exists``."""
    for path in (out, *out.parents):
        if path.is_dir():
            return out
        if path.exists():
            problem = "is a file" if path == out else f"cannot be made: {path} is a file"
            raise ValueError(f"output directory --out {out} {problem}, not a directory")
    return out


def _check_weights_fit(
    module: L.LightningModule, state: dict, path: Path, changed: Iterable[str] = ()
) -> None:
    """Refuse to resume when the (overridden) config builds a model the weights do not fit, or
    one whose fixed buffers differ from the checkpoint's: loading would put the checkpoint's
    back, so the new value would be silently ignored (``--set theta=4`` on a run of theta 16
    trained on with theta 16 while ``config.yaml`` said 4). ``changed`` names the config keys
    that differ from the checkpoint's config, for the message."""
    because = f" (changed: {', '.join(changed)})" if changed else ""
    built = module.state_dict()
    expected = {name: tuple(t.shape) for name, t in built.items()}
    found = {name: tuple(t.shape) for name, t in state.items()}
    if expected != found:
        names = sorted(n for n in expected.keys() | found.keys() if expected.get(n) != found.get(n))
        raise CheckpointError(
            f"cannot resume from {path}: its weights do not fit the model this config builds "
            f"(e.g. {names[0]}){because}; train into another --out instead"
        )
    for name, buffer in module.named_buffers():
        saved = state.get(name)
        if name in built and saved is not None and not torch.equal(buffer.cpu(), saved.cpu()):
            now, then = buffer.tolist(), saved.tolist()
            shown = f": {then} saved, {now} now" if buffer.numel() == 1 else ""
            raise CheckpointError(
                f"cannot resume from {path}: it would restore {name}{shown}, which this config "
                f"sets otherwise{because}; train into another --out instead"
            )


def _check_optimizer_fits(
    module: L.LightningModule, states: list[dict], path: Path, given: bool = False
) -> None:
    """Refuse to resume when the checkpoint's optimizer state is for other trainable weights
    than this version's model has: Lightning failed inside ``fit`` with torch's "loaded state
    dict contains a parameter group that doesn't match the size of optimizer's group". A
    psMNIST ``model=lmu`` checkpoint of a plmu that froze ``LMUCell(init="psmnist")``'s
    ``e_x``, ``e_h``, ``e_m``, ``W_x`` and ``W_h`` holds Adam's state for ``W_m`` and the head
    only; they all train now, so the run cannot go on as it would have (its weights still
    evaluate). ``given``: the checkpoint came from ``--resume``."""
    if not states:
        return
    saved = sum(len(group["params"]) for group in states[0].get("param_groups", []))
    trainable = sum(1 for p in module.parameters() if p.requires_grad)
    if saved != trainable:
        raise CheckpointError(
            f"cannot resume from {path}: its optimizer state is for {saved} trainable weight "
            f"tensors, this version's model trains {trainable} (it was written by a plmu whose "
            f"model froze some weights, e.g. psMNIST model=lmu before its e_x, e_h, e_m, W_x "
            f"and W_h trained); plmu evaluate still tests it, but to train, start a new run in "
            f"{'another --out without --resume' if given else 'another --out'}"
        )


def _check_resume_config(saved: dict, config: dict, path: Path, given: bool = False) -> None:
    """Refuse a resumed run whose config changes a key outside :data:`RESUME_KEYS`.

    ``saved`` is the checkpoint's config (keys the packaged config gained since filled in with
    their defaults), ``config`` the one ``--config``/``--set`` made of it. A new data or task key
    (``horizon``, ``window``, ``max_length``, ``seq_len``, ``val_size``, a seed, ``batch_size``,
    ...) trained the rest of the run on another task than the checkpoint's while it claimed to
    continue it; a new ``lr``/``weight_decay`` was replaced by the restored optimizer state's;
    a new model setting did not fit the weights or was put back by them. ``given``: the
    checkpoint came from ``--resume``, so the remedy is a run without it.
    """
    changed = sorted(k for k in config if k not in RESUME_KEYS and config[k] != saved.get(k))
    if not changed:
        return
    shown = ", ".join(f"{key!r} ({saved.get(key)!r} -> {config[key]!r})" for key in changed)
    kept = [f"{key}={saved[key]!r}" for key in ("lr", "weight_decay") if key in changed]
    optimizer = f"; the optimizer state restored from it keeps {', '.join(kept)}" if kept else ""
    remedy = "another --out without --resume" if given else "another --out"
    raise CheckpointError(
        f"cannot change {shown} when resuming from {path}: the rest of the run would not train "
        f"on as the uninterrupted run would have{optimizer} (a resumed run may change only "
        f"{', '.join(sorted(RESUME_KEYS))}); train into {remedy} instead"
    )


def _set_threads(config: dict) -> None:
    threads = config.get("num_threads")
    if threads is not None:
        if not isinstance(threads, int) or threads < 1:
            raise ValueError(f"config key 'num_threads' must be an int >= 1, got {threads!r}")
        torch.set_num_threads(threads)


def _rng_states() -> dict[str, Any]:
    """The states of the generators training draws from (torch, CUDA, NumPy, Python)."""
    # Tensors and plain Python values only: Lightning loads checkpoints with weights_only=True.
    name, keys, position, has_gauss, gauss = np.random.get_state()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": (name, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, gauss),
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    name, keys, position, has_gauss, gauss = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, gauss))
    random.setstate(states["python"])
    cuda = states.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


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

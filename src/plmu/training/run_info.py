"""``RunInfo``: what a run keeps in every checkpoint besides Lightning's own state
(``checkpoint["plmu"]``, the training time and the random generators' states).
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

import plmu
from plmu.training.checkpoints import _finish_saved_epoch

__all__ = ["RunInfo"]


class RunInfo(Callback):
    """Stores ``checkpoint["plmu"]``, the training time accumulated over resumed sessions and the
    random number generators' states, so that a resumed run drops out exactly as the
    uninterrupted run would have (the training loader keeps its order and position itself).
    Also tells :meth:`completed_epochs` whether this session's last epoch was stopped inside
    (not saved: it is read once the fit is over)."""

    _stopped_inside_epoch = False  # this session's last epoch ended before its last batch
    _trained = False  # this session's fit loop started (on_train_start; skipped when done)

    def __init__(self, experiment: str, config: dict, data_dir: Path | None) -> None:
        self.experiment = experiment
        self.config = config
        self.data_dir = None if data_dir is None else str(Path(data_dir).resolve())
        self.previous_seconds = 0.0
        self.started = time.perf_counter()

    @property
    def seconds(self) -> float:
        """Training wall-clock: earlier sessions plus this one so far (a session whose fit had
        nothing left to train, a finished run's command given again, adds nothing)."""
        if not self._trained:
            return self.previous_seconds
        return self.previous_seconds + time.perf_counter() - self.started

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.started = time.perf_counter()  # the sanity check's validation counts too
        self._stopped_inside_epoch = False
        self._trained = False

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
        self._trained = True  # the fit loop runs (Lightning skips it, and this hook, when done)
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

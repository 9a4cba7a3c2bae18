"""The checkpoints of a training run: the callbacks that save them, how a checkpoint is written
and read, and the checks a run makes before it resumes from one.

- :class:`_LastCheckpoint` writes ``last.ckpt`` at every epoch end and where ``max_steps`` stops
  a run inside an epoch, :class:`_StepCheckpoint` every ``checkpoint_every_n_steps`` optimizer
  steps (:func:`_mid_epoch_save_point`: where a mid-epoch checkpoint resumes exactly);
- :class:`_AtomicCheckpointIO` writes each one to a part file beside it and renames it into
  place; :func:`_remove_part_files` removes what a killed run left unfinished;
- :func:`_read_checkpoint`, :func:`read_run_info` and :func:`load_checkpoint` read one
  (:class:`CheckpointError` when it is missing, unreadable or not plmu's);
  :func:`_finish_saved_epoch` and :func:`_checkpoint_completed_epochs` read its loops' progress;
- :func:`_check_resume_config`, :func:`_check_weights_fit` and :func:`_check_optimizer_fits`
  refuse to resume a run that would not train on as the uninterrupted run would have.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_only

from plmu.saved_config import differing_setting, read_settings
from plmu.training import registry
from plmu.training.config import RESUME_KEYS, load_config

__all__ = ["CheckpointError", "load_checkpoint", "read_run_info"]


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable or was not written by ``plmu train``."""


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


def _check_weights_fit(
    module: L.LightningModule, state: dict, path: Path, changed: Iterable[str] = ()
) -> None:
    """Refuse to resume when the (overridden) config builds a model the weights do not fit, or
    one whose fixed buffers differ from the checkpoint's: loading would put the checkpoint's
    back, so the new value would be silently ignored (``--set theta=4`` on a run of theta 16
    trained on with theta 16 while ``config.yaml`` said 4), or one built with other settings
    than the checkpoint records beside its weights (``_extra_state``, :mod:`plmu.saved_config`:
    a discretizer, an activation). ``changed`` names the config keys that differ from the
    checkpoint's config, for the message."""
    because = f" (changed: {', '.join(changed)})" if changed else ""
    built = module.state_dict()
    expected = {name: _layout(name, value) for name, value in built.items()}
    found = {name: _layout(name, value) for name, value in state.items()}
    for name, layout in list(expected.items()):
        if layout == "settings" and name not in found:
            del expected[name]  # a checkpoint of a plmu before the settings were saved
    if expected != found:
        names = sorted(n for n in expected.keys() | found.keys() if expected.get(n) != found.get(n))
        raise CheckpointError(
            f"cannot resume from {path}: its weights do not fit the model this config builds "
            f"(e.g. {names[0]}){because}; train into another --out instead"
        )
    for name, value in built.items():
        if expected.get(name) != "settings":
            continue
        then, now = read_settings(state[name]), read_settings(value)
        if then is None or now is None or differing_setting(then, now) is not None:
            recorded = state[name] if then is None else then
            raise CheckpointError(
                f"cannot resume from {path}: its {name} records {recorded!r}, the model this "
                f"config builds {now!r}{because}; train into another --out instead"
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


def _layout(name: str, value: object) -> tuple[int, ...] | str:
    """A state dict entry's shape, or ``"settings"`` for a module's ``_extra_state`` (its
    settings, :mod:`plmu.saved_config`: a tensor whose length is that of their JSON, or a
    dict)."""
    if name.rsplit(".", 1)[-1] == "_extra_state" or not isinstance(value, torch.Tensor):
        return "settings"
    return tuple(value.shape)


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

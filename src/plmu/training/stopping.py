"""How a run stops before its last epoch: early stopping on the monitored validation metric
(config key ``patience``, :class:`_EarlyStopping`) and the first Ctrl-C or SIGTERM
(:class:`_GracefulStop`), each so that the same command run again continues or ends the run as
the uninterrupted run would have.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import Callback, EarlyStopping
from lightning.pytorch.callbacks import early_stopping as _early_stopping
from lightning.pytorch.utilities.exceptions import SIGTERMException

from plmu.training.checkpoints import _mid_epoch_save_point

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
        if self.stopped_because() is not None:
            trainer.should_stop = True

    def stopped_because(self) -> str | None:
        """Why this callback stops (or stopped) the run, in words, or ``None`` if it does not:
        its patience used up, or a metric that was not finite."""
        if _NON_FINITE is not None and getattr(self, "stopping_reason", None) == _NON_FINITE:
            return f"{self.monitor} was not finite"
        patience = max(self.patience, 1)
        if self.wait_count >= patience:  # an improvement sets it to 0
            times = "validation" if patience == 1 else "validations"
            return f"{self.monitor} did not improve for {patience} {times} (patience)"
        return None


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
    all of them (Ctrl-C, a scheduler), at different moments, so the processes agree (a max
    all-reduce of the signal each received, SIGTERM over SIGINT) and all stop at the same safe
    point, with rank 0 writing the one ``last.ckpt`` that every rank resumes from. Before,
    Ctrl-C stopped every process at once and SIGTERM at the next batch (Lightning's handling),
    without a checkpoint: a run lost its steps since the last one.

    The agreement costs a training step no host/device sync and no wait for the other ranks:
    it runs over a CPU (gloo) process group made at ``on_train_start``, and at the end of batch
    t each rank starts an asynchronous all-reduce of its signal and waits for it at the end of
    batch t + 1, long done by then; so a signal seen by some rank at batch t's end is known to
    every rank at batch t + 1's end, and the safe point is the first from there on (the same
    batch on every rank). At an epoch's start and at the end of training the ranks agree at
    once (a blocking all-reduce, once an epoch, after the validation), as for a single
    process. A torch without gloo agrees with a blocking all-reduce at every batch end. A
    SIGTERM that Lightning's handler took before training started (after ``on_fit_start``,
    before this callback's handlers replace it at ``on_train_start``) stops a single process at
    ``on_train_start``; under DDP the ranks agree there (a blocking all-reduce, once) and all
    stop, though only some had it.

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
        self._pid: int | None = None  # the process that installed the handlers (not a worker)
        self._previous: dict[int, Any] = {}  # the handlers replaced, to restore
        # under DDP: the CPU process group the ranks agree over (None: none, or no gloo), the
        # all-reduce started at the last batch end with its flag, and the signal agreed so far
        self._group: Any = None
        self._pending: tuple[Any, torch.Tensor] | None = None
        self._signalled: int | None = None

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
        ddp = trainer.world_size > 1 and dist.is_available() and dist.is_initialized()
        if not ddp and self._lightnings_sigterm(trainer):
            raise SIGTERMException(_SIGTERM_STATUS)  # Lightning's handler had it (sanity check)
        self._pid = os.getpid()
        for signum in self._handled:
            signal.signal(signum, self._on_signal)
            self._previous[signum] = _STOP_SIGNALS[signum][0]  # for SIGTERM not Lightning's
        self._pending, self._signalled = None, None
        if not ddp:
            return
        if dist.is_gloo_available():
            self._group = dist.new_group(backend="gloo")  # collective: every rank, here
        # a SIGTERM that Lightning's handler took before ours replaced it, perhaps on some ranks
        # only (the signal and this hook reach the ranks at different moments): every rank
        # stops here, before training, not that rank alone while the others wait for it (read
        # once ours are in place: a later SIGTERM comes to _on_signal)
        if self._lightnings_sigterm(trainer) and self.requested is None:
            self.requested = signal.SIGTERM
        signum = self._agreed(trainer)  # (blocking, once)
        if signum is not None:
            self._stop(signum)

    def _lightnings_sigterm(self, trainer: L.Trainer) -> bool:
        """Whether Lightning's SIGTERM handler, installed after ``on_fit_start``, had a SIGTERM
        (where this callback takes SIGTERM over)."""
        return signal.SIGTERM in self._handled and trainer.received_sigterm

    def _on_signal(self, signum: int, frame: Any) -> None:
        if os.getpid() != self._pid:  # a DataLoader worker, forked with this handler, that
            return  # the signal reached with its process group: the main process stops it
        if self.requested is not None:  # the second signal: at once
            self._stop(signum)
        self.requested = signum
        if self._rank != 0:  # under DDP rank 0 speaks for all (Ctrl-C reaches every one)
            return
        name = _STOP_SIGNALS[signum][1]
        step = "this" if self._group is None else "the next"  # agreed a batch later
        print(
            f"\nplmu: {name}: stopping after {step} step with checkpoints/last.ckpt written "
            f"({name} again to stop at once)",
            file=sys.stderr,
            flush=True,
        )

    def _agreed(self, trainer: L.Trainer) -> int | None:
        """The signal that asks every process to stop, or ``None``: this process's alone, or
        under DDP the largest that any process received by now (SIGTERM 15 over SIGINT 2),
        waiting for every rank. A collective call under DDP: every rank makes it at the same
        hooks."""
        if trainer.world_size == 1:
            return self.requested
        if self._group is None:  # no gloo: over the training backend
            flag = torch.tensor(self.requested or 0, device=trainer.strategy.root_device)
            return int(trainer.strategy.reduce(flag, reduce_op="max")) or None
        self._drain()
        flag = torch.tensor([self.requested or 0])  # on the CPU: no device involved
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self._group)
        return self._fold(flag)

    def _agreed_a_batch_ago(self, trainer: L.Trainer) -> int | None:
        """At a batch end: as :meth:`_agreed` for a single process (or without gloo); under DDP
        the largest signal any rank had received by the previous batch end (or an earlier
        agreement), waiting for nobody: this batch end's all-reduce is only started."""
        if trainer.world_size == 1 or self._group is None:
            return self._agreed(trainer)
        self._drain()
        flag = torch.tensor([self.requested or 0])
        work = dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self._group, async_op=True)
        self._pending = (work, flag)
        return self._signalled

    def _fold(self, flag: torch.Tensor) -> int | None:
        """The signal agreed so far, with the all-reduced ``flag`` (a CPU tensor) added."""
        self._signalled = max(self._signalled or 0, int(flag.max())) or None
        return self._signalled

    def _drain(self) -> None:
        """Wait for the all-reduce started at the last batch end (every rank started it; done
        long since) and add its result to the signal agreed."""
        if self._pending is not None:
            work, flag = self._pending
            self._pending = None
            work.wait()
            self._fold(flag)

    def _close(self) -> None:
        """Drop the process group, destroyed once nothing is outstanding on it. After an
        exception an all-reduce may still wait for ranks that never start theirs: it is left
        (and the group with it) rather than waited on."""
        if self._group is not None and self._pending is None:
            dist.destroy_process_group(self._group)
        self._group, self._pending = None, None

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
        signum = self._agreed_a_batch_ago(trainer)
        if signum is not None and _mid_epoch_save_point(trainer, batch_idx):
            # a full checkpoint; left unset, Lightning prints a notice that it chose that
            trainer.save_checkpoint(self.last, weights_only=False)  # every rank, rank 0 writes
            self._drain()  # this batch end's all-reduce: every rank started it
            self._stop(self._signalled or signum)

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if batch_idx == 0:  # after the epoch end and last.ckpt (or a signal in the validation)
            signum = self._agreed(trainer)
            if signum is not None:
                self._stop(signum)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        signum = self._agreed(trainer)  # drains the last batch end's all-reduce
        self._close()
        if signum is not None:  # in the last batch: training is done, skip the test
            self._stop(signum)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._close()
        self._restore()

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        if isinstance(exception, KeyboardInterrupt):
            # Lightning ignores SIGINT while it shuts down; its teardown restores the handler
            self._previous.pop(signal.SIGINT, None)
        self._close()
        self._restore()

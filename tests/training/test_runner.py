"""End-to-end runs of every experiment on tiny fixtures: train, evaluate, resume."""

import errno
import json
import os
import signal
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from tiny_configs import TINY_MACKEY_GLASS, TINY_PSMNIST

from conftest import assert_same_last_checkpoint, crash_at_step, loader_position
from plmu.data.mnist import permutation, psmnist_splits
from plmu.training import stopping
from plmu.training.regression import SequenceRegression
from plmu.training.runner import CheckpointError, evaluate, load_checkpoint, train


def _train_mg(out: Path, *extra: str, **kwargs) -> dict:
    return train(
        "mackey-glass",
        out=out,
        overrides=[*TINY_MACKEY_GLASS, *extra],
        accelerator="cpu",
        devices=1,
        progress_bar=False,
        **kwargs,
    )


@pytest.mark.parametrize("model", ["parallel-lmu", "lstm", "lmu"])
def test_mackey_glass_end_to_end(tmp_path: Path, model: str) -> None:
    out = tmp_path / "run"
    metrics = _train_mg(out, f"model={model}")
    written = json.loads((out / "metrics.json").read_text())
    assert written == json.loads(json.dumps(metrics, default=str))
    assert written["model"] == model and written["epochs"] == 1
    assert 0.0 < written["test_nrmse"] < 5.0
    assert written["params"] > 0 and written["seconds"] > 0
    assert (out / "checkpoints" / "best.ckpt").is_file()
    assert (out / "checkpoints" / "last.ckpt").is_file()
    assert (out / "prediction.png").stat().st_size > 1000
    assert (out / "config.yaml").is_file()
    assert list((out / "logs").glob("version_0/metrics.csv"))
    assert list((out / "tensorboard").glob("version_0/events.*"))
    info = torch.load(out / "checkpoints" / "last.ckpt", weights_only=False)["plmu"]
    assert info["experiment"] == "mackey-glass" and info["config"]["model"] == model
    assert set(info["saved"]["normaliser"]) == {"mean", "std"}


def test_evaluate_from_checkpoint_matches_training(tmp_path: Path) -> None:
    out = tmp_path / "run"
    trained = _train_mg(out)
    evaluated = evaluate(out / "checkpoints" / "best.ckpt", accelerator="cpu", progress_bar=False)
    assert evaluated["test_nrmse"] == pytest.approx(trained["test_nrmse"], rel=1e-5)
    assert evaluated["epochs"] == 1
    assert json.loads((out / "evaluate" / "metrics.json").read_text())["test_nrmse"] == (
        pytest.approx(trained["test_nrmse"], rel=1e-5)
    )
    assert (out / "evaluate" / "prediction.png").is_file()


def test_evaluate_inside_the_checkpoints_folder_writes_beside_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``plmu evaluate best.ckpt`` run in RUN/checkpoints wrote RUN/checkpoints/evaluate."""
    out = tmp_path / "run"
    _train_mg(out)
    monkeypatch.chdir(out / "checkpoints")
    evaluate("best.ckpt", accelerator="cpu", progress_bar=False)
    assert (out / "evaluate" / "metrics.json").is_file()
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]


def test_metrics_json_paths_do_not_depend_on_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The files metrics.json names are absolute, as ``best_checkpoint`` was: a relative --out
    gave ``"plot": "run/prediction.png"`` (train) and ``"checkpoint": "run/checkpoints/..."``
    (evaluate), relative to the directory the command ran in, not to metrics.json."""
    monkeypatch.chdir(tmp_path)
    trained = _train_mg(Path("run"))
    evaluated = evaluate(Path("run/checkpoints/best.ckpt"), accelerator="cpu", progress_bar=False)
    paths = [trained["best_checkpoint"], trained["plot"], evaluated["checkpoint"]]
    paths.append(evaluated["plot"])
    assert all(Path(path).is_absolute() and Path(path).is_file() for path in paths), paths


def test_load_checkpoint_rebuilds_the_module(tmp_path: Path) -> None:
    out = tmp_path / "run"
    _train_mg(out)
    experiment, _, module, datamodule = load_checkpoint(out / "checkpoints" / "last.ckpt")
    assert experiment.name == "mackey-glass" and not module.training
    state = torch.load(out / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    for name, value in module.state_dict().items():  # tensors, and the layers' settings
        assert torch.equal(value, state[name]) if torch.is_tensor(value) else value == state[name]
    datamodule.setup("test")
    x, _, _ = datamodule.test_set[0]
    assert module(x.unsqueeze(0)).shape == (1, x.shape[0], 1)


def test_resume_continues_to_more_epochs(tmp_path: Path) -> None:
    out = tmp_path / "run"
    first = _train_mg(out)
    steps_per_epoch = first["global_step"]
    second = _train_mg(out, "epochs=2")
    assert second["epochs"] == 2
    assert second["global_step"] == 2 * steps_per_epoch
    assert second["seconds"] > first["seconds"]
    assert (out / "logs" / "version_1" / "metrics.csv").is_file()  # earlier logs kept


class _SlowFitStart(L.Callback):
    """Waits ``seconds`` as the fit starts (a slow setup, say)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        time.sleep(self.seconds)


def test_a_run_with_nothing_left_to_train_adds_no_training_time(tmp_path: Path) -> None:
    """The same command again after a finished run only tests: its fit trains nothing, and
    ``seconds`` stays the checkpoint's (it added the no-op fit's wall-clock, here a slow 0.5 s
    setup)."""
    out = tmp_path / "run"
    first = _train_mg(out)
    checkpoint = torch.load(out / "checkpoints" / "last.ckpt", weights_only=False)
    (saved,) = [v["seconds"] for k, v in checkpoint["callbacks"].items() if "RunInfo" in k]
    again = _train_mg(out, callbacks=[_SlowFitStart(0.5)])
    assert again["global_step"] == first["global_step"]
    assert again["seconds"] == round(saved, 2) <= first["seconds"]


def test_resume_refuses_a_changed_model(tmp_path: Path) -> None:
    out = tmp_path / "run"
    _train_mg(out)
    written = (out / "config.yaml").read_text()
    with pytest.raises(CheckpointError, match=r"cannot change 'hidden_size' \(8 -> 9\) when"):
        _train_mg(out, "epochs=2", "hidden_size=9")
    assert (out / "config.yaml").read_text() == written  # still the run's config


def test_resume_refuses_a_new_theta(tmp_path: Path) -> None:
    """theta changes no weight's shape, and loading the checkpoint restored its theta_ buffer:
    the resumed run trained on with the old window while config.yaml gave the new one."""
    out = tmp_path / "run"
    _train_mg(out)
    written = (out / "config.yaml").read_text()
    with pytest.raises(CheckpointError, match=r"cannot change 'theta' \(16.0 -> 4.0\) when"):
        _train_mg(out, "epochs=2", "theta=4")
    assert (out / "config.yaml").read_text() == written
    assert _train_mg(out, "epochs=2", "theta=16")["epochs"] == 2  # the same value: resumed


def test_weights_that_do_not_fit_are_refused() -> None:
    """The check behind the config's: weights or buffers the built model does not take (a
    checkpoint of another plmu version, say) are refused, not loaded or silently put back."""
    from plmu.experiments import mackey_glass
    from plmu.training.checkpoints import _check_weights_fit
    from plmu.training.config import load_config

    def module(*extra: str) -> L.LightningModule:
        config = load_config("mackey-glass", overrides=[*TINY_MACKEY_GLASS, *extra])
        return mackey_glass.build_model(config, None)

    saved = module().state_dict()
    _check_weights_fit(module(), saved, Path("last.ckpt"))
    with pytest.raises(CheckpointError, match=r"weights do not fit .* another --out"):
        _check_weights_fit(module("hidden_size=9"), saved, Path("last.ckpt"))
    message = r"restore net.stack.layers.0.memory.theta_: 16.0 saved, 4.0 now.*\(changed: theta\)"
    with pytest.raises(CheckpointError, match=message):
        _check_weights_fit(module("theta=4"), saved, Path("last.ckpt"), ["theta"])


def test_weights_saved_with_other_layer_settings_are_refused() -> None:
    """The layers save settings no weight's shape shows (``_extra_state``: a discretizer, an
    activation): a checkpoint whose settings differ from the built model's is refused by name;
    one of a plmu from before they were saved (no such entries) still fits."""
    from plmu.experiments import mackey_glass
    from plmu.training.checkpoints import _check_weights_fit
    from plmu.training.config import load_config

    def module() -> L.LightningModule:
        config = load_config("mackey-glass", overrides=TINY_MACKEY_GLASS)
        return mackey_glass.build_model(config, None)

    from plmu.saved_config import _encode, read_settings

    saved = module().state_dict()
    old = {name: value for name, value in saved.items() if not name.endswith("_extra_state")}
    assert len(old) < len(saved)
    _check_weights_fit(module(), old, Path("last.ckpt"))
    key = next(name for name in saved if name.endswith("memory._extra_state"))
    later = {**saved, key: _encode({**read_settings(saved[key]), "a_later_setting": 1})}
    _check_weights_fit(module(), later, Path("last.ckpt"))  # as load_state_dict: ignored
    fewer = {**saved, key: _encode({"order": read_settings(saved[key])["order"]})}
    _check_weights_fit(module(), fewer, Path("last.ckpt"))  # one recording fewer settings
    other = {**saved, key: _encode({**read_settings(saved[key]), "discretizer": "bilinear"})}
    message = rf"its {key} records .*'bilinear'.*, the model this config builds .*'zoh'"
    with pytest.raises(CheckpointError, match=message):
        _check_weights_fit(module(), other, Path("last.ckpt"))


def test_a_checkpoint_written_before_the_layer_settings_were_saved_resumes(
    tmp_path: Path,
) -> None:
    """``last.ckpt`` of an earlier plmu: its state dict has no ``_extra_state`` entries. The
    run resumes (Lightning loads the weights strictly) and ``load_checkpoint`` reads it."""
    out = tmp_path / "run"
    first = _train_mg(out)
    path = out / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(path, weights_only=False)
    state = checkpoint["state_dict"]
    settings = [name for name in state if name.endswith("_extra_state")]
    assert settings
    for name in settings:
        del state[name]
    torch.save(checkpoint, path)
    load_checkpoint(path)
    assert _train_mg(out, "epochs=2")["global_step"] == 2 * first["global_step"]


def test_resume_refuses_a_new_learning_rate(tmp_path: Path) -> None:
    # The restored optimizer state would keep lr=0.001 whatever the config says.
    out = tmp_path / "run"
    _train_mg(out)
    message = r"'lr' \(0.001 -> 0.5\) when resuming .* optimizer state .* keeps lr=0.001"
    with pytest.raises(CheckpointError, match=message):
        _train_mg(out, "epochs=2", "lr=0.5")


@pytest.mark.parametrize(
    "changes",
    [
        ["horizon=5"],  # another task: predict 5 steps ahead, not 15
        ["window=16", "train_length=800"],  # other training windows, of another series
        ["data_seed=1"],
        ["seed=1"],  # another shuffle order
        ["batch_size=4"],  # other batches, another count of steps per epoch
        ["accumulate_grad_batches=2"],
        ["gradient_clip_val=1.0"],
        ["limit_train_batches=2"],
    ],
)
def test_resume_refuses_a_changed_data_or_training_key(tmp_path: Path, changes: list) -> None:
    """``--set horizon=5`` (or any key that changes the data, the task or how the steps are
    made) on a resumed run was applied: it trained on another task than its checkpoint's
    while claiming to continue it. It is refused before any data is built, naming every key."""
    out = tmp_path / "run"
    _train_mg(out)
    written = (out / "config.yaml").read_text()
    with pytest.raises(CheckpointError) as refused:
        _train_mg(out, "epochs=2", *changes)
    message = str(refused.value)
    for key in (change.split("=")[0] for change in changes):
        assert f"'{key}' (" in message
    assert "'epochs'" not in message  # a key that may change is not named
    assert message.endswith("train into another --out instead")
    assert (out / "config.yaml").read_text() == written
    with pytest.raises(CheckpointError, match=r"another --out without --resume instead$"):
        _train_mg(tmp_path / "new", "epochs=2", *changes, resume=out / "checkpoints/last.ckpt")


def test_resume_may_change_the_length_saving_and_reading_keys(tmp_path: Path) -> None:
    """The keys that do not change what a step computes may change: the run resumes."""
    out = tmp_path / "run"
    first = _train_mg(out)
    options = ["epochs=3", "max_steps=5", "patience=4", "checkpoint_every_n_steps=2"]
    options += ["num_workers=1", "num_threads=2", "log_every_n_steps=1"]
    resumed = _train_mg(out, *options)
    assert (resumed["epochs"], resumed["global_step"]) == (1, 5)
    assert first["global_step"] == 3
    assert "num_workers: 1" in (out / "config.yaml").read_text()


def test_checkpoints_are_written_inside_out_not_in_the_temp_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Lightning staged every checkpoint in the system temp dir (TMPDIR) and moved it into
    # place: a write outside --out and, with TMPDIR on another file system (a tmpfs /tmp), a
    # copy over the old last.ckpt that a kill during it leaves truncated. A temp dir that does
    # not exist shows that nothing goes there.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "no-temp-dir"))
    out = tmp_path / "run"
    _train_mg(out)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    assert not (tmp_path / "no-temp-dir").exists()


def test_a_failed_checkpoint_write_keeps_the_previous_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "run"
    first = _train_mg(out)
    last = out / "checkpoints" / "last.ckpt"
    saved = last.read_bytes()

    def disk_full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)  # the next checkpoint fails as it is written
    with pytest.raises(OSError, match="No space left"):
        _train_mg(out, "epochs=2")
    monkeypatch.undo()
    assert last.read_bytes() == saved  # the previous checkpoint, whole
    assert sorted(p.name for p in last.parent.iterdir()) == ["best.ckpt", "last.ckpt"]
    (last.parent / ".last.ckpt.0123abcd.part").write_bytes(b"half")  # as a killed run leaves
    assert _train_mg(out, "epochs=2")["global_step"] == 2 * first["global_step"]
    assert sorted(p.name for p in last.parent.iterdir()) == ["best.ckpt", "last.ckpt"]


class _Crash(L.Callback):
    """Simulates a run killed at the start of its third epoch."""

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch == 2:
            raise RuntimeError("simulated crash")


def test_interrupted_run_loses_no_completed_epoch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The best checkpoint stays at epoch 0 ("epoch" is always a monitor candidate), so
    # last.ckpt must be written after every epoch on its own, not only when the best changes.
    monkeypatch.setattr(SequenceRegression, "monitor", "epoch")
    monkeypatch.setattr(SequenceRegression, "monitor_mode", "min")
    reference = _train_mg(tmp_path / "reference", "epochs=4")
    steps_per_epoch = reference["global_step"] // 4
    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="simulated crash"):
        _train_mg(out, "epochs=4", callbacks=[_Crash()])
    saved = torch.load(out / "checkpoints" / "last.ckpt", weights_only=False)
    assert saved["global_step"] == 2 * steps_per_epoch  # epochs 0 and 1 kept
    best = torch.load(out / "checkpoints" / "best.ckpt", weights_only=False)
    assert best["global_step"] == steps_per_epoch
    resumed = _train_mg(out, "epochs=4")  # the same command again resumes
    assert resumed["epochs"] == 4
    assert resumed["global_step"] == reference["global_step"]
    # ... and trains on as the uninterrupted run did: same shuffles, same weights
    assert_same_last_checkpoint(tmp_path / "reference", out)
    assert resumed["test_nrmse"] == reference["test_nrmse"]


@pytest.mark.parametrize("num_workers", [0, 1])
def test_interrupted_mid_epoch_resumes_exactly(tmp_path: Path, num_workers: int) -> None:
    # 3 steps per epoch; last.ckpt every 2 steps, so after step 4: epoch 1's first batch.
    # Dropout makes the random generators' states matter.
    options = ["epochs=3", "dropout=0.3", f"num_workers={num_workers}"]
    options.append("checkpoint_every_n_steps=2")
    reference = _train_mg(tmp_path / "reference", *options)
    assert reference["global_step"] == 9
    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="simulated crash"):
        _train_mg(out, *options, callbacks=[crash_at_step(5)])
    saved = torch.load(out / "checkpoints" / "last.ckpt", weights_only=False)
    assert saved["global_step"] == 4 and saved["epoch"] == 1
    assert loader_position(out) == [{"epoch": 1, "batches": 1}]
    evaluated = evaluate(out / "checkpoints" / "last.ckpt", accelerator="cpu", progress_bar=False)
    assert evaluated["epochs"] == 1  # epoch 1 had begun: one completed
    resumed = _train_mg(out, *options)  # the same command again resumes
    # ... with epoch 1's other two batches, then epoch 2: the uninterrupted run's weights,
    # optimizer and schedule to the bit
    assert resumed["global_step"] == 9
    assert_same_last_checkpoint(tmp_path / "reference", out)
    assert resumed["test_nrmse"] == reference["test_nrmse"]


def _signal_at_step(signum: int, step: int, times: int = 1) -> L.Callback:
    """A callback sending this process ``signum`` ``times`` times as the batch after ``step``
    optimizer steps starts (SIGINT: what Ctrl-C in the terminal does; SIGTERM: what ``kill``,
    ``timeout``, SLURM or Kubernetes send before they kill a process)."""

    class Send(L.Callback):
        def on_train_batch_start(self, trainer: L.Trainer, *args) -> None:
            if trainer.global_step == step:
                for _ in range(times):
                    os.kill(os.getpid(), signum)

    return Send()


def _default_stop_handlers() -> None:
    """Python's own handlers, as in a terminal (Lightning's exit after a KeyboardInterrupt may
    have left SIGINT ignored, and then no Ctrl-C reaches a run)."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _assert_stop_handlers_restored() -> None:
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def _interrupted_mg(out: Path, signum: int, *options: str, **kwargs) -> None:
    """``_train_mg`` stopped by ``signum``: Lightning's exit after a KeyboardInterrupt, a
    ``SIGTERMException`` with the status of a process SIGTERM ended after a SIGTERM."""
    _default_stop_handlers()
    try:
        with pytest.raises(SystemExit) as stop:
            _train_mg(out, *options, **kwargs)
        _assert_stop_handlers_restored()
    finally:
        _default_stop_handlers()
    assert stop.value.code == (143 if signum == signal.SIGTERM else 1)


@pytest.mark.parametrize(
    ("signum", "step", "saved_step", "position"),
    [  # 3 steps an epoch
        pytest.param(signal.SIGINT, 4, 5, [{"epoch": 1, "batches": 2}], id="sigint-in-epoch"),
        # in epoch 0's last batch: stops after the epoch's end
        pytest.param(signal.SIGINT, 2, 3, [{"epoch": 0, "batches": 3}], id="sigint-at-end"),
        pytest.param(signal.SIGTERM, 4, 5, [{"epoch": 1, "batches": 2}], id="sigterm-in-epoch"),
    ],
)
def test_ctrl_c_or_sigterm_saves_last_checkpoint_and_resumes_exactly(
    tmp_path: Path, signum: int, step: int, saved_step: int, position: list
) -> None:
    """The first Ctrl-C or SIGTERM stops training after the current step with ``last.ckpt``
    written there (no ``checkpoint_every_n_steps`` needed): nothing trained is lost, and the
    same command again ends with the uninterrupted run's weights to the bit. A second one stops
    at once. The handlers from before the run are back after it."""
    options = ["epochs=3", "dropout=0.3"]
    reference = _train_mg(tmp_path / "reference", *options)
    out = tmp_path / "run"
    _interrupted_mg(out, signum, *options, callbacks=[_signal_at_step(signum, step)])
    saved = torch.load(out / "checkpoints" / "last.ckpt", weights_only=False)
    assert saved["global_step"] == saved_step
    assert loader_position(out) == position
    resumed = _train_mg(out, *options)
    assert resumed["global_step"] == reference["global_step"] == 9
    assert_same_last_checkpoint(tmp_path / "reference", out)
    assert resumed["test_nrmse"] == reference["test_nrmse"]
    twice = tmp_path / "twice"
    _interrupted_mg(twice, signum, *options, callbacks=[_signal_at_step(signum, 4, times=2)])
    saved = torch.load(twice / "checkpoints" / "last.ckpt", weights_only=False)
    assert saved["global_step"] == 3  # at once: the epoch-end checkpoint before it


class _FakeGloo:
    """``torch.distributed`` as :class:`stopping._GracefulStop` uses it, for one rank of two:
    ``other(n)`` is the other rank's flag in the n-th all-reduce; ``log`` records the calls
    (``("reduce", n, async_op)``, ``("wait", n)``, ``("destroy",)``) and the callback's hooks
    the test adds."""

    ReduceOp = SimpleNamespace(MAX="max")

    def __init__(self, other) -> None:
        self.other = other
        self.log: list[tuple] = []
        self.group = object()

    def is_available(self) -> bool:
        return True

    def is_initialized(self) -> bool:
        return True

    def is_gloo_available(self) -> bool:
        return True

    def new_group(self, backend: str) -> object:
        assert backend == "gloo"
        self.log.append(("new_group",))
        return self.group

    def all_reduce(self, flag: torch.Tensor, op: str, group: object, async_op: bool = False):
        assert op == "max" and group is self.group and flag.device.type == "cpu"
        n = sum(entry[0] == "reduce" for entry in self.log)
        self.log.append(("reduce", n, async_op))
        others = torch.tensor(self.other(n))

        def finish() -> None:
            flag.copy_(torch.maximum(flag, others))

        if not async_op:
            finish()
            return None
        log = self.log

        class Work:
            def wait(self) -> bool:
                log.append(("wait", n))
                finish()
                return True

        return Work()

    def destroy_process_group(self, group: object) -> None:
        assert group is self.group
        self.log.append(("destroy",))


def _ddp_trainer(saved: list[int]) -> SimpleNamespace:
    """Rank 1 of two, 5 batches an epoch; ``saved`` gets the batch of each checkpoint."""

    def reduce(*args, **kwargs):
        raise AssertionError("a blocking all-reduce over the training backend")

    trainer = SimpleNamespace(world_size=2, global_rank=1, received_sigterm=False)
    trainer.accumulate_grad_batches, trainer.is_last_batch = 1, False
    trainer.strategy = SimpleNamespace(root_device=torch.device("cpu"), reduce=reduce)
    trainer.save_checkpoint = lambda path, weights_only: saved.append(trainer.batch_idx)
    return trainer


def _run_ddp_epochs(stop, trainer, fake: _FakeGloo, batches: int = 5, epochs: int = 2) -> None:
    """Drive the callback's hooks as Lightning does (no validation: it calls none of them)."""
    stop.on_train_start(trainer, None)
    for _ in range(epochs):
        for batch_idx in range(batches):
            trainer.batch_idx, trainer.is_last_batch = batch_idx, batch_idx == batches - 1
            stop.on_train_batch_start(trainer, None, None, batch_idx)
            fake.log.append(("end", batch_idx))
            stop.on_train_batch_end(trainer, None, None, None, batch_idx)
    fake.log.append(("train_end",))
    stop.on_train_end(trainer, None)


@pytest.mark.parametrize(
    ("mine", "others", "stops"),
    [
        (None, signal.SIGTERM, signal.SIGTERM),  # only the other rank got one
        (signal.SIGINT, 0, signal.SIGINT),
        (signal.SIGINT, signal.SIGTERM, signal.SIGTERM),  # SIGTERM where any rank got one
    ],
    ids=["other-rank", "this-rank", "sigterm-over-sigint"],
)
def test_under_ddp_a_signal_to_one_rank_stops_every_rank_at_the_same_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mine: int | None, others: int, stops: int
) -> None:
    """The processes agree (a max all-reduce of the signal each received), so a rank that no
    signal reached stops, and saves, with the one that got it; with SIGTERM where any rank got
    one. The all-reduce is simulated: a signal seen at the end of batch 1 (the third
    all-reduce, after those at the start of training and of the epoch, by this rank or the
    other) is known everywhere at batch 2's end, where every rank saves and stops. (Two real
    processes: tests/training/test_ddp_cpu.py, slow.)"""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    fake = _FakeGloo(lambda n: others if n >= 2 else 0)
    monkeypatch.setattr(stopping, "dist", fake)
    saved: list[int] = []
    trainer = _ddp_trainer(saved)
    stop = stopping._GracefulStop(tmp_path / "last.ckpt")

    def signalled_at_batch_1(trainer, *args) -> None:
        if trainer.batch_idx == 1:
            stop.requested = mine

    monkeypatch.setattr(stop, "on_train_batch_start", signalled_at_batch_1)
    expected = SIGTERMException if stops == signal.SIGTERM else KeyboardInterrupt
    with pytest.raises(expected):
        _run_ddp_epochs(stop, trainer, fake)
    stop.on_exception(trainer, None, expected())
    assert saved == [2]
    # this batch end's all-reduce waited for before stopping, then the group destroyed
    assert fake.log[-3:] == [("reduce", 3, True), ("wait", 3), ("destroy",)]


def test_under_ddp_a_training_step_waits_for_no_rank(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At each batch end the all-reduce of this rank's signal is only started (async_op) and
    waited for at the next batch end, long done; a blocking one (and the training backend's)
    only at the start of training, an epoch's start and the end of training; every one waited
    for before the group is destroyed. A signal in an epoch's last batch stops at the next
    epoch's start."""
    fake = _FakeGloo(lambda n: 0)
    monkeypatch.setattr(stopping, "dist", fake)
    saved: list[int] = []
    trainer = _ddp_trainer(saved)
    stop = stopping._GracefulStop(tmp_path / "last.ckpt")
    _run_ddp_epochs(stop, trainer, fake, batches=3)
    epoch = [
        ("end", 0),
        ("reduce", 2, True),
        ("end", 1),
        ("wait", 2),
        ("reduce", 3, True),
        ("end", 2),
        ("wait", 3),
        ("reduce", 4, True),
    ]
    second = [(e[0], e[1] + 4, *e[2:]) if e[0] != "end" else e for e in epoch]
    assert fake.log == [
        ("new_group",),
        ("reduce", 0, False),  # the start of training
        ("reduce", 1, False),  # the epoch's start
        *epoch,
        ("wait", 4),
        ("reduce", 5, False),
        *second,
        ("train_end",),
        ("wait", 8),
        ("reduce", 9, False),
        ("destroy",),
    ]
    assert saved == []

    # the other rank's signal seen in the epoch's last batch (all-reduce 4): not a save point;
    # after the validation and the epoch-end checkpoint, every rank stops at the next start
    fake = _FakeGloo(lambda n: signal.SIGINT if n == 4 else 0)
    monkeypatch.setattr(stopping, "dist", fake)
    with pytest.raises(KeyboardInterrupt):
        _run_ddp_epochs(stop, trainer, fake, batches=3)
    stop.on_exception(trainer, None, KeyboardInterrupt())
    assert saved == []
    assert fake.log[-4:] == [("reduce", 4, True), ("wait", 4), ("reduce", 5, False), ("destroy",)]


def test_under_ddp_without_gloo_the_ranks_agree_at_every_batch_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A torch build without gloo: a blocking max all-reduce over the training backend at
    every batch end, as before (and once at the start of training); the other rank's signal at
    batch 1 stops this one there."""
    fake = _FakeGloo(lambda n: 0)
    monkeypatch.setattr(fake, "is_gloo_available", lambda: False)
    monkeypatch.setattr(stopping, "dist", fake)
    saved: list[int] = []
    trainer = _ddp_trainer(saved)
    reduced: list[int] = []

    def reduce(flag: torch.Tensor, reduce_op: str) -> torch.Tensor:
        assert reduce_op == "max"
        batch_idx = getattr(trainer, "batch_idx", None)  # None: the start of training
        reduced.append(batch_idx)
        return torch.maximum(flag, torch.tensor(signal.SIGTERM if batch_idx else 0))

    trainer.strategy.reduce = reduce
    stop = stopping._GracefulStop(tmp_path / "last.ckpt")
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    with pytest.raises(SIGTERMException):
        _run_ddp_epochs(stop, trainer, fake)
    stop.on_exception(trainer, None, SIGTERMException())
    assert saved == [1] and reduced == [None, 0, 0, 1] and fake.log == [("end", 0), ("end", 1)]


@pytest.mark.parametrize("here", [True, False], ids=["this-rank", "other-rank"])
def test_under_ddp_a_sigterm_before_training_stops_every_rank_at_its_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, here: bool
) -> None:
    """A SIGTERM that Lightning's handler took before plmu's replaced it at ``on_train_start``
    (``trainer.received_sigterm``), on this rank or on the other alone: every rank stops at
    ``on_train_start``, after making the group and agreeing there (a blocking all-reduce). The
    rank that had it raised at once, before ``new_group``, and the others waited for it there
    (two real processes: tests/training/test_ddp_cpu.py, slow)."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    fake = _FakeGloo(lambda n: 0 if here else signal.SIGTERM)
    monkeypatch.setattr(stopping, "dist", fake)
    trainer = _ddp_trainer([])
    trainer.received_sigterm = here
    stop = stopping._GracefulStop(tmp_path / "last.ckpt")
    stop._handled = [signal.SIGTERM]  # as on_fit_start finds SIGTERM: its default handler
    previous = signal.getsignal(signal.SIGTERM)
    try:
        with pytest.raises(SIGTERMException):
            stop.on_train_start(trainer, None)
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # put back by the stop
    finally:
        signal.signal(signal.SIGTERM, previous)
    stop.on_exception(trainer, None, SIGTERMException())
    assert fake.log == [("new_group",), ("reduce", 0, False), ("destroy",)]


def test_graceful_stop_prints_no_lightning_notice(tmp_path: Path, caplog) -> None:
    """The checkpoint a Ctrl-C or SIGTERM writes is a full one, said so to Lightning: its
    ``weights_only`` default was announced as a stray line ("`weights_only` was not set,
    defaulting to `False`.") between plmu's stop message and the exit."""
    caplog.set_level("INFO", logger="lightning.pytorch")
    _interrupted_mg(
        tmp_path / "run", signal.SIGTERM, callbacks=[_signal_at_step(signal.SIGTERM, 1)]
    )
    assert torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=False)[
        "optimizer_states"
    ]
    assert "weights_only" not in caplog.text


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["sigint", "sigterm"])
def test_ctrl_c_or_sigterm_in_the_last_batch_stops_before_the_test(
    tmp_path: Path, signum: int
) -> None:
    """A Ctrl-C or SIGTERM in the last batch lets training end (its last.ckpt written) and stops
    before the test (Ctrl-C ran the test and exited 0); the same command again only tests, as the
    uninterrupted run did."""
    reference = _train_mg(tmp_path / "reference", "epochs=2")
    out = tmp_path / "run"
    send = _signal_at_step(signum, 5)  # in the last batch (3 steps an epoch)
    _interrupted_mg(out, signum, "epochs=2", callbacks=[send])
    assert not (out / "metrics.json").exists()
    assert torch.load(out / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 6
    resumed = _train_mg(out, "epochs=2")
    assert_same_last_checkpoint(tmp_path / "reference", out)
    assert resumed["test_nrmse"] == reference["test_nrmse"]


def test_sigterm_before_training_stops_before_the_first_step(tmp_path: Path) -> None:
    """A SIGTERM that Lightning's own handler took (it is in place from the end of the setup
    to the start of training: here in the sanity check) stops the run before its first step,
    not after a step that no checkpoint keeps."""

    class SigtermInSanityCheck(L.Callback):
        def __init__(self) -> None:
            self.steps: list[int] = []

        def on_sanity_check_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            os.kill(os.getpid(), signal.SIGTERM)

        def on_train_batch_end(self, trainer: L.Trainer, *args) -> None:
            self.steps.append(trainer.global_step)

    callback = SigtermInSanityCheck()
    _interrupted_mg(tmp_path / "run", signal.SIGTERM, callbacks=[callback])
    assert callback.steps == []


def test_an_early_stopped_run_stays_stopped_unless_given_more_patience(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """The same command again after early stopping only tests (Lightning restored the early
    stopping state but not the decision: the run trained on, one epoch or more); a larger
    ``patience`` (Lightning kept the checkpoint's) continues it as a run given it at once.
    Each early-stopped run says so (it said nothing: a run ended at epoch 3 of 30)."""
    options = ["epochs=30", "lr=0.05"]  # val_nrmse stops improving after a few epochs
    reference = _train_mg(tmp_path / "reference", *options, "patience=2")
    said = f"after epoch {reference['epochs']} of 30: val_nrmse did not improve for 2 validations"
    assert f"plmu: early stopping ended training {said} (patience)" in capsys.readouterr().out
    out = tmp_path / "run"
    stopped = _train_mg(out, *options, "patience=1")
    assert stopped["epochs"] < reference["epochs"] < 30  # both stopped early, at other epochs
    capsys.readouterr()
    again = _train_mg(out, *options, "patience=1")
    assert (again["global_step"], again["epochs"]) == (stopped["global_step"], stopped["epochs"])
    said = f"after epoch {stopped['epochs']} of 30: val_nrmse did not improve for 1 validation "
    assert f"plmu: early stopping ended training {said}" in capsys.readouterr().out
    assert again["test_nrmse"] == stopped["test_nrmse"]
    more = _train_mg(out, *options, "patience=2")
    assert more["global_step"] == reference["global_step"]
    assert_same_last_checkpoint(tmp_path / "reference", out)
    assert more["test_nrmse"] == reference["test_nrmse"]


class _NaNWeightsInEpoch(L.Callback):
    """Makes the weights NaN before epoch ``epoch``'s validation, so its metric is not finite."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch == self.epoch and not trainer.sanity_checking:
            with torch.no_grad():
                for p in pl_module.parameters():
                    p.fill_(float("nan"))


@pytest.mark.skipif(
    stopping._NON_FINITE is None, reason="this Lightning does not record why a run stopped"
)
def test_a_run_stopped_on_a_non_finite_metric_stays_stopped(tmp_path: Path) -> None:
    """Early stopping stops at a NaN validation metric whatever its patience; the restored
    state's wait count does not show it, so the same command again trained one more epoch (on
    NaN weights) before stopping. Now it only tests, even with more patience."""
    out = tmp_path / "run"
    options = ["epochs=5", "patience=3"]
    stopped = _train_mg(out, *options, callbacks=[_NaNWeightsInEpoch(1)])
    assert stopped["epochs"] == 2  # stopped at the NaN of epoch 1 (best.ckpt is epoch 0)
    for patience in (3, 4):
        again = _train_mg(out, "epochs=5", f"patience={patience}")
        assert (again["global_step"], again["epochs"]) == (stopped["global_step"], 2)


def _best_score_recorded(run: Path, name: str) -> float:
    """The best validation score the best-checkpoint callback had recorded when ``name``.ckpt
    was written."""
    checkpoint = torch.load(run / "checkpoints" / f"{name}.ckpt", weights_only=False)
    (state,) = [v for k, v in checkpoint["callbacks"].items() if "monitor': 'val_nrmse'" in k]
    return float(state["best_model_score"])


@pytest.mark.parametrize("first", [4, 3])  # inside epoch 1; at epoch 0's end (3 steps each)
def test_max_steps_validates_and_extends_exactly(tmp_path: Path, first: int) -> None:
    """A run that ``max_steps`` stops inside an epoch validates its final weights, so it has a
    ``best.ckpt``, and ``last.ckpt`` records that validation; the same command with a larger
    ``max_steps`` continues where it stopped (inside or at the end of an epoch: Lightning
    #19617 replayed a finished epoch) and ends with the weights of a run given the larger
    value at once."""
    options = ["epochs=5", "dropout=0.3"]
    reference = _train_mg(tmp_path / "reference", *options, "max_steps=8")
    out = tmp_path / "run"
    short = _train_mg(out, *options, f"max_steps={first}")
    assert short["global_step"] == first and short["best_checkpoint"] is not None
    best = torch.load(out / "checkpoints" / "best.ckpt", weights_only=False)
    assert best["global_step"] == first  # validated after the last step
    assert _best_score_recorded(out, "last") == _best_score_recorded(out, "best")
    position = {"epoch": 1, "batches": 1} if first == 4 else {"epoch": 0, "batches": 3}
    assert loader_position(out) == [position]
    longer = _train_mg(out, *options, "max_steps=8")
    assert longer["global_step"] == 8
    assert_same_last_checkpoint(tmp_path / "reference", out)
    assert longer["test_nrmse"] == reference["test_nrmse"]


def test_max_steps_run_resumed_at_an_epoch_end_is_exact(tmp_path: Path) -> None:
    """With ``max_steps`` set, Lightning resumed an epoch-end checkpoint by replaying that
    epoch as an empty one (#19617): the next epoch's order was skipped."""
    options = ["epochs=5", "dropout=0.3", "max_steps=8"]
    reference = _train_mg(tmp_path / "reference", *options)
    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="simulated crash"):
        _train_mg(out, *options, callbacks=[crash_at_step(7)])  # last.ckpt: epoch 1's end
    assert loader_position(out) == [{"epoch": 1, "batches": 3}]
    resumed = _train_mg(out, *options)
    assert_same_last_checkpoint(tmp_path / "reference", out)
    assert resumed["test_nrmse"] == reference["test_nrmse"]


def test_epochs_counts_completed_epochs_only(tmp_path: Path) -> None:
    """``epochs`` in metrics.json counts the epochs trained to their end: not one that
    ``max_steps`` stopped inside (Lightning's ``current_epoch`` counts it), whether it is the
    first session, a resumed one or one with nothing left to train; ``plmu evaluate`` counts a
    checkpoint's the same way. ``global_step`` counts optimizer steps (3 per epoch here)."""
    out = tmp_path / "run"
    short = _train_mg(out, "epochs=5", "max_steps=4")  # epoch 0 and epoch 1's first batch
    assert (short["epochs"], short["global_step"]) == (1, 4)
    again = _train_mg(out, "epochs=5", "max_steps=4")  # resumed with nothing to train
    assert (again["epochs"], again["global_step"]) == (1, 4)
    for name in ("best", "last"):  # both written after epoch 1's first batch
        evaluated = evaluate(
            out / "checkpoints" / f"{name}.ckpt", accelerator="cpu", progress_bar=False
        )
        assert (evaluated["epochs"], evaluated["global_step"]) == (1, 4)
    longer = _train_mg(out, "epochs=5", "max_steps=8")  # epoch 1's rest, 2 batches of epoch 2
    assert (longer["epochs"], longer["global_step"]) == (2, 8)
    at_end = _train_mg(out, "epochs=5", "max_steps=9")  # epoch 2's last batch
    assert (at_end["epochs"], at_end["global_step"]) == (3, 9)
    evaluated = evaluate(out / "checkpoints" / "last.ckpt", accelerator="cpu", progress_bar=False)
    assert (evaluated["epochs"], evaluated["global_step"]) == (3, 9)


class _CrashAtBatch(L.Callback):
    """Simulates a run killed before batch ``index`` of epoch ``epoch``."""

    def __init__(self, epoch: int, index: int) -> None:
        self.epoch, self.index = epoch, index

    def on_train_batch_start(self, trainer: L.Trainer, pl_module, batch, batch_idx: int) -> None:
        if trainer.current_epoch == self.epoch and batch_idx == self.index:
            raise RuntimeError("simulated crash")


def test_step_checkpoints_wait_for_the_optimizer_step_under_accumulation(tmp_path: Path) -> None:
    """With gradient accumulation, a batch that did not step the optimizer holds gradients no
    checkpoint stores: no step checkpoint after it, also not on an epoch's first batch (the
    step count then has not moved since the skipped last batch) or after a resume."""
    options = ["epochs=3", "dropout=0.3", "batch_size=4", "accumulate_grad_batches=2"]
    options.append("checkpoint_every_n_steps=1")
    reference = _train_mg(tmp_path / "reference", *options)
    out = tmp_path / "run"
    for crash in (_CrashAtBatch(1, 1), _CrashAtBatch(1, 3)):  # resumed in between
        with pytest.raises(RuntimeError, match="simulated crash"):
            _train_mg(out, *options, callbacks=[crash])
        saved = torch.load(out / "checkpoints" / "last.ckpt", weights_only=False)
        assert loader_position(out)[0]["batches"] % 2 == 0  # after whole accumulation windows
    assert saved["global_step"] == 4 and loader_position(out) == [{"epoch": 1, "batches": 2}]
    resumed = _train_mg(out, *options)
    assert_same_last_checkpoint(tmp_path / "reference", out)
    assert resumed["test_nrmse"] == reference["test_nrmse"]


class _CrashInValidation(L.Callback):
    """Simulates a run killed while validating epoch 0."""

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            raise RuntimeError("simulated crash")


def test_step_checkpoints_leave_out_an_epochs_last_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lightning resumes from a checkpoint written after an epoch's last batch as from the
    epoch's end: that epoch's validation (and so its best checkpoint) would be lost."""
    monkeypatch.setattr(SequenceRegression, "monitor", "epoch")  # the best stays at epoch 0
    monkeypatch.setattr(SequenceRegression, "monitor_mode", "min")
    options = ["epochs=2", "checkpoint_every_n_steps=1"]
    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="simulated crash"):
        _train_mg(out, *options, callbacks=[_CrashInValidation()])
    saved = torch.load(out / "checkpoints" / "last.ckpt", weights_only=False)
    assert saved["global_step"] == 2  # not after the third, last batch
    _train_mg(out, *options)
    best = torch.load(out / "checkpoints" / "best.ckpt", weights_only=False)
    assert best["global_step"] == 3  # epoch 0 was validated after all


def test_resume_refuses_another_experiments_checkpoint(tmp_path: Path, mnist_dir: Path) -> None:
    out = tmp_path / "run"
    _train_mg(out)
    run = {"overrides": TINY_PSMNIST, "data_dir": mnist_dir, "accelerator": "cpu"}
    with pytest.raises(CheckpointError, match=r"to experiment 'mackey-glass'.*another --out"):
        train("psmnist", out=out, progress_bar=False, **run)
    # given with --resume, the other --out was no remedy
    last = out / "checkpoints" / "last.ckpt"
    with pytest.raises(CheckpointError, match=r"not 'psmnist'; resume another checkpoint$"):
        train("psmnist", out=tmp_path / "new", resume=last, progress_bar=False, **run)


def test_resume_from_a_folder_names_its_last_checkpoint(tmp_path: Path) -> None:
    """--resume RUN suggested RUN/checkpoints/best.ckpt, not the latest state to resume."""
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    with pytest.raises(CheckpointError, match=r"is a folder; .* e\.g\. .*checkpoints/last\.ckpt$"):
        _train_mg(tmp_path / "new", resume=tmp_path / "run")


@pytest.mark.parametrize("model", ["parallel-lmu", "lstm", "lmu"])
def test_psmnist_end_to_end(tmp_path: Path, mnist_dir: Path, model: str) -> None:
    out = tmp_path / "run"
    metrics = train(
        "psmnist",
        out=out,
        overrides=[*TINY_PSMNIST, f"model={model}"],
        data_dir=mnist_dir,
        accelerator="cpu",
        devices=1,
        progress_bar=False,
    )
    assert 0.0 <= metrics["test_accuracy"] <= 1.0 and metrics["epochs"] == 1
    assert json.loads((out / "metrics.json").read_text())["test_accuracy"] == pytest.approx(
        metrics["test_accuracy"]
    )
    evaluated = evaluate(out / "checkpoints" / "best.ckpt", accelerator="cpu", progress_bar=False)
    assert evaluated["test_accuracy"] == pytest.approx(metrics["test_accuracy"])


def _train_psmnist(out: Path, mnist_dir: Path, *extra: str, **kwargs) -> dict:
    return train(
        "psmnist",
        out=out,
        overrides=[*TINY_PSMNIST, *extra],
        data_dir=mnist_dir,
        accelerator="cpu",
        devices=1,
        progress_bar=False,
        **kwargs,
    )


def test_psmnist_evaluates_with_the_checkpoints_permutation(
    tmp_path: Path, mnist_dir: Path
) -> None:
    """The pixel permutation is stored in the checkpoint (torch.randperm of the seed may give
    other values under another torch version); a stored one that differs from the seed's is
    the one evaluate and load_checkpoint use."""
    out = tmp_path / "run"
    _train_psmnist(out, mnist_dir)
    checkpoint = torch.load(out / "checkpoints" / "best.ckpt", weights_only=False)
    seed_order = permutation(784, 0)
    assert checkpoint["plmu"]["saved"]["permutation"] == seed_order.tolist()
    assert "PsMNISTData" not in checkpoint  # stored once (it was in Lightning's state too)
    stored = seed_order.flip(0)  # as if this torch's randperm had given other values
    checkpoint["plmu"]["saved"]["permutation"] = stored.tolist()
    tampered = tmp_path / "other-torch.ckpt"
    torch.save(checkpoint, tampered)

    _, _, module, datamodule = load_checkpoint(tampered, mnist_dir)
    datamodule.setup("test")
    assert torch.equal(datamodule.test_set.order, stored)

    def test_loss(order: torch.Tensor) -> float:
        test_set = psmnist_splits(mnist_dir, val_size=10, order=order)[2]
        x, y = (torch.stack(column) for column in zip(*test_set))
        with torch.no_grad():
            return float(torch.nn.functional.cross_entropy(module(x), y))

    assert test_loss(stored) != pytest.approx(test_loss(seed_order), rel=1e-3)
    evaluated = evaluate(tampered, out=tmp_path / "eval", accelerator="cpu", progress_bar=False)
    assert evaluated["test_loss"] == pytest.approx(test_loss(stored), rel=1e-5)


def test_psmnist_evaluate_needs_only_the_test_files(tmp_path: Path, mnist_dir: Path) -> None:
    """The permutation travels in the checkpoint: ``plmu evaluate --data-dir`` with only the two
    t10k files tests as the training run did (every split was loaded, and the missing
    training files downloaded: offline, an error)."""
    metrics = _train_psmnist(tmp_path / "run", mnist_dir)
    alone = tmp_path / "test-only"
    alone.mkdir()
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        (alone / name).write_bytes((mnist_dir / name).read_bytes())
    evaluated = evaluate(
        metrics["best_checkpoint"],
        data_dir=alone,
        out=tmp_path / "eval",
        accelerator="cpu",
        progress_bar=False,
    )
    assert evaluated["test_loss"] == pytest.approx(metrics["test_loss"], rel=1e-5)
    assert evaluated["test_accuracy"] == pytest.approx(metrics["test_accuracy"])
    assert sorted(p.name for p in alone.iterdir()) == [
        "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"
    ]  # fmt: skip


@pytest.mark.parametrize("written_before", [False, True])
def test_psmnist_resume_uses_the_stored_permutation(
    tmp_path: Path, mnist_dir: Path, monkeypatch: pytest.MonkeyPatch, written_before: bool
) -> None:
    """A run resumed where torch's randperm gives another permutation for the seed trains on
    with the stored one, exactly as the uninterrupted run. ``written_before``: a checkpoint
    that also holds the permutation in Lightning's datamodule state, as they did."""
    import plmu.data.mnist

    _train_psmnist(tmp_path / "reference", mnist_dir, "epochs=2")
    out = tmp_path / "run"
    _train_psmnist(out, mnist_dir)
    seed_order = permutation(784, 0)
    last = out / "checkpoints" / "last.ckpt"
    if written_before:
        checkpoint = torch.load(last, weights_only=False)
        checkpoint["PsMNISTData"] = {"permutation": seed_order.tolist()}
        torch.save(checkpoint, last)
    monkeypatch.setattr(plmu.data.mnist, "permutation", lambda n, seed: torch.arange(n))
    resumed = _train_psmnist(out, mnist_dir, "epochs=2")
    assert resumed["epochs"] == 2
    assert_same_last_checkpoint(tmp_path / "reference", out)
    checkpoint = torch.load(last, weights_only=False)
    assert checkpoint["plmu"]["saved"]["permutation"] == seed_order.tolist()
    assert "PsMNISTData" not in checkpoint


def test_psmnist_interrupted_mid_epoch_resumes_exactly(tmp_path: Path, mnist_dir: Path) -> None:
    """psMNIST killed inside epoch 1 (4 batches an epoch, last.ckpt every 2 steps, dropout
    between the two layers) and resumed: the rest of that epoch, then epoch 2, give the
    uninterrupted run's weights."""
    options = ["epochs=3", "num_layers=2", "dropout=0.3", "checkpoint_every_n_steps=2"]
    reference = _train_psmnist(tmp_path / "reference", mnist_dir, *options)
    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="simulated crash"):
        _train_psmnist(out, mnist_dir, *options, callbacks=[crash_at_step(7)])
    assert loader_position(out) == [{"epoch": 1, "batches": 2}]  # after step 6
    resumed = _train_psmnist(out, mnist_dir, *options)
    assert resumed["global_step"] == reference["global_step"] == 12
    assert_same_last_checkpoint(tmp_path / "reference", out)
    assert resumed["test_accuracy"] == reference["test_accuracy"]


def test_psmnist_paper_model_size() -> None:
    from plmu.experiments.psmnist import build_net
    from plmu.training.base import count_parameters
    from plmu.training.config import default_config

    assert count_parameters(build_net(default_config("psmnist"))) == 166_092


def test_psmnist_original_lmu_size_is_the_papers() -> None:
    """``model=lmu`` is the 2019 baseline with its 102k trainable parameters (PAPER.md section 2),
    not the 56k of its read-out alone."""
    from plmu.experiments.psmnist import build_net
    from plmu.training.base import count_parameters
    from plmu.training.config import default_config

    config = default_config("psmnist")
    config["model"] = "lmu"
    assert count_parameters(build_net(config)) == 102_027


class _FreezePsMNISTWeights(L.Callback):
    """What ``LMUCell(init="psmnist")`` did before its ``e_x``, ``e_h``, ``e_m``, ``W_x`` and
    ``W_h`` trained: freeze them (before the optimizer is built)."""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        import plmu

        for cell in pl_module.modules():
            if isinstance(cell, plmu.LMUCell):
                for p in (cell.e_x, cell.e_h, cell.e_m, cell.W_x, cell.W_h):
                    if p is not None:
                        p.requires_grad_(False)


def test_psmnist_lmu_checkpoint_with_frozen_weights(tmp_path: Path, mnist_dir: Path) -> None:
    """An old psMNIST ``model=lmu`` checkpoint (five weight tensors frozen, so Adam's state
    holds three): evaluate tests it; resuming failed inside ``fit`` with torch's "loaded state
    dict contains a parameter group that doesn't match the size of optimizer's group" and is
    now refused before anything is written, saying why and what to do."""
    out = tmp_path / "old"
    trained = _train_psmnist(out, mnist_dir, "model=lmu", callbacks=[_FreezePsMNISTWeights()])
    evaluated = evaluate(out / "checkpoints" / "best.ckpt", accelerator="cpu", progress_bar=False)
    assert evaluated["test_loss"] == pytest.approx(trained["test_loss"], rel=1e-5)
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    message = (
        r"^cannot resume from .*last\.ckpt: its optimizer state is for 3 trainable weight "
        r"tensors, this version's model trains 8 \(.*psMNIST model=lmu.*\); plmu evaluate "
        r"still tests it, but to train, start a new run in another --out"
    )
    with pytest.raises(CheckpointError, match=message + "$"):
        _train_psmnist(out, mnist_dir, "model=lmu", "epochs=2")
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    new = tmp_path / "new"
    with pytest.raises(CheckpointError, match=message + " without --resume$"):
        _train_psmnist(new, mnist_dir, "epochs=2", resume=out / "checkpoints" / "last.ckpt")
    assert not new.exists()


def test_mackey_glass_models_are_the_papers_size() -> None:
    """PAPER.md section 2: 4 stacked layers, the original LMU with hidden 49, order 4, theta 4
    (18k parameters); the parallel LMU and the LSTM at the same budget (within 3%)."""
    from plmu.experiments.mackey_glass import build_net
    from plmu.training.base import count_parameters
    from plmu.training.config import default_config

    config = default_config("mackey-glass")
    assert (config["num_layers"], config["horizon"], config["batch_size"]) == (4, 15, 32)
    sizes = {}
    for model in ("parallel-lmu", "lmu", "lstm"):
        sizes[model] = count_parameters(build_net({**config, "model": model}))
    assert sizes["lmu"] == 18_050
    assert all(abs(n - 18_000) <= 540 for n in sizes.values()), sizes


@pytest.mark.parametrize("experiment", ["mackey-glass", "psmnist"])
def test_mixed_precision_training_runs(tmp_path: Path, mnist_dir: Path, experiment: str) -> None:
    """precision=bf16-mixed: the fused and last-state paths train under autocast."""
    overrides = TINY_MACKEY_GLASS if experiment == "mackey-glass" else TINY_PSMNIST
    metrics = train(
        experiment,
        out=tmp_path / "run",
        overrides=[*overrides, "model=parallel-lmu", "precision=bf16-mixed"],
        data_dir=mnist_dir if experiment == "psmnist" else None,
        accelerator="cpu",
        devices=1,
        progress_bar=False,
    )
    key = "test_nrmse" if experiment == "mackey-glass" else "test_accuracy"
    assert metrics["epochs"] == 1 and 0.0 <= metrics[key] < 5.0


@pytest.mark.parametrize("precision", ["64-true", "bf16-true"])
def test_mackey_glass_plot_in_the_weights_precision(tmp_path: Path, precision: str) -> None:
    """A run whose weights Lightning casts (``64-true``, ``bf16-true``) draws its prediction plot
    and writes metrics.json: the plot fed the float32 test series to the cast model, a dtype
    error after the whole training and test."""
    out = tmp_path / "run"
    metrics = _train_mg(out, f"precision={precision}")
    assert (out / "prediction.png").stat().st_size > 1000
    assert json.loads((out / "metrics.json").read_text())["plot"] == metrics["plot"]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_forked_data_loader_worker_ignores_the_stop_signals(
    tmp_path: Path, capfd: pytest.CaptureFixture, signum: int
) -> None:
    """A DataLoader worker (``num_workers`` > 0) is forked after the handler is installed and
    inherits it (for SIGINT: PyTorch's workers put a handler of their own on SIGTERM only), and
    Ctrl-C in a terminal reaches the whole process group: every live worker printed ``plmu:
    Ctrl-C: stopping after this step ...`` again, and took a second Ctrl-C as its own stop
    (a KeyboardInterrupt in the worker). A forked process now leaves both signals to the
    process that installed the handler."""
    stop = stopping._GracefulStop(tmp_path / "last.ckpt")
    trainer = SimpleNamespace(global_rank=0, world_size=1, received_sigterm=False)
    stop.on_fit_start(trainer, None)
    assert signum in stop._handled
    stop.on_train_start(trainer, None)
    try:
        pid = os.fork()
        if pid == 0:  # the worker: the signal twice, as Ctrl-C pressed twice
            code = 1
            try:
                os.kill(os.getpid(), signum)
                os.kill(os.getpid(), signum)
                code = 0 if stop.requested is None else 2
            except BaseException:  # the stop raised here
                code = 3
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
    finally:
        stop._restore()
    assert os.waitstatus_to_exitcode(status) == 0
    assert "stopping after" not in capfd.readouterr().err
    assert stop.requested is None  # the main process received nothing


def test_a_checkpoint_of_another_experiment_is_named_plainly(tmp_path: Path) -> None:
    """``plmu predict``, ``translate`` and ``generate`` given a checkpoint of another experiment
    say which experiment it is and which they take, in one plain sentence (``translate`` said
    "is a 'mackey-glass' run", ``generate`` "holds a 'mackey-glass' model")."""
    from plmu.generation import generate_from_checkpoint
    from plmu.predict import predict
    from plmu.translate import translate

    _train_mg(tmp_path / "run")
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    calls = {
        "plmu predict takes imdb, qqp or snli": lambda: predict(ckpt, "a text"),
        "plmu translate takes iwslt15-en-vi": lambda: translate(ckpt, "a ."),
        "plmu generate takes text8": lambda: generate_from_checkpoint(ckpt, "the", 5),
    }
    for takes, call in calls.items():
        with pytest.raises(ValueError) as error:
            call()
        assert str(error.value) == (
            f"checkpoint {ckpt} is of the mackey-glass experiment: {takes} checkpoints"
        )

"""DDP: two CPU processes (gloo) train through the same command line (slow: ~1 minute)."""

import csv
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
from tiny_configs import TINY_MACKEY_GLASS, TINY_PSMNIST, sets

from conftest import assert_same_last_checkpoint, loader_position, write_mnist
from plmu.training.runner import evaluate, load_checkpoint


@pytest.mark.slow
def test_ddp_two_cpu_processes(tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    command = [
        sys.executable,
        "-m",
        "plmu.cli",
        "train",
        "mackey-glass",
        "--out",
        str(out),
        "--accelerator",
        "cpu",
        "--devices",
        "2",
        "--strategy",
        "ddp",
        "--no-progress-bar",
        *sets([*TINY_MACKEY_GLASS, "epochs=2"]),
    ]
    subprocess.run(command, check=True, timeout=600, cwd=tmp_path)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epochs"] == 2 and 0.0 < metrics["test_nrmse"] < 5.0
    # 23 training windows, padded to 12 per process, batch 8: 2 steps per epoch
    assert metrics["global_step"] == 4
    assert (out / "checkpoints" / "last.ckpt").is_file()


_KILLED_MID_EPOCH = """
import sys
import time
import lightning as L
from plmu.training.runner import train


class Crash(L.Callback):
    def on_train_batch_start(self, trainer, *args):
        if trainer.global_step == 3:
            raise RuntimeError("simulated crash")


out, crash, options = sys.argv[1], sys.argv[2] == "crash", sys.argv[3:]
train("mackey-glass", out=out, overrides=options, accelerator="cpu", devices=2, strategy="ddp",
      progress_bar=False, callbacks=[Crash()] if crash else [])
"""


@pytest.mark.slow
def test_ddp_run_killed_mid_epoch_resumes_exactly(tmp_path: Path) -> None:
    """Two processes, 5 batches each per epoch, last.ckpt every step; killed after step 3:
    both ranks resume their DistributedSampler shard from rank 0's position (~1 minute)."""
    script = tmp_path / "train_ddp.py"
    script.write_text(_KILLED_MID_EPOCH)
    options = [*TINY_MACKEY_GLASS, "train_length=1200", "epochs=2", "dropout=0.3"]
    options.append("checkpoint_every_n_steps=1")

    def run(out: str, mode: str) -> subprocess.CompletedProcess:
        command = [sys.executable, str(script), str(tmp_path / out), mode, *options]
        return subprocess.run(command, timeout=600, cwd=tmp_path, capture_output=True, text=True)

    assert run("ref", "whole").returncode == 0
    crashed = run("run", "crash")
    assert crashed.returncode != 0 and "simulated crash" in crashed.stderr
    assert loader_position(tmp_path / "run") == [{"epoch": 0, "batches": 3}]
    assert run("run", "resume").returncode == 0
    assert_same_last_checkpoint(tmp_path / "ref", tmp_path / "run")
    metrics = [json.loads((tmp_path / r / "metrics.json").read_text()) for r in ("ref", "run")]
    assert metrics[1]["test_nrmse"] == metrics[0]["test_nrmse"]


@pytest.mark.slow
def test_ddp_metrics_count_every_example_once(tmp_path: Path) -> None:
    """21 test and 9 validation images on two processes: Lightning's DistributedSampler
    repeated one of each to give both processes as many, and the logged and reported metrics
    counted it. They now equal one process's evaluation of the same weights (~40 s)."""
    mnist = write_mnist(tmp_path / "mnist", n_train=40, n_test=21)
    out = tmp_path / "ddp"
    command = [
        sys.executable,
        "-m",
        "plmu.cli",
        "train",
        "psmnist",
        "--out",
        str(out),
        "--data-dir",
        str(mnist),
        "--accelerator",
        "cpu",
        "--devices",
        "2",
        "--strategy",
        "ddp",
        "--no-progress-bar",
        *sets([*TINY_PSMNIST, "val_size=9"]),
    ]
    subprocess.run(command, check=True, timeout=600, cwd=tmp_path)
    trained = json.loads((out / "metrics.json").read_text())
    best = out / "checkpoints" / "best.ckpt"  # one epoch: the weights validated and tested
    single = evaluate(best, out=tmp_path / "eval", accelerator="cpu", devices=1, progress_bar=False)
    assert trained["test_loss"] == pytest.approx(single["test_loss"], rel=1e-5)
    assert trained["test_accuracy"] == pytest.approx(single["test_accuracy"], abs=1e-7)

    with (out / "logs" / "version_0" / "metrics.csv").open() as stream:
        [logged] = [row for row in csv.DictReader(stream) if row.get("val_loss")]
    _, _, module, data = load_checkpoint(best, mnist)
    data.setup("fit")
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False)
    [validated] = trainer.validate(module, datamodule=data, verbose=False)
    assert float(logged["val_loss"]) == pytest.approx(validated["val_loss"], rel=1e-5)
    assert float(logged["val_accuracy"]) == pytest.approx(validated["val_accuracy"], abs=1e-7)


_SIGNALLED = """
import os, signal, sys
import lightning as L
from lightning.pytorch.utilities.exceptions import SIGTERMException
from plmu.training.runner import train


class Signal(L.Callback):
    # after optimizer step 3 (mid-epoch): SIGTERM to rank 0 alone, as `kill PID` sends it;
    # SIGINT to every rank, as Ctrl-C sends it to the terminal's process group
    def __init__(self, signum):
        self.signum = signum

    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step == 3 and (self.signum == signal.SIGINT or trainer.global_rank == 0):
            os.kill(os.getpid(), self.signum)


out, signum, options = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
try:  # the exit statuses of plmu.cli.main
    train("mackey-glass", out=out, overrides=options, accelerator="cpu", devices=2,
          strategy="ddp", progress_bar=False, callbacks=[Signal(signum)] if signum else [])
except KeyboardInterrupt:
    sys.exit(130)
except SIGTERMException:
    sys.exit(143)
except SystemExit as error:
    sys.exit(130 if isinstance(error.__context__, KeyboardInterrupt) else error.code)
"""


@pytest.mark.slow
def test_ddp_sigterm_and_ctrl_c_save_where_every_rank_stops_and_resume_exactly(
    tmp_path: Path,
) -> None:
    """Two processes, 5 batches each per epoch, no step checkpoints. SIGTERM to rank 0 alone
    and Ctrl-C (SIGINT to both) at the end of step 3: the ranks' all-reduce started there is
    read at the next batch end, so every rank stops after step 4, with last.ckpt written
    there, and the same command resumes it to the uninterrupted run's weights. Before,
    SIGTERM stopped both at the next batch and Ctrl-C at once, with no checkpoint: the steps
    were lost (~1 minute)."""
    script = tmp_path / "train_ddp.py"
    script.write_text(_SIGNALLED)
    options = [*TINY_MACKEY_GLASS, "train_length=1200", "dropout=0.3"]

    def run(out: str, signum: int = 0) -> subprocess.CompletedProcess:
        command = [sys.executable, str(script), str(tmp_path / out), str(signum), *options]
        return subprocess.run(command, timeout=600, cwd=tmp_path, capture_output=True, text=True)

    assert run("ref").returncode == 0
    for signum, status in ((signal.SIGTERM, 143), (signal.SIGINT, 130)):
        out = signum.name
        stopped = run(out, signum)
        assert stopped.returncode == status, stopped.stderr[-2000:]
        assert "stopping after the next step with checkpoints/last.ckpt written" in stopped.stderr
        assert loader_position(tmp_path / out) == [{"epoch": 0, "batches": 4}]
        assert not (tmp_path / out / "metrics.json").exists()
        assert run(out).returncode == 0
        assert_same_last_checkpoint(tmp_path / "ref", tmp_path / out)


_SIGTERM_BEFORE_TRAINING = """
import os, sys, time
from pathlib import Path
import lightning as L
from lightning.pytorch.utilities.exceptions import SIGTERMException
from plmu.training.runner import train


class SigtermBeforeTraining(L.Callback):
    # rank 1 alone: the state Lightning's SIGTERM handler leaves (installed after on_fit_start,
    # replaced by plmu's at on_train_start) when the signal reached that rank before plmu's
    # on_train_start. (A real signal cannot be used with gloo: Lightning's handler itself then
    # blocks in a broadcast until rank 0 broadcasts too.)
    def on_train_start(self, trainer, *args):
        if trainer.global_rank == 1:
            trainer._signal_connector.received_sigterm = True

    def on_train_batch_start(self, trainer, *args):
        Path(sys.argv[1] + f".trained{trainer.global_rank}").touch()


out, options = sys.argv[1], sys.argv[2:]
status = 0
try:
    train("mackey-glass", out=out, overrides=options, accelerator="cpu", devices=2,
          strategy="ddp", progress_bar=False, callbacks=[SigtermBeforeTraining()])
except SIGTERMException:
    status = 143
rank = os.environ.get("LOCAL_RANK", "0")
Path(out + f".status{rank}").write_text(str(status))
if rank == "1":
    # Lightning's launcher kills every process (SIGKILL) once a child has ended with another
    # status than 0, checking every 5 s: rank 0 ends first here, as it would have with its own
    time.sleep(5)
sys.exit(status)
"""


@pytest.mark.slow
def test_ddp_sigterm_before_training_on_one_rank_stops_every_rank(tmp_path: Path) -> None:
    """A SIGTERM that Lightning's handler took on rank 1 alone before training started (between
    ``on_fit_start`` and plmu's ``on_train_start``, e.g. a preemption during the sanity check
    or the data loaders' start, reaching the ranks at different moments): rank 1 raised
    ``SIGTERMException`` there at once, while rank 0 waited for it in the process group made at
    ``on_train_start`` until the timeout (30 minutes). The ranks now agree there and both stop
    before the first batch with status 143 (~20 s)."""
    script = tmp_path / "train_ddp.py"
    script.write_text(_SIGTERM_BEFORE_TRAINING)
    out = tmp_path / "run"
    command = [sys.executable, str(script), str(out), *TINY_MACKEY_GLASS]
    stopped = subprocess.run(command, timeout=300, cwd=tmp_path, capture_output=True, text=True)
    assert stopped.returncode == 143, stopped.stderr[-2000:]
    statuses = [Path(f"{out}.status{rank}") for rank in (0, 1)]
    for _ in range(600):  # rank 1's process ends after rank 0's
        if all(path.exists() for path in statuses):
            break
        time.sleep(0.1)
    assert [path.read_text() for path in statuses] == ["143", "143"]  # each stopped there
    assert not list(tmp_path.glob("run.trained*"))  # stopped before the first batch
    assert not (out / "checkpoints" / "last.ckpt").exists()

"""DDP: two CPU processes (gloo) train through the same command line (slow: ~1 minute)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from tiny_configs import TINY_MACKEY_GLASS, sets

from conftest import assert_same_last_checkpoint, loader_position


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

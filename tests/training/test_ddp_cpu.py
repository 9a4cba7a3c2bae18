"""DDP: two CPU processes (gloo) train through the same command line (slow: ~1 minute)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from tiny_configs import TINY_MACKEY_GLASS, sets


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

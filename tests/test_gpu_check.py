"""scripts/gpu_check.sh, the one prepared run on a lent GPU machine, checked without a GPU.

A session lent a GPU gets one call of about nine minutes: the script must work the first time.
Here it runs with a stand-in python that records each command (fast: the command lines, the time
limits and the files), and, marked slow, for real on the CPU at small sizes (the dry run).
"""

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"

pytestmark = pytest.mark.skipif(
    shutil.which("bash") is None or shutil.which("timeout") is None, reason="needs bash, timeout"
)


def _run(tmp_path: Path, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    out = tmp_path / "out"
    full = {**os.environ, "OUT": str(out), **env}
    return subprocess.run(
        ["bash", str(SCRIPT)],
        env=full,
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_commands_limits_and_files(tmp_path):
    """With a stand-in python: the tests, the CUDA benchmark writing into $OUT and the GPU
    training run are called as planned, and the benchmark gets at least 300 s of the budget."""
    log = tmp_path / "calls.txt"
    fake = tmp_path / "python"
    fake.write_text(f'#!/bin/sh\necho "$@" >> {log}\ncat > /dev/null\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    done = _run(tmp_path, {"PYTHON": str(fake)}, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    out = tmp_path / "out"
    calls = log.read_text().splitlines()
    tests = next(c for c in calls if "-m pytest" in c)
    assert "--hypothesis-profile=derandomized" in tests and "tests/test_devices.py" in tests
    # every experiment's steps under CUDA's sync debug mode
    assert "tests/test_host_sync.py::test_cuda_training_and_validation_steps_do_not_sync" in tests
    bench = next(c for c in calls if "plmu.bench" in c)
    assert bench == f"-m plmu.bench --device cuda --json {out}/cuda.json --plot {out}/cuda.png"
    train = next(c for c in calls if "plmu.cli train" in c)
    assert "--accelerator gpu" in train and "--set precision=bf16-mixed" in train
    assert str(out) not in train  # the training run's files stay out of $OUT (8 files come back)
    limit = int(done.stdout.split("benchmark: ")[1].split(" s at most")[0])
    assert 300 <= limit <= 530 - 70
    made = {"cuda_env.txt", "cuda_tests.txt", "cuda.txt", "cuda_train.txt"}  # the stand-in's
    assert {p.name for p in out.iterdir()} == made
    assert "tests exit status 0, bench exit status 0, train exit status 0" in done.stdout


@pytest.mark.slow
def test_dry_run_on_cpu(tmp_path):
    """The whole script on the CPU (GPU_CHECK_DEVICE=cpu, small sizes): every file it returns,
    a complete benchmark JSON and a finished training run."""
    env = {
        "GPU_CHECK_DEVICE": "cpu",
        "GPU_CHECK_QUICK": "1",
        "GPU_CHECK_TESTS": "tests/test_devices.py",
        "PYTHON": sys.executable,
    }
    done = _run(tmp_path, env, timeout=400)
    assert done.returncode == 0, done.stdout + done.stderr
    out = tmp_path / "out"
    names = {p.name for p in out.iterdir()}
    assert names == {
        "cuda_env.txt",
        "cuda_tests.txt",
        "cuda.json",
        "cuda.png",
        "cuda.txt",
        "cuda_train.txt",
        "cuda_train_metrics.json",
    }
    assert len(names) <= 8  # the device tool returns at most 8 files
    res = json.loads((out / "cuda.json").read_text())
    assert "unfinished" not in res and res["meta"]["device"] == "cpu"
    assert " passed" in (out / "cuda_tests.txt").read_text()
    assert "test_nrmse" in json.loads((out / "cuda_train_metrics.json").read_text())

"""scripts/step_time.py, the one-case step timer: each case runs (no timed assertions)."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "step_time.py"


@pytest.fixture(scope="module")
def step_time():
    spec = importlib.util.spec_from_file_location("step_time", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "case, label",
    [([], "32 steps, batch 2"), (["--psmnist"], "psMNIST, 32"), (["--original"], "original LMU")],
)
def test_each_case_runs(step_time, monkeypatch, capsys, case, label):
    threads = torch.get_num_threads()
    sizes = ["--steps", "32", "--batch", "2", "--repeats", "2", "--warmup", "0", "--per-step"]
    argv = ["step_time.py", *case, *sizes]
    monkeypatch.setattr(sys, "argv", argv)
    try:
        step_time.main()
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert label in out and "median" in out
    walls, kernels = (line.split(": ")[1].split() for line in out.splitlines()[:2])
    assert len(walls) == len(kernels) == 2 and all(float(v) >= 0 for v in walls + kernels)

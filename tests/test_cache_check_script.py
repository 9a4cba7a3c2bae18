"""scripts/cache_check_cost.py, the timing of the caches' content check: it runs and reports each
case (no timed assertions)."""

import importlib.util
import sys
from pathlib import Path

import torch

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "cache_check_cost.py"


def test_reports_every_case(monkeypatch, capsys):
    spec = importlib.util.spec_from_file_location("cache_check_cost", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    threads = torch.get_num_threads()
    monkeypatch.setattr(sys, "argv", ["cache_check_cost.py", "--calls", "3", "--rounds", "1"])
    try:
        module.main()
    finally:
        torch.set_num_threads(threads)
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(" (")[0] for line in lines] == [
        "W_m, hidden 212, order 256",
        "W_m, hidden 128, 16 x order 64",
        "trainable theta",
    ]
    assert all("us a check" in line for line in lines)

"""scripts/compare_keras_lmu.py, the timing against keras-lmu: its plmu side and its arguments.

TensorFlow is not a dependency of plmu, so the fast tests run the script with
``--frameworks torch`` (plmu's rows only); the Keras side runs where TensorFlow and keras-lmu are
installed (benchmarks/keras_lmu-requirements.txt). No timed assertions.
"""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "compare_keras_lmu.py"


@pytest.fixture(scope="module")
def compare():
    spec = importlib.util.spec_from_file_location("compare_keras_lmu", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # (its dataclass looks its module up)
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[spec.name]


@pytest.fixture(autouse=True)
def _threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_torch_side_runs_every_case_and_writes_json(compare, tmp_path, capsys):
    path = tmp_path / "out" / "keras_lmu.json"
    assert compare.main(["--quick", "--frameworks", "torch", "--json", str(path)]) == 0
    res = json.loads(path.read_text())
    assert set(res["cases"]) == set(compare.CASES)
    assert res["meta"]["threads"] == 1 and res["meta"]["torch_threads"] == 1
    assert "tensorflow" not in res["meta"]
    for name, case in res["cases"].items():
        assert set(case["rows"]) == {"plmu"} | (
            {compare.EVERY_OUTPUT} if name == "psmnist" else set()
        )
        assert case["rows"]["plmu"]["vs_plmu"] == 1.0
        unit = "us" if name == "latency" else "ms"
        for row in case["rows"].values():
            assert len(row[f"times_{unit}"]) == case["repeats"] and row["vs_plmu"] > 0
            assert 0 < row[f"min_{unit}"] <= row[f"median_{unit}"]
    assert res["cases"]["full_sequence"]["loss"] == "mse"
    assert res["cases"]["psmnist"]["loss"] == "cross-entropy"
    out = capsys.readouterr().out
    assert "psMNIST, original LMU (RNN)" in out and "full sequence" in out
    assert "median us" in out  # the inference case's unit


def test_models_have_the_cases_sizes(compare):
    """The plmu models are plmu bench's: the 2019 psMNIST cell's 102,027 weights at full size."""
    table = compare.cases_for(compare.BenchConfig(), None, None)
    original = compare.plmu_model(table["psmnist_original"])
    assert sum(p.numel() for p in original.parameters() if p.requires_grad) == 102_027
    parallel = compare.plmu_model(table["psmnist"])
    assert parallel.rnn.order == 468 and parallel.rnn.hidden_size == 346
    assert parallel.rnn.return_sequences is False
    full = compare.plmu_model(table["full_sequence"])
    assert (full.rnn.memory_size, full.rnn.order, full.rnn.hidden_size) == (16, 64, 128)
    x, y = compare.case_data(table["full_sequence"])
    assert x.shape == (32, 1024, 64) and y.shape == (32, 1024, 128)
    assert table["psmnist_original"].repeats < table["psmnist"].repeats


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--repeats", "0"], "--repeats must be >= 1"),
        (["--original-repeats", "0"], "--original-repeats must be >= 1"),
        (["--threads", "0"], "--threads must be >= 1"),
        (["--cases", "nope"], "invalid choice"),
        (["--frameworks", "jax"], "invalid choice"),
    ],
)
def test_bad_arguments_name_the_option(compare, argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        compare.main(["--quick", "--frameworks", "torch", *argv])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_json_folder_refused_before_timing(compare, tmp_path, capsys):
    with pytest.raises(SystemExit):
        compare.main(["--quick", "--frameworks", "torch", "--json", str(tmp_path)])
    assert "--json" in capsys.readouterr().err


def test_missing_tensorflow_says_what_to_install(compare, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # import tensorflow -> ImportError
    with pytest.raises(SystemExit, match=r"keras_lmu-requirements\.txt"):
        compare.main(["--quick", "--cases", "psmnist"])


@pytest.mark.slow  # 15 s: TensorFlow compiles every row's step
def test_keras_side_computes_plmus_function(compare, tmp_path):
    """Where keras-lmu is installed: the Keras models, given plmu's weights, agree with plmu."""
    pytest.importorskip("tensorflow")
    pytest.importorskip("keras_lmu")
    path = tmp_path / "keras_lmu.json"
    compare.main(["--quick", "--json", str(path)])
    res = json.loads(path.read_text())
    for case in res["cases"].values():
        assert not case["errors"]
        assert case["checks"]
        for check in case["checks"].values():  # keras-lmu's own float32 system, and plmu's
            assert check["max_abs_diff"] < 1e-4
            assert check.get("max_abs_diff_plmu_system", 0.0) < 1e-5
        assert all("vs_plmu" in row for row in case["rows"].values())

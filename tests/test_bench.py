"""The benchmark harness: a tiny configuration runs end to end and writes valid JSON and PNG.

No timed assertions: timings on a shared machine prove nothing; the harness's logic does.
"""

import json
import time

import pytest
import torch

import plmu
from plmu import bench


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_quick_run_writes_json_and_png(tmp_path, capsys, monkeypatch):
    # peak_memory's gc.collect() took 3 of the run's 4 s (0.25 s a call on the test process's
    # heap); the run's code paths and its JSON are the same without it
    monkeypatch.setattr(bench.gc, "collect", lambda generation=2: 0)
    json_path, png_path = tmp_path / "out" / "bench.json", tmp_path / "out" / "bench.png"
    status = bench.main(
        ["--quick", "--threads", "1", "--json", str(json_path), "--plot", str(png_path)]
    )
    assert status == 0
    res = json.loads(json_path.read_text())
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert set(bench.GROUPS) <= set(res)
    assert res["meta"]["quick"] is True and res["meta"]["threads"] == 1
    ps = res["psmnist"]["cases"]
    assert ps["parallel last-state (eq. 25)"]["x_slower_than_parallel"] == 1.0
    for case in [*ps.values(), *res["full_sequence"]["cases"].values()]:
        assert case["median_ms"] > 0 and len(case["times_ms"]) == res["meta"]["repeats"]
        assert case["min_ms"] <= case["median_ms"]
    assert set(res["full_sequence"]["cases"]) >= {f"parallel {m}" for m in bench.PARALLEL_MODES}
    sw = res["sweep"]
    assert len(sw["parallel_ms"]) == len(sw["lstm_ms"]) == len(sw["lengths"])
    for rounds in (sw["parallel_times_ms"], sw["lstm_times_ms"]):
        assert len(rounds) == len(sw["lengths"])
        assert all(len(r) == res["meta"]["repeats"] for r in rounds)
    assert all(r["identical_within_fp32"] for r in res["streaming"]["runs"])
    assert all("met" in t for t in res["targets"].values())
    out = capsys.readouterr().out
    assert "psMNIST training step" in out and "targets (issue 4)" in out


def test_only_one_group_and_bad_arguments(tmp_path, capsys, monkeypatch):
    res = bench.run(quick=True, groups=["latency"], log=lambda _: None)
    assert set(res) == {"meta", "latency", "targets"}
    assert all(v > 0 for v in res["latency"]["us_per_step"].values())
    with pytest.raises(ValueError, match="groups"):
        bench.run(quick=True, groups=["nope"], log=lambda _: None)
    with pytest.raises(ValueError, match="repeats"):
        bench.run(quick=True, groups=["latency"], repeats=0, log=lambda _: None)
    # the options as typed (the messages said "threads", "repeats", as --json and --plot do not)
    assert bench.main(["--quick", "--only", "latency", "--threads", "0"]) == 2
    assert "plmu: error: --threads must be >= 1, got 0" in capsys.readouterr().err
    assert bench.main(["--quick", "--only", "latency", "--repeats", "-2"]) == 2
    assert "plmu: error: --repeats must be >= 1, got -2" in capsys.readouterr().err
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert bench.main(["--quick", "--only", "latency", "--device", "cuda"]) == 2
    assert "plmu: error: --device cuda, but torch.cuda" in capsys.readouterr().err


def test_streaming_in_chunks_equals_stepping():
    layer = plmu.ParallelLMU(1, 5, 12, 40.0).eval()
    x = torch.randn(1, 700, 1)
    r = bench.stream_compare(layer, x, chunk=128, device=torch.device("cpu"), step_steps=700)
    assert r["steps"] == 700 and r["stepped_steps"] == 700
    assert r["max_abs_diff"] <= 1e-5 * max(r["max_abs_output"], 1.0)
    assert r["chunked_s"] > 0 and r["stepped_s"] > 0


def test_streaming_detects_a_mismatch(monkeypatch):
    layer = plmu.ParallelLMU(1, 5, 12, 40.0).eval()
    original = plmu.ParallelLMU.step

    def wrong_step(self, x_t, state=None):
        y, s = original(self, x_t, state)
        return y + 1.0, s

    monkeypatch.setattr(plmu.ParallelLMU, "step", wrong_step)
    r = bench.stream_compare(layer, torch.randn(1, 64, 1), 16, torch.device("cpu"), 64)
    assert r["max_abs_diff"] >= 0.99


def test_time_interleaved_runs_in_rounds():
    calls = []
    fns = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    times = bench.time_interleaved(fns, repeats=3, warmup=1, device=torch.device("cpu"))
    # warm-up, then one timed call that sets the round length, then the interleaved rounds
    assert calls == ["a", "a", "b", "b"] + ["a", "b"] * 3
    assert all(len(v) == 3 and min(v) >= 0 for v in times.values())


def test_round_length_is_set_after_the_warm_up():
    """A slow first call (building caches) must not shrink the rounds of a fast step."""
    seen = []

    def fast_after_first():
        seen.append(1)
        if len(seen) == 1:
            time.sleep(0.05)

    bench.time_interleaved(
        {"x": fast_after_first}, repeats=2, warmup=1, device=torch.device("cpu"), min_round_s=0.02
    )
    assert len(seen) > 2 + 2 * 5  # a round of a ~free call repeats it many times


def test_peak_memory_sees_a_large_buffer():
    before = bench.peak_memory(lambda: None, torch.device("cpu"))
    if before is None:
        pytest.skip("no /proc peak-RSS on this platform")

    def allocate():
        x = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
        return float(x[::4096].sum())

    assert bench.peak_memory(allocate, torch.device("cpu")) >= 60 * 2**20


def test_output_files_are_checked_before_the_run(tmp_path, capsys):
    """The JSON and PNG are written after the whole run: a folder given as --json failed only
    then ("[Errno 21] Is a directory"), and --plot without the sweep group wrote nothing."""
    file = tmp_path / "notes.txt"
    file.write_text("mine\n")
    cases = [
        (["--json", str(tmp_path)], f"--json {tmp_path} is a folder; give a file name"),
        (["--plot", str(tmp_path)], f"--plot {tmp_path} is a folder; give a file name"),
        (["--json", str(file / "b.json")], f"{file} is a file, not a folder"),
        (["--plot", str(tmp_path / "p.png")], "--plot draws the sweep group's curves"),
    ]
    timed = []
    for options, message in cases:
        args = ["--quick", "--only", "latency", *options]
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(bench, "bench_latency", lambda *a: timed.append(a))
            assert bench.main(args) == 2
        assert message in capsys.readouterr().err
    assert timed == [] and file.read_text() == "mine\n"
    assert not (tmp_path / "p.png").exists()


def test_os_error_is_one_line_from_both_entry_points(tmp_path, capsys, monkeypatch):
    """python -m plmu.bench caught only ValueError: an OSError (here a --json name too long for
    the file system) gave a traceback there and a one-line error from plmu bench."""
    from plmu import cli

    monkeypatch.setattr(bench, "bench_latency", lambda *a: pytest.fail("timed"))
    args = ["bench", "--quick", "--only", "latency", "--json", str(tmp_path / ("a" * 300))]
    for entry, argv in ((cli.main, args), (bench.main, args[1:])):
        assert entry(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("plmu: error: ") and "too long" in err and err.count("\n") == 1


def test_crossing():
    assert bench.crossing([100, 1000], [2.0, 0.5]) == {"length": 316, "direction": "falling"}
    assert bench.crossing([100, 1000], [0.5, 2.0]) == {"length": 316, "direction": "rising"}
    assert bench.crossing([100, 1000, 10000], [0.9, 0.5, 0.4]) is None
    assert bench.crossing([100, 1000], [2.0, 1.5]) is None


def test_plmu_bench_subcommand(tmp_path):
    from plmu import cli

    path = tmp_path / "latency.json"
    assert cli.main(["bench", "--quick", "--only", "latency", "--json", str(path)]) == 0
    assert "latency" in json.loads(path.read_text())
    assert cli.main(["bench", "--quick", "--only", "latency", "--repeats", "0"]) == 2


@pytest.mark.parametrize("cfg", [bench.BenchConfig.quick(), bench.BenchConfig()])
def test_psmnist_original_lmu_is_the_2019_cell(cfg):
    """The ratio's baseline is the 2019 psMNIST cell as the paper trained it: every connection
    present and trained (102,027 weights with the 10-way head at the full configuration)."""
    rnn = bench.psmnist_original_lmu(cfg)
    cell = rnn.cell
    assert all(p.requires_grad for p in rnn.parameters())
    assert None not in (cell.e_x, cell.e_h, cell.e_m, cell.W_x, cell.W_h, cell.W_m)
    assert (cell.hidden_size, cell.memory.order) == (cfg.ps_lmu_hidden, cfg.ps_lmu_order)
    head = cfg.ps_lmu_hidden * cfg.ps_classes + cfg.ps_classes
    if cfg == bench.BenchConfig():
        assert sum(p.numel() for p in rnn.parameters()) + head == 102_027


@pytest.mark.parametrize("cfg", [bench.BenchConfig.quick(), bench.BenchConfig()])
def test_psmnist_original_lmu_lean_variant(cfg):
    """The lighter comparison row: no all-zero weight multiplied in (the 2019 setup's
    zero-initialised e_h, e_m, W_x and W_h are left out), e_x frozen, only W_m trained."""
    rnn = bench.psmnist_original_lmu(cfg, lean=True)
    cell = rnn.cell
    assert cell.e_h is None and cell.e_m is None and cell.W_x is None and cell.W_h is None
    assert [n for n, p in rnn.named_parameters() if p.requires_grad] == ["cell.W_m"]
    assert (cell.hidden_size, cell.memory.order) == (cfg.ps_lmu_hidden, cfg.ps_lmu_order)


def test_json_and_plot_are_written_as_the_groups_finish(tmp_path, monkeypatch):
    """scripts/gpu_check.sh runs the benchmark under a time limit on a machine lent once: the
    JSON (and the sweep's plot) used to be written only after the last group, so a run stopped
    by the limit (or failing) in a later group left nothing. Each finished group is saved at
    once, with the groups still to run listed; the final JSON lists none."""
    json_path, png_path = tmp_path / "b.json", tmp_path / "b.png"

    def stopped(*args):
        saved = json.loads(json_path.read_text())
        assert set(saved) >= {"meta", "sweep", "targets"} and "latency" not in saved
        assert saved["unfinished"] == ["latency"]
        assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        raise KeyboardInterrupt  # as a time limit's signal would stop it here

    monkeypatch.setattr(bench, "bench_latency", stopped)
    with pytest.raises(KeyboardInterrupt):
        bench.run(
            quick=True,
            groups=["sweep", "latency"],
            json_path=json_path,
            plot_path=png_path,
            log=lambda _: None,
        )
    assert json.loads(json_path.read_text())["unfinished"] == ["latency"]
    assert not list(tmp_path.glob("*.tmp"))  # written whole, then renamed
    monkeypatch.undo()
    res = bench.run(quick=True, groups=["latency"], json_path=json_path, log=lambda _: None)
    saved = json.loads(json_path.read_text())
    assert "unfinished" not in saved and "unfinished" not in res
    assert saved["latency"] == res["latency"]


def test_cuda_settings_are_recorded(monkeypatch):
    """On CUDA the JSON's meta names what decides the float32 arithmetic (TF32 for cuBLAS and
    cuDNN's LSTM): readable here with the GPU queries mocked, every value plain JSON."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Fake GPU")
    meta = bench._meta(torch.device("cuda"), bench.BenchConfig.quick(), True)
    settings = meta["cuda"]
    assert meta["device_name"] == "Fake GPU" and settings["capability"] == "9.0"
    assert settings["float32_matmul_precision"] == torch.get_float32_matmul_precision()
    assert settings["cublas_allow_tf32"] is torch.backends.cuda.matmul.allow_tf32
    assert json.loads(json.dumps(meta)) == meta
    assert "CUDA: capability 9.0" in bench.format_report({"meta": meta})
    assert "cuda" not in bench._meta(torch.device("cpu"), bench.BenchConfig.quick(), True)


def test_cuda_timing_and_memory_synchronise(monkeypatch):
    """The CUDA branches, with the device calls mocked: every timed block starts and ends with
    a synchronisation (kernels run asynchronously: without it a timer sees launches only), and
    peak memory is the allocator's peak during the step above what was allocated before."""
    events: list[str] = []
    peak = {"now": 100, "max": 100}
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: events.append("sync"))
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: peak["now"])
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: peak["max"])

    def reset(device=None):
        events.append("reset")
        peak["max"] = peak["now"]

    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", reset)
    cuda = torch.device("cuda")
    fns = {"a": lambda: events.append("a"), "b": lambda: events.append("b")}
    bench.time_interleaved(fns, repeats=1, warmup=1, device=cuda)
    # warm-up, a synchronised call that sets the round length, then the synchronised round
    timed = ["sync", "a", "sync", "sync", "b", "sync"]
    assert events == ["a", "sync", "a", "sync", "b", "sync", "b", "sync", *timed]
    events.clear()

    def step():
        events.append("step")
        peak["max"] = 1100  # a buffer of 1000 bytes, freed before the step ends

    assert bench.peak_memory(step, cuda) == 1000
    assert events == ["sync", "reset", "step", "sync"]

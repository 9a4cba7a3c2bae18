"""Speed benchmarks: ``plmu bench`` (or ``python -m plmu.bench``).

What is measured (all ratios come from one run, with the cases of a group interleaved round by
round and the median taken, because a shared machine is noisy):

* **psMNIST training step** (forward + backward + Adam step, batch 100, 784 steps): the parallel
  LMU (order 468, hidden 346; last state by eq. 25, and each full-sequence execution mode taking
  the last step), the original LMU (order 256, hidden 212, the 2019 psMNIST setup with all
  102k weights trained, run sequentially on precomputed ``Abar``/``Bbar``; and, for comparison, a
  lighter variant that trains ``W_m`` only, its zero-initialised ``e_h``, ``e_m``, ``W_x``,
  ``W_h`` left out and ``e_x`` frozen) and ``torch.nn.LSTM(1, 346)``.
* **Full-sequence training step** (``return_sequences=True``; batch 32, 1024 steps, input 64,
  memory_size 16, order 64, hidden 128): the parallel LMU in every mode, the original LMU of the
  same sizes and ``torch.nn.LSTM(64, 128)``.
* **Modes by length**: the parallel layer's execution modes at short lengths (the measurements
  behind ``mode="auto"``).
* **Sweep**: training-step time of the parallel LMU and the LSTM for lengths 256 to 16384
  (the full-sequence configuration, batch 32), plotted log-log.
* **Inference**: one-step latency at batch 1 (order 256), and streaming a long signal (1M steps)
  through the layer in chunks versus one step at a time, checking that the outputs agree.

Peak memory of a training step: on CUDA, ``torch.cuda.max_memory_allocated`` above the memory held
before the step. On CPU, the peak resident set size of the process during the step above the
resident size before it (``VmHWM`` after resetting it through ``/proc/self/clear_refs``, with
freed heap memory returned by ``malloc_trim`` first). PyTorch's CPU allocator does not cache, and
the original LMU's kept sequence buffers (:mod:`plmu.workspace`) are dropped first, so this counts
every buffer the step touches (activations, gradients, optimizer state, library workspaces); it is
``None`` where ``/proc`` is unavailable.

On CUDA, ``meta.cuda`` records the CUDA/cuDNN versions and TF32 switches (:func:`cuda_settings`).

The module imports only torch and numpy (and matplotlib, lazily, for the plot).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import itertools
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from plmu.layers import LMU, ParallelLMU
from plmu.workspace import clear_workspaces

__all__ = [
    "BenchConfig",
    "cuda_settings",
    "main",
    "peak_memory",
    "psmnist_original_lmu",
    "run",
    "stream_compare",
    "time_interleaved",
]

PARALLEL_MODES = ("auto", "fused", "fft", "chunked", "direct", "recurrent")


# ----------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class BenchConfig:
    """Sizes of every benchmark; :meth:`quick` shrinks them to a smoke test."""

    # psMNIST (Chilkuri & Eliasmith 2021; Voelker et al. 2019)
    ps_batch: int = 100
    ps_steps: int = 784
    ps_order: int = 468
    ps_hidden: int = 346
    ps_lmu_order: int = 256
    ps_lmu_hidden: int = 212
    ps_classes: int = 10
    # full sequence
    fs_batch: int = 32
    fs_steps: int = 1024
    fs_input: int = 64
    fs_memory_size: int = 16
    fs_order: int = 64
    fs_hidden: int = 128
    fs_theta: float = 1024.0
    # modes by length (full-sequence sizes)
    mode_lengths: tuple[int, ...] = (2, 8, 32, 128, 512)
    # sweep (the full-sequence configuration, batch included, at every length)
    sweep_batch: int = 32
    sweep_lengths: tuple[int, ...] = (256, 512, 1024, 2048, 4096, 8192, 16384)
    # inference
    inf_order: int = 256
    inf_hidden: int = 212
    inf_theta: float = 784.0
    latency_steps: int = 2000
    stream_steps: int = 1_000_000
    stream_chunk: int = 62500  # 1M = 16 chunks; 2 * 62500 = 2^3 5^6 is a fast FFT size
    stream_step_steps: int = 125000  # stepped (timed and compared): the first two chunks
    stream_widths: tuple[int, ...] = (212, 1)  # readout widths (hidden sizes)
    # timing
    repeats: int = 3
    warmup: int = 1
    min_round_s: float = 0.25  # a round repeats a fast case until it lasts this long
    skip: tuple[str, ...] = field(default_factory=tuple)

    @classmethod
    def quick(cls) -> BenchConfig:
        """Tiny sizes: every code path in a few seconds (for tests and smoke runs)."""
        return cls(
            ps_batch=4,
            ps_steps=48,
            ps_order=16,
            ps_hidden=12,
            ps_lmu_order=8,
            ps_lmu_hidden=8,
            fs_batch=2,
            fs_steps=64,
            fs_input=4,
            fs_memory_size=2,
            fs_order=8,
            fs_hidden=8,
            fs_theta=64.0,
            mode_lengths=(2, 8, 32),
            sweep_batch=2,
            sweep_lengths=(32, 64, 128),
            inf_order=16,
            inf_hidden=8,
            inf_theta=50.0,
            latency_steps=50,
            stream_steps=1000,
            stream_chunk=256,
            stream_step_steps=1000,
            stream_widths=(8, 1),
            repeats=2,
            warmup=1,
            min_round_s=0.0,
        )


# ----------------------------------------------------------------------------- measurement


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(
    fns: dict[str, Callable[[], object]],
    repeats: int,
    warmup: int,
    device: torch.device,
    min_round_s: float = 0.0,
) -> dict[str, list[float]]:
    """Wall-clock seconds per call of each function, ``repeats`` rounds interleaved.

    Every function runs ``warmup`` times first (kernel caches, lazy optimizer state), then once
    more, timed, to set how many calls a round makes: enough to last ``min_round_s`` (a 5 ms
    step timed once is mostly timer and scheduler noise, and the first calls after another case
    ran are slower). The count comes from a call after the warm-up because a first call that
    builds caches can take far longer than a steady step. Within a round the cases run one after
    another, so slow phases of a shared machine hit all of them.

    Returns:
        ``{name: [seconds per call, one value per round]}``.
    """
    calls: dict[str, int] = {}
    for name, fn in fns.items():
        for _ in range(warmup):
            fn()
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        elapsed = time.perf_counter() - start
        calls[name] = 1 if elapsed <= 0 else max(1, min(1000, math.ceil(min_round_s / elapsed)))
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            _sync(device)
            start = time.perf_counter()
            for _ in range(calls[name]):
                fn()
            _sync(device)
            times[name].append((time.perf_counter() - start) / calls[name])
    return times


def _proc_status(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _malloc_trim() -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def peak_memory(fn: Callable[[], object], device: torch.device) -> int | None:
    """Peak bytes ``fn`` needs above what the process held before it (see module docstring).

    Returns ``None`` when the platform offers no way to measure it. The original LMU's kept
    buffers (:mod:`plmu.workspace`) are dropped first: the step's own are then counted.
    """
    clear_workspaces()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return int(torch.cuda.max_memory_allocated(device) - before)
    _malloc_trim()
    before = _proc_status("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM, the peak resident set size
    except OSError:
        return None
    if before is None:
        return None
    fn()
    peak = _proc_status("VmHWM")
    return None if peak is None else max(0, peak - before)


class _LastStep(nn.Module):
    """Classifier: a sequence model, its output at the last step, a linear head."""

    def __init__(self, rnn: nn.Module, hidden: int, classes: int) -> None:
        super().__init__()
        self.rnn = rnn
        self.head = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.rnn(x)[0]
        return self.head(y if y.dim() == 2 else y[:, -1])


class _Sequence(nn.Module):
    """A sequence model's full output sequence ``(batch, time, hidden)``."""

    def __init__(self, rnn: nn.Module) -> None:
        super().__init__()
        self.rnn = rnn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rnn(x)[0]


def _train_step(
    model: nn.Module, x: torch.Tensor, target: torch.Tensor, loss: Callable
) -> Callable[[], None]:
    """A closure running one training step: forward, loss, backward, Adam step."""
    params = [p for p in model.parameters() if p.requires_grad]
    try:  # the fused Adam kernel (CPU and CUDA); the same optimizer for every model
        opt = torch.optim.Adam(params, lr=1e-4, fused=True)
    except (RuntimeError, TypeError):
        opt = torch.optim.Adam(params, lr=1e-4)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss(model(x), target).backward()
        opt.step()

    return step


def _measure_group(
    builders: dict[str, Callable[[], Callable[[], None]]],
    cfg: BenchConfig,
    device: torch.device,
    memory: bool = True,
) -> dict[str, dict]:
    """Build each case, time all interleaved, then measure each one's peak memory."""
    steps = {name: build() for name, build in builders.items()}
    times = time_interleaved(steps, cfg.repeats, cfg.warmup, device, cfg.min_round_s)
    result = {}
    for name, step in steps.items():
        result[name] = {
            "median_ms": 1e3 * statistics.median(times[name]),
            "min_ms": 1e3 * min(times[name]),
            "times_ms": [1e3 * t for t in times[name]],
            "peak_mb": None,
        }
        if memory:
            peak = peak_memory(step, device)
            result[name]["peak_mb"] = None if peak is None else peak / 2**20
    return result


# ----------------------------------------------------------------------------- the groups


ORIGINAL_PSMNIST = "original LMU"  # the 2019 cell, everything trained: the ratio's baseline
ORIGINAL_PSMNIST_LEAN = "original LMU, W_m only"  # lighter, for comparison


def psmnist_original_lmu(cfg: BenchConfig, lean: bool = False) -> LMU:
    """The original LMU of the psMNIST benchmark, ``init="psmnist"`` (the 2019 setup).

    By default the 2019 cell as the paper trained it: ``e_x``, ``e_h``, ``e_m``, ``W_x``,
    ``W_h`` and ``W_m`` all train (102,027 weights with the 10-way head; PAPER.md's 102k), so
    backward runs through every step's ``h``. This is the baseline the psMNIST ratio is judged
    by. ``lean=True`` gives a lighter sequential model for comparison: only ``W_m`` trains, the
    zero-initialised ``e_h``, ``e_m``, ``W_x`` and ``W_h`` are left out and ``e_x`` is frozen at
    1 (the same outputs and ``W_m`` gradient as the 2019 cell's first step, without
    multiplying by zeros or backpropagating through ``h``).
    """
    switches = ("hidden_to_memory", "memory_to_memory", "input_to_hidden", "hidden_to_hidden")
    rnn = LMU(
        1,
        cfg.ps_lmu_hidden,
        cfg.ps_lmu_order,
        float(cfg.ps_steps),
        return_sequences=False,
        init="psmnist",
        **dict.fromkeys(switches if lean else (), False),
    )
    if lean:
        rnn.cell.e_x.requires_grad_(False)
    return rnn


def bench_psmnist(cfg: BenchConfig, device: torch.device) -> dict:
    """Training step at the psMNIST configuration; ratios over the parallel LMU (eq. 25)."""
    B, T = cfg.ps_batch, cfg.ps_steps
    x = torch.randn(B, T, 1, device=device)
    labels = torch.randint(0, cfg.ps_classes, (B,), device=device)

    def parallel(mode: str, last_state: bool) -> Callable[[], Callable[[], None]]:
        def build():
            rnn = ParallelLMU(
                1,
                cfg.ps_hidden,
                cfg.ps_order,
                float(cfg.ps_steps),
                return_sequences=not last_state,
                mode=mode,
            )
            model = _LastStep(rnn, cfg.ps_hidden, cfg.ps_classes).to(device)
            return _train_step(model, x, labels, F.cross_entropy)

        return build

    def original(lean: bool) -> Callable[[], Callable[[], None]]:
        def build():
            rnn = psmnist_original_lmu(cfg, lean)
            model = _LastStep(rnn, cfg.ps_lmu_hidden, cfg.ps_classes).to(device)
            return _train_step(model, x, labels, F.cross_entropy)

        return build

    def lstm():
        rnn = nn.LSTM(1, cfg.ps_hidden, batch_first=True)
        model = _LastStep(rnn, cfg.ps_hidden, cfg.ps_classes).to(device)
        return _train_step(model, x, labels, F.cross_entropy)

    builders: dict[str, Callable] = {"parallel last-state (eq. 25)": parallel("auto", True)}
    # the same layer computing every output and keeping the last (auto picks the fused path);
    # the other modes are compared at the full-sequence configuration
    builders["parallel auto (full sequence)"] = parallel("auto", False)
    builders[ORIGINAL_PSMNIST] = original(lean=False)
    builders[ORIGINAL_PSMNIST_LEAN] = original(lean=True)
    builders[f"nn.LSTM(1, {cfg.ps_hidden})"] = lstm
    builders = {k: v for k, v in builders.items() if k not in cfg.skip}
    cases = _measure_group(builders, cfg, device)
    base = cases["parallel last-state (eq. 25)"]["median_ms"]
    for case in cases.values():
        case["x_slower_than_parallel"] = case["median_ms"] / base
    return {
        "config": {
            "batch": B,
            "steps": T,
            "parallel": {"order": cfg.ps_order, "hidden": cfg.ps_hidden, "theta": T},
            "original": {"order": cfg.ps_lmu_order, "hidden": cfg.ps_lmu_hidden, "theta": T},
        },
        "note": "return_sequences=False always uses the last-state product (eq. 25); the "
        "'full sequence' case computes every output with mode='auto' and keeps the last",
        "cases": cases,
    }


def _full_sequence_builders(
    cfg: BenchConfig, device: torch.device, batch: int, steps: int, modes: Sequence[str]
) -> tuple[dict[str, Callable], dict[str, Callable], dict[str, Callable]]:
    x = torch.randn(batch, steps, cfg.fs_input, device=device)
    target = torch.randn(batch, steps, cfg.fs_hidden, device=device)

    def parallel(mode: str):
        def build():
            rnn = ParallelLMU(
                cfg.fs_input,
                cfg.fs_hidden,
                cfg.fs_order,
                cfg.fs_theta,
                memory_size=cfg.fs_memory_size,
                mode=mode,
            )
            return _train_step(_Sequence(rnn).to(device), x, target, F.mse_loss)

        return build

    def original():
        rnn = LMU(cfg.fs_input, cfg.fs_hidden, cfg.fs_order, cfg.fs_theta, cfg.fs_memory_size)
        return _train_step(_Sequence(rnn).to(device), x, target, F.mse_loss)

    def lstm():
        rnn = nn.LSTM(cfg.fs_input, cfg.fs_hidden, batch_first=True)
        return _train_step(_Sequence(rnn).to(device), x, target, F.mse_loss)

    par = {f"parallel {mode}": parallel(mode) for mode in modes}
    return par, {"original LMU": original}, {f"nn.LSTM({cfg.fs_input}, {cfg.fs_hidden})": lstm}


def bench_full_sequence(cfg: BenchConfig, device: torch.device) -> dict:
    """Training step at the full-sequence configuration; ratios over the LSTM."""
    par, orig, lstm = _full_sequence_builders(
        cfg, device, cfg.fs_batch, cfg.fs_steps, PARALLEL_MODES
    )
    builders = {k: v for k, v in {**par, **orig, **lstm}.items() if k not in cfg.skip}
    cases = _measure_group(builders, cfg, device)
    lstm_case = cases[next(iter(lstm))]
    for case in cases.values():
        case["time_vs_lstm"] = case["median_ms"] / lstm_case["median_ms"]
        if case["peak_mb"] is not None and lstm_case["peak_mb"]:
            case["memory_vs_lstm"] = case["peak_mb"] / lstm_case["peak_mb"]
    return {
        "config": {
            "batch": cfg.fs_batch,
            "steps": cfg.fs_steps,
            "input": cfg.fs_input,
            "memory_size": cfg.fs_memory_size,
            "order": cfg.fs_order,
            "hidden": cfg.fs_hidden,
            "theta": cfg.fs_theta,
        },
        "cases": cases,
    }


def bench_modes(cfg: BenchConfig, device: torch.device) -> dict:
    """The parallel layer's modes at short lengths (full-sequence sizes): ms per training step."""
    out: dict[str, dict[str, float]] = {}
    modes = [m for m in PARALLEL_MODES if m != "auto"]
    for steps in cfg.mode_lengths:
        par, _, _ = _full_sequence_builders(cfg, device, cfg.fs_batch, steps, modes)
        cases = _measure_group(par, cfg, device, memory=False)
        out[str(steps)] = {k.split()[1]: v["median_ms"] for k, v in cases.items()}
    return {"batch": cfg.fs_batch, "ms_by_length": out}


def bench_sweep(cfg: BenchConfig, device: torch.device) -> dict:
    """Parallel LMU (auto) and LSTM training steps over sequence lengths; ratio and crossing."""
    parallel_ms, lstm_ms, parallel_rounds, lstm_rounds = [], [], [], []
    for steps in cfg.sweep_lengths:
        par, _, lstm = _full_sequence_builders(cfg, device, cfg.sweep_batch, steps, ("auto",))
        cases = _measure_group({**par, **lstm}, cfg, device, memory=False)
        p, q = cases["parallel auto"], cases[next(iter(lstm))]
        parallel_ms.append(p["median_ms"])
        lstm_ms.append(q["median_ms"])
        parallel_rounds.append(p["times_ms"])
        lstm_rounds.append(q["times_ms"])
    ratio = [p / q for p, q in zip(parallel_ms, lstm_ms)]
    return {
        "batch": cfg.sweep_batch,
        "lengths": list(cfg.sweep_lengths),
        "parallel_ms": parallel_ms,
        "lstm_ms": lstm_ms,
        "parallel_times_ms": parallel_rounds,  # every round, per length (medians above)
        "lstm_times_ms": lstm_rounds,
        "parallel_over_lstm": ratio,
        "crossing_length": crossing(list(cfg.sweep_lengths), ratio),
    }


def crossing(lengths: Sequence[int], ratio: Sequence[float]) -> dict | None:
    """Where ``ratio`` first passes through 1 (log-log interpolation), else ``None``.

    Returns:
        ``{"length": ..., "direction": "falling" | "rising"}``: falling means the parallel
        model becomes the faster one from that length on, rising the opposite.
    """
    for i in range(1, len(ratio)):
        a, b = ratio[i - 1], ratio[i]
        if (a >= 1.0 > b) or (a < 1.0 <= b):
            la, lb = math.log(lengths[i - 1]), math.log(lengths[i])
            f = math.log(a) / (math.log(a) - math.log(b))
            direction = "falling" if a >= 1.0 else "rising"
            return {"length": round(math.exp(la + f * (lb - la))), "direction": direction}
    return None


def _inference_layer(cfg: BenchConfig, device: torch.device) -> ParallelLMU:
    layer = ParallelLMU(1, cfg.inf_hidden, cfg.inf_order, cfg.inf_theta).to(device)
    return layer.eval()


def bench_latency(cfg: BenchConfig, device: torch.device) -> dict:
    """Microseconds per ``step`` at batch 1: parallel LMU, original LMU cell, LSTM cell."""
    layer = _inference_layer(cfg, device)
    cell = LMU(1, cfg.inf_hidden, cfg.inf_order, cfg.inf_theta).cell.to(device).eval()
    lstm = nn.LSTMCell(1, cfg.inf_hidden).to(device).eval()
    x = torch.randn(1, 1, device=device)
    n = cfg.latency_steps
    state: dict[str, object] = {"parallel": None, "original": None, "lstm": None}

    def run_parallel():
        s = state["parallel"]
        for _ in range(n):
            _, s = layer.step(x, s)
        state["parallel"] = s

    def run_original():
        s = state["original"]
        for _ in range(n):
            _, s = cell(x, s)
        state["original"] = s

    def run_lstm():
        s = state["lstm"]
        for _ in range(n):
            s = lstm(x, s)
        state["lstm"] = s

    fns = {
        "parallel LMU step": run_parallel,
        "original LMU cell": run_original,
        "nn.LSTMCell": run_lstm,
    }
    with torch.inference_mode():
        times = time_interleaved(fns, max(3, cfg.repeats), cfg.warmup, device)
    return {
        "config": {"batch": 1, "order": cfg.inf_order, "hidden": cfg.inf_hidden, "input": 1},
        "us_per_step": {k: 1e6 * statistics.median(v) / n for k, v in times.items()},
    }


def _max_abs(t: torch.Tensor) -> float:
    """``max |t|``, infinite when ``t`` holds a NaN (so a NaN never passes a comparison)."""
    v = float(t.abs().max()) if t.numel() else 0.0
    return math.inf if math.isnan(v) else v


def stream_compare(
    layer: ParallelLMU,
    x: torch.Tensor,
    chunk: int,
    device: torch.device,
    step_steps: int | None = None,
) -> dict[str, float]:
    """Run ``x`` ``(1, steps, input)`` through ``layer`` in chunks and one step at a time.

    After one untimed warm-up chunk (it builds the cached kernels), the chunked pass over the
    whole signal is timed on its own. Then the first ``step_steps``
    samples (rounded up to whole chunks; default: all) are stepped one at a time (timed), each
    chunk's outputs recomputed (untimed) and compared with the stepped ones, and the states
    compared where the stepping stops.

    Returns:
        ``steps``, ``chunked_s`` (whole signal), ``stepped_steps``, ``stepped_s``,
        ``max_abs_diff`` and ``max_abs_output`` over every compared output, and
        ``state_max_abs_diff``, ``state_max_abs`` for the state where the stepping stopped.
    """
    steps = x.shape[1]
    starts = list(range(0, steps, chunk))
    n_step_chunks = len(starts) if step_steps is None else -(-min(step_steps, steps) // chunk)
    with torch.inference_mode():
        layer(x[:, :chunk])  # warm-up (untimed): builds the cached kernels, as a server would
        _sync(device)
        start = time.perf_counter()
        state = None
        for s in starts:
            _, state = layer(x[:, s : s + chunk], state)
        _sync(device)
        chunked_s = time.perf_counter() - start
        stepped_s, stepped, max_diff, max_out = 0.0, 0, 0.0, 0.0
        state_c = state_s = None
        for s in starts[:n_step_chunks]:
            y_chunk, state_c = layer(x[:, s : s + chunk], state_c)
            inputs = list(x[:, s : s + chunk].unbind(1))
            outs = []
            _sync(device)
            start = time.perf_counter()
            for x_t in inputs:
                y_t, state_s = layer.step(x_t, state_s)
                outs.append(y_t)
            _sync(device)
            stepped_s += time.perf_counter() - start
            stepped += len(inputs)
            y_step = torch.stack(outs, dim=1)
            max_diff = max(max_diff, _max_abs(y_step - y_chunk))
            max_out = max(max_out, _max_abs(y_chunk))
    return {
        "steps": steps,
        "chunked_s": chunked_s,
        "stepped_steps": stepped,
        "stepped_s": stepped_s,
        "max_abs_diff": max_diff,
        "max_abs_output": max_out,
        "state_max_abs_diff": _max_abs(state_s - state_c),
        "state_max_abs": _max_abs(state_c),
    }


def bench_streaming(cfg: BenchConfig, device: torch.device) -> dict:
    """Streaming a long signal: chunks versus one step at a time, same outputs.

    One run per readout width in ``cfg.stream_widths`` (the chunked cost grows with the number
    of outputs per step, the stepping cost hardly does). Throughputs compare steps per second.
    """
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, cfg.stream_steps, 1, generator=gen).to(device)
    runs = []
    for hidden in cfg.stream_widths:
        torch.manual_seed(0)
        layer = ParallelLMU(1, hidden, cfg.inf_order, cfg.inf_theta).to(device).eval()
        r = stream_compare(layer, x, cfg.stream_chunk, device, cfg.stream_step_steps)
        rel = max(
            r["max_abs_diff"] / max(r["max_abs_output"], 1e-30),
            r["state_max_abs_diff"] / max(r["state_max_abs"], 1e-30),
        )
        chunked_rate = r["steps"] / r["chunked_s"]
        stepped_rate = r["stepped_steps"] / r["stepped_s"]
        runs.append(
            {
                "hidden": hidden,
                **r,
                "chunked_steps_per_s": chunked_rate,
                "stepped_steps_per_s": stepped_rate,
                "speedup": chunked_rate / stepped_rate,
                "max_rel_diff": rel,
                "identical_within_fp32": rel <= 1e-4,
            }
        )
    return {
        "config": {
            "batch": 1,
            "input": 1,
            "steps": cfg.stream_steps,
            "chunk": cfg.stream_chunk,
            "order": cfg.inf_order,
            "theta": cfg.inf_theta,
        },
        "runs": runs,
    }


# ----------------------------------------------------------------------------- the report


def _targets(res: dict) -> dict[str, dict]:
    """The issue's targets, checked on this run's numbers."""
    t: dict[str, dict] = {}
    ps = res.get("psmnist", {}).get("cases", {})
    if ps:
        par = ps["parallel last-state (eq. 25)"]["median_ms"]
        for name, goal in ((ORIGINAL_PSMNIST, 200.0), ("nn.LSTM", 100.0)):
            key = next((k for k in ps if k == name or k.startswith(f"{name}(")), None)
            if key:
                v = ps[key]["median_ms"] / par
                t[f"psmnist: parallel vs {key}"] = {"value": v, "target": f">= {goal:g}x"}
                t[f"psmnist: parallel vs {key}"]["met"] = v >= goal
    fs = res.get("full_sequence", {}).get("cases", {})
    if fs:
        auto = fs.get("parallel auto")
        if auto:
            t["full sequence: parallel auto time / LSTM"] = {
                "value": auto["time_vs_lstm"],
                "target": "< 1",
                "met": auto["time_vs_lstm"] < 1.0,
            }
            if auto.get("memory_vs_lstm") is not None:
                t["full sequence: parallel auto peak memory / LSTM"] = {
                    "value": auto["memory_vs_lstm"],
                    "target": "< 2",
                    "met": auto["memory_vs_lstm"] < 2.0,
                }
    sw = res.get("sweep")
    if sw:
        r = sw["parallel_over_lstm"]
        falls = all(b <= a * 1.05 for a, b in itertools.pairwise(r)) and r[-1] < r[0]
        t["sweep: parallel/LSTM ratio falls with length"] = {
            "value": [round(v, 3) for v in r],
            "target": "falling",
            "met": falls,
        }
    lat = res.get("latency")
    if lat:
        v = lat["us_per_step"]["parallel LMU step"]
        t["latency: one step, batch 1 (us)"] = {"value": v, "target": "< 100", "met": v < 100}
    st = res.get("streaming")
    if st:
        for r in st["runs"]:
            t[f"streaming: chunked vs stepping, hidden {r['hidden']}"] = {
                "value": r["speedup"],
                "target": ">= 100x, identical within fp32",
                "met": r["speedup"] >= 100 and r["identical_within_fp32"],
            }
    return t


def _fmt(v: float | None, digits: int = 1) -> str:
    return "-" if v is None else f"{v:,.{digits}f}"


def format_report(res: dict) -> str:
    """Plain-text tables of a :func:`run` result."""
    lines: list[str] = []
    meta = res.get("meta")
    if meta:
        lines.append(
            f"{meta['device_name']} ({meta['device']}), {meta['threads']} thread(s), "
            f"torch {meta['torch']}, THP_MEM_ALLOC_ENABLE={meta.get('THP_MEM_ALLOC_ENABLE')}"
        )
        if meta.get("cuda"):
            lines.append("CUDA: " + ", ".join(f"{k} {v}" for k, v in meta["cuda"].items()))
    for key, title, ratio_key, ratio_name in (
        ("psmnist", "psMNIST training step", "x_slower_than_parallel", "x parallel"),
        ("full_sequence", "full-sequence training step", "time_vs_lstm", "time/LSTM"),
    ):
        if key not in res:
            continue
        cfg = res[key]["config"]
        lines.append(f"\n{title}  {json.dumps(cfg)}")
        lines.append(f"{'case':<34}{'median ms':>12}{'min ms':>11}{'peak MB':>10}{ratio_name:>12}")
        for name, c in res[key]["cases"].items():
            lines.append(
                f"{name:<34}{_fmt(c['median_ms']):>12}{_fmt(c['min_ms']):>11}"
                f"{_fmt(c['peak_mb']):>10}{_fmt(c[ratio_key], 2):>12}"
            )
    if "modes" in res:
        lines.append(f"\nmodes by length (ms per training step, batch {res['modes']['batch']})")
        for steps, row in res["modes"]["ms_by_length"].items():
            lines.append(f"  T={steps:<6}" + "  ".join(f"{k} {v:.1f}" for k, v in row.items()))
    if "sweep" in res:
        sw = res["sweep"]
        lines.append(f"\nsweep (batch {sw['batch']}): length, parallel ms, LSTM ms, ratio")
        for n, p, q, r in zip(
            sw["lengths"], sw["parallel_ms"], sw["lstm_ms"], sw["parallel_over_lstm"]
        ):
            lines.append(f"  {n:>6} {p:>10.1f} {q:>10.1f} {r:>8.3f}")
        c = sw["crossing_length"]
        shown = "never, within the sweep" if c is None else f"{c['length']} ({c['direction']})"
        lines.append(f"  ratio crosses 1 at: {shown}")
    if "latency" in res:
        lines.append(f"\none-step latency  {json.dumps(res['latency']['config'])}")
        for k, v in res["latency"]["us_per_step"].items():
            lines.append(f"  {k:<22}{v:>9.1f} us")
    if "streaming" in res:
        st = res["streaming"]
        lines.append(f"\nstreaming  {json.dumps(st['config'])}")
        for r in st["runs"]:
            lines.append(
                f"  hidden {r['hidden']}: chunked {r['chunked_steps_per_s']:,.0f} steps/s "
                f"({r['steps']:,} steps in {r['chunked_s']:.2f} s), stepping "
                f"{r['stepped_steps_per_s']:,.0f} steps/s ({r['stepped_steps']:,} steps), "
                f"speedup {r['speedup']:.1f}x, max |diff| {r['max_abs_diff']:.1e} "
                f"(rel {r['max_rel_diff']:.1e})"
            )
    if "targets" in res:
        lines.append("\ntargets (issue 4)")
        for k, v in res["targets"].items():
            value = v["value"]
            shown = f"{value:.3g}" if isinstance(value, float) else str(value)
            lines.append(
                f"  [{'met' if v['met'] else 'NOT met'}] {k}: {shown} (target {v['target']})"
            )
    return "\n".join(lines)


def plot_sweep(res: dict, path: Path) -> None:
    """Log-log plot of training-step time against sequence length (and the ratio)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sw = res["sweep"]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax.loglog(sw["lengths"], sw["parallel_ms"], "o-", label="parallel LMU (auto)")
    ax.loglog(sw["lengths"], sw["lstm_ms"], "s-", label="nn.LSTM")
    ax.set_xlabel("sequence length")
    ax.set_ylabel("training step (ms)")
    ax.set_title(f"training step, batch {sw['batch']}")
    ax.legend()
    ax.grid(True, which="both", alpha=0.3)
    ax2.semilogx(sw["lengths"], sw["parallel_over_lstm"], "o-")
    ax2.axhline(1.0, color="gray", lw=0.8)
    ax2.set_xlabel("sequence length")
    ax2.set_ylabel("parallel / LSTM time")
    ax2.set_title("ratio")
    ax2.grid(True, which="both", alpha=0.3)
    fig.suptitle(f"plmu bench ({res['meta']['device']}, threads={res['meta']['threads']})")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _meta(device: torch.device, cfg: BenchConfig, quick: bool) -> dict:
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            name = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        pass
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    extra = {"cuda": cuda_settings(device)} if device.type == "cuda" else {}
    return {
        "device": str(device),
        "device_name": name,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "quick": quick,
        "repeats": cfg.repeats,
        "warmup": cfg.warmup,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "argv": sys.argv,
        # PyTorch's CPU allocator backs buffers of 2 MB and more with transparent huge pages
        # when this is set (read once, before the first tensor): far fewer page faults
        # for every model's large activations
        "THP_MEM_ALLOC_ENABLE": os.environ.get("THP_MEM_ALLOC_ENABLE"),
        **extra,
    }


def _setting(read: Callable[[], object]) -> object:
    """One backend flag, or ``None`` where this torch lacks it or refuses to read it (torch
    >= 2.9 raises when the legacy and the new TF32 switches were both set)."""
    try:
        value = read()
    except (AttributeError, RuntimeError):
        return None
    return value if isinstance(value, (bool, int, str)) or value is None else str(value)


def cuda_settings(device: torch.device) -> dict:
    """What decides a CUDA run's float32 arithmetic and kernels, for the JSON's ``meta``.

    The models compare in float32 as PyTorch runs it by default: cuBLAS products (the parallel
    LMU, the original LMU) in full float32 unless TF32 is switched on, while cuDNN's LSTM may
    use TF32 tensor cores by default (``torch.backends.cudnn.allow_tf32``; in torch >= 2.9
    ``cudnn.rnn.fp32_precision`` ``"tf32"``), which favours the LSTM baseline. Recorded, not
    changed.
    """
    backends = torch.backends
    return {
        "capability": ".".join(map(str, torch.cuda.get_device_capability(device))),
        "cuda": torch.version.cuda,
        "cudnn": _setting(backends.cudnn.version),
        "cudnn_enabled": _setting(lambda: backends.cudnn.enabled),
        "cudnn_benchmark": _setting(lambda: backends.cudnn.benchmark),
        "float32_matmul_precision": _setting(torch.get_float32_matmul_precision),
        "cublas_allow_tf32": _setting(lambda: backends.cuda.matmul.allow_tf32),
        "cudnn_allow_tf32": _setting(lambda: backends.cudnn.allow_tf32),
        "cudnn_rnn_fp32_precision": _setting(lambda: backends.cudnn.rnn.fp32_precision),
    }


GROUPS = ("psmnist", "full_sequence", "modes", "sweep", "latency", "streaming")


def run(
    device: str = "cpu",
    quick: bool = False,
    json_path: Path | None = None,
    plot_path: Path | None = None,
    threads: int | None = None,
    groups: Sequence[str] = GROUPS,
    repeats: int | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Run the benchmarks; write JSON/PNG where asked; return the results dict.

    The JSON is rewritten as each group finishes, with ``"unfinished"`` listing the groups still
    to run (absent once all ran), and the plot once the sweep is done: a run stopped by a time
    limit (``scripts/gpu_check.sh``) keeps the groups it finished.
    """
    unknown = [g for g in groups if g not in GROUPS]
    if unknown:
        raise ValueError(f"--only groups must be among {GROUPS}, got {unknown}")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda, but torch.cuda.is_available() is False")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"--device must be 'cpu' or 'cuda', got {device!r}")
    # the output files are written after the whole run: refuse a path that cannot be one now,
    # not after many minutes of timing (a folder was "[Errno 21] Is a directory" at the end)
    _check_output_file(json_path, "--json")
    _check_output_file(plot_path, "--plot")
    if plot_path is not None and "sweep" not in groups:
        raise ValueError("--plot draws the sweep group's curves: add sweep to --only")
    if threads is not None:
        if threads < 1:
            raise ValueError(f"--threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    cfg = BenchConfig.quick() if quick else BenchConfig()
    if repeats is not None:
        if repeats < 1:
            raise ValueError(f"--repeats must be >= 1, got {repeats}")
        cfg = BenchConfig(**{**cfg.__dict__, "repeats": repeats})
    torch.manual_seed(0)
    res: dict = {"meta": _meta(dev, cfg, quick)}
    fns = {
        "psmnist": bench_psmnist,
        "full_sequence": bench_full_sequence,
        "modes": bench_modes,
        "sweep": bench_sweep,
        "latency": bench_latency,
        "streaming": bench_streaming,
    }
    todo = [group for group in GROUPS if group in groups]
    for i, group in enumerate(todo):
        start = time.perf_counter()
        log(f"[plmu bench] {group} ...")
        res[group] = fns[group](cfg, dev)
        log(f"[plmu bench] {group} done in {time.perf_counter() - start:.1f} s")
        # saved as each group finishes: a run stopped later (a time limit, a failure) keeps it
        if json_path is not None and i + 1 < len(todo):
            partial = {**res, "targets": _targets(res), "unfinished": todo[i + 1 :]}
            _write_json(partial, Path(json_path))
        if plot_path is not None and group == "sweep":
            plot_sweep(res, Path(plot_path))
    res["targets"] = _targets(res)
    log(format_report(res))
    if json_path is not None:
        _write_json(res, Path(json_path))
    return res


def _write_json(res: dict, path: Path) -> None:
    """``res`` as indented JSON at ``path``, written whole to a temporary file, then renamed (a
    run killed while writing leaves the previous version, never half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(res, indent=2) + "\n")
    os.replace(tmp, path)


def _check_output_file(path: str | Path | None, option: str) -> None:
    """Refuse an output ``path`` that is a folder or whose folder cannot be made or written."""
    if path is None:
        return
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{option} {path} is a folder; give a file name")
    for folder in path.parents:
        if folder.is_dir():
            if not os.access(folder, os.W_OK | os.X_OK):
                raise ValueError(f"{option} {path}: cannot write into {folder}")
            return
        if folder.exists():
            raise ValueError(f"{option} {path}: {folder} is a file, not a folder")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``bench`` options (shared by ``plmu bench`` and ``python -m plmu.bench``)."""
    parser.add_argument(
        "--device", default="cpu", choices=["cpu", "cuda"], help="where to time (default: cpu)"
    )
    parser.add_argument("--json", type=Path, help="write the results as JSON here")
    parser.add_argument(
        "--plot", type=Path, help="write the log-log sweep plot (PNG) here (needs the sweep group)"
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test")
    parser.add_argument(
        "--threads", type=int, help="torch.set_num_threads (default: torch's choice)"
    )
    parser.add_argument(
        "--repeats", type=int, help="timed rounds per group (default: 3, with --quick 2)"
    )
    parser.add_argument(
        "--only",
        nargs="+",
        choices=GROUPS,
        default=list(GROUPS),
        help="run only these groups (default: all)",
    )


def run_from_args(args: argparse.Namespace) -> int:
    """Run with parsed :func:`add_arguments` options; returns the exit status."""
    run(
        device=args.device,
        quick=args.quick,
        json_path=args.json,
        plot_path=args.plot,
        threads=args.threads,
        groups=args.only,
        repeats=args.repeats,
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m plmu.bench [--device cpu|cuda] [--json FILE] [--plot FILE] [--quick]``: the
    same as ``plmu bench ...`` (its error, Ctrl-C and huge-page handling included)."""
    from plmu import cli

    return cli.main(["bench", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())

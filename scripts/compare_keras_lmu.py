"""Time plmu against keras-lmu, the authors' TensorFlow implementation, on CPU (issue 4).

One process, both frameworks on one thread (``torch.set_num_threads(1)``, TensorFlow's intra-
and inter-op pools 1), one training step = forward + loss + backward + Adam update, float32, the
same sizes and the same initial weights in both (plmu's weights are copied into the Keras
model). Within a case the rows run interleaved, round by round (``plmu.bench.time_interleaved``),
and medians are reported; the ratio ``keras / plmu`` comes from the same run.

Cases (the sizes of ``plmu bench``, :class:`plmu.bench.BenchConfig`):

* ``psmnist``: batch 100, 784 steps, 1 input, order 468, theta 784, hidden 346, a 10-way
  read-out of the last output, cross-entropy. plmu: ``ParallelLMU(return_sequences=False)``
  (the last-state product, eq. 25), and the same layer computing every output and keeping the
  last (``plmu every output``). keras-lmu: ``LMUFeedforward`` with a ``Dense(346, "relu")``
  hidden cell (what ``keras_lmu.LMU`` builds when the memory has no recurrent connections),
  which computes the whole memory sequence and applies the cell to its last step, by FFT
  (``conv_mode="fft"``, ``keras_lmu.LMU``'s choice) or by ``conv2d`` (``conv_mode="raw"``).
* ``psmnist_original``: the original LMU (the 2019 psMNIST cell, all 102,027 weights trained,
  ``plmu.bench.psmnist_original_lmu``), order 256, hidden 212; keras-lmu: ``keras_lmu.LMU``
  with ``hidden_to_memory``, ``memory_to_memory``, ``input_to_hidden`` and a
  ``SimpleRNNCell(212, use_bias=False)`` hidden cell, run as a ``keras.layers.RNN``.
* ``full_sequence``: batch 32, 1024 steps, input 64, memory_size (``memory_d``) 16, order 64,
  theta 1024, hidden 128, ``return_sequences=True``, MSE against a random target. keras-lmu:
  ``LMUFeedforward(hidden_cell=None)`` (it returns ``[m_t, x_t]``) and a ``Dense(128, "relu")``
  over the sequence: with the Dense as the hidden cell, Keras 3's ``TimeDistributed`` unrolls
  it into 1024 calls and the step's backward outgrew a 23 GB machine. ``conv_mode="raw"`` runs
  only with ``TF_ENABLE_ONEDNN_OPTS=0``: TensorFlow 2.21's oneDNN convolution aborts the process
  on it.
* ``latency``: inference, one step at batch 1 (order 256, hidden 212, theta 784), called from
  Python once a step: ``ParallelLMU.step`` against keras-lmu's ``LMUCell`` in a ``tf.function``.

TensorFlow's step is a ``tf.function`` (a ``GradientTape`` step, what ``model.fit`` compiles);
``--xla`` adds ``jit_compile=True`` rows (not for ``raw``: 13 s a psMNIST step, 10x slower).
Before timing, each Keras model's output on a few sequences is compared with plmu's
(``checks`` in the JSON): as keras-lmu builds it (its ``Abar``, ``Bbar`` and impulse response
computed in float32) and with plmu's system (float64, rounded once) put into the Keras layer.

    python3.11 -m venv .venv-keras
    .venv-keras/bin/pip install -r benchmarks/keras_lmu-requirements.txt
    THP_MEM_ALLOC_ENABLE=1 PYTHONPATH=src .venv-keras/bin/python scripts/compare_keras_lmu.py \
        --xla --json benchmarks/keras_lmu.json > benchmarks/keras_lmu.txt

The environment: ``benchmarks/keras_lmu-requirements.txt``, in a virtual environment of its own
(``.venv-keras/``, ignored by git). ``--frameworks torch`` runs plmu's
side alone (no TensorFlow needed); ``--quick`` shrinks every size to a smoke test.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from plmu import ParallelLMU, discretize, impulse_response, legendre_delay
from plmu.bench import (
    BenchConfig,
    _check_output_file,
    _inference_layer,
    _LastStep,
    _Sequence,
    _train_step,
    _write_json,
    psmnist_original_lmu,
    time_interleaved,
)

CASES = ("psmnist", "psmnist_original", "full_sequence", "latency")
FRAMEWORKS = ("torch", "tf")
EVERY_OUTPUT = "plmu every output"  # psMNIST: plmu computing every output, keeping the last
CHECK_BATCH = 4  # sequences whose outputs are compared between the two implementations
CHECK_STEPS = 200  # inference steps whose outputs are compared


@dataclass(frozen=True)
class Case:
    """One benchmark configuration: the plmu model and, built from its weights, the Keras one."""

    name: str
    title: str
    batch: int
    steps: int
    input_size: int
    classes: int | None  # a classifier's classes, or None for a sequence regression (MSE)
    repeats: int
    config: dict
    min_round_s: float = 0.25  # a round repeats a fast row until it lasts this long


def cases_for(cfg: BenchConfig, repeats: int | None, original_repeats: int | None) -> dict:
    """The three cases at ``cfg``'s sizes; the original LMU's (seconds a step) with fewer
    repeats by default."""
    rep = cfg.repeats if repeats is None else repeats
    orig_rep = max(1, rep - 2) if original_repeats is None else original_repeats
    table = {
        "psmnist": Case(
            "psmnist",
            "psMNIST, parallel LMU",
            cfg.ps_batch,
            cfg.ps_steps,
            1,
            cfg.ps_classes,
            rep,
            {"order": cfg.ps_order, "hidden": cfg.ps_hidden, "theta": float(cfg.ps_steps)},
        ),
        "psmnist_original": Case(
            "psmnist_original",
            "psMNIST, original LMU (RNN)",
            cfg.ps_batch,
            cfg.ps_steps,
            1,
            cfg.ps_classes,
            orig_rep,
            {"order": cfg.ps_lmu_order, "hidden": cfg.ps_lmu_hidden, "theta": float(cfg.ps_steps)},
        ),
        "full_sequence": Case(
            "full_sequence",
            "full sequence (return_sequences=True)",
            cfg.fs_batch,
            cfg.fs_steps,
            cfg.fs_input,
            None,
            rep,
            {
                "memory_size": cfg.fs_memory_size,
                "order": cfg.fs_order,
                "hidden": cfg.fs_hidden,
                "theta": cfg.fs_theta,
            },
        ),
    }
    return {name: replace(case, min_round_s=cfg.min_round_s) for name, case in table.items()}


# ----------------------------------------------------------------------------- plmu side


def plmu_model(case: Case, last_state: bool = True) -> torch.nn.Module:
    """plmu's model of ``case``: ``(batch, steps, input)`` -> logits or the output sequence.

    ``last_state=False`` (psMNIST only): the parallel layer computes every output (as
    keras-lmu's ``LMUFeedforward`` computes the whole memory sequence) and the last is kept.
    """
    c = case.config
    if case.name == "psmnist":
        rnn = ParallelLMU(1, c["hidden"], c["order"], c["theta"], return_sequences=not last_state)
        return _LastStep(rnn, c["hidden"], case.classes)
    if case.name == "psmnist_original":
        cfg = BenchConfig(ps_steps=case.steps, ps_lmu_order=c["order"], ps_lmu_hidden=c["hidden"])
        return _LastStep(psmnist_original_lmu(cfg), c["hidden"], case.classes)
    rnn = ParallelLMU(
        case.input_size, c["hidden"], c["order"], c["theta"], memory_size=c["memory_size"]
    )
    return _Sequence(rnn)


def case_data(case: Case) -> tuple[np.ndarray, np.ndarray]:
    """Random input ``(batch, steps, input)`` and target (labels, or ``(batch, steps, hidden)``
    for MSE), float32 / int64, the same arrays for both frameworks."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((case.batch, case.steps, case.input_size), dtype=np.float32)
    if case.classes is not None:
        return x, rng.integers(0, case.classes, case.batch).astype(np.int64)
    return x, rng.standard_normal((case.batch, case.steps, case.config["hidden"]), np.float32)


def plmu_step(case: Case, model: torch.nn.Module, x: np.ndarray, y: np.ndarray) -> Callable:
    """``plmu bench``'s training step (fused Adam, lr 1e-4) on ``case``'s data."""
    loss = F.cross_entropy if case.classes is not None else F.mse_loss
    return _train_step(model, torch.from_numpy(x), torch.from_numpy(y), loss)


# ----------------------------------------------------------------------------- keras side


def configure_tf(threads: int):
    """Import TensorFlow, keras and keras_lmu with ``threads`` intra/inter-op threads; a clear
    error where they are missing."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        import keras
        import keras_lmu
        import tensorflow as tf
    except ImportError as err:
        raise SystemExit(
            f"--frameworks tf needs tensorflow, keras and keras-lmu ({err}); build the "
            "environment of benchmarks/keras_lmu-requirements.txt, or pass --frameworks torch"
        ) from err
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    return tf, keras, keras_lmu


def keras_model(case: Case, plmu: torch.nn.Module, conv_mode: str, tf, keras, keras_lmu):
    """The Keras model of ``case`` with ``plmu``'s weights copied in, and its keras-lmu layer."""
    c = case.config
    inp = keras.Input((case.steps, case.input_size), batch_size=None, dtype="float32")
    if case.name == "psmnist_original":
        cell = plmu.rnn.cell
        layer = keras_lmu.LMU(
            memory_d=1,
            order=c["order"],
            theta=c["theta"],
            hidden_cell=keras.layers.SimpleRNNCell(c["hidden"], use_bias=False),
            hidden_to_memory=True,
            memory_to_memory=True,
            input_to_hidden=True,
            use_bias=False,
            return_sequences=False,
        )
        head = keras.layers.Dense(case.classes)
        model = keras.Model(inp, head(layer(inp)))
        rnn_cell = layer.layer.cell
        t = _numpy
        rnn_cell.kernel.assign(np.concatenate([t(cell.e_x), t(cell.e_h)], axis=1).T)
        rnn_cell.recurrent_kernel.assign(t(cell.e_m).T)
        rnn_cell.hidden_cell.kernel.assign(np.concatenate([t(cell.W_m), t(cell.W_x)], 1).T)
        rnn_cell.hidden_cell.recurrent_kernel.assign(t(cell.W_h).T)
        _copy_dense(head, plmu.head)
        return model, layer
    # psMNIST: the hidden cell inside the layer, which applies it to the last step only. Full
    # sequence: the layer returns [m_t, x_t] (hidden_cell=None) and a Dense maps the whole
    # sequence; with the Dense as hidden_cell, LMUFeedforward wraps it in TimeDistributed, which
    # Keras 3 unrolls into one Dense call per step (1024 here), and the step's backward outgrew
    # this 23 GB machine (docs/performance.md)
    last = case.name == "psmnist"
    dense = keras.layers.Dense(c["hidden"], activation="relu")
    layer = keras_lmu.LMUFeedforward(
        memory_d=1 if last else c["memory_size"],
        order=c["order"],
        theta=c["theta"],
        hidden_cell=dense if last else None,
        input_to_hidden=True,
        use_bias=True,
        return_sequences=not last,
        conv_mode=conv_mode,
    )
    out = layer(inp)
    if last:
        head = keras.layers.Dense(case.classes)
        out = head(out)
        _copy_dense(head, plmu.head)
    else:
        out = dense(out)
    model = keras.Model(inp, out)
    rnn = plmu.rnn
    layer.kernel.assign(_numpy(rnn.encoder.weight).T)
    layer.bias.assign(_numpy(rnn.encoder.bias))
    _copy_dense(dense, rnn.output)
    return model, layer


def _numpy(p: torch.Tensor) -> np.ndarray:
    return p.detach().cpu().numpy()


def _copy_dense(dense, linear: torch.nn.Linear) -> None:
    dense.kernel.assign(_numpy(linear.weight).T)
    dense.bias.assign(_numpy(linear.bias))


def keras_step(case: Case, model, x: np.ndarray, y: np.ndarray, xla: bool, tf, keras):
    """A compiled training step of ``model`` (Adam lr 1e-4): returns a closure that runs it and
    waits for the loss."""
    if case.classes is not None:
        loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    else:
        loss_fn = keras.losses.MeanSquaredError()
    opt = keras.optimizers.Adam(1e-4)
    xt, yt = tf.constant(x), tf.constant(y)
    variables = model.trainable_variables

    @tf.function(jit_compile=xla, autograph=False)
    def step():
        with tf.GradientTape() as tape:
            loss = loss_fn(yt, model(xt, training=True))
        opt.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss

    return lambda: float(step())


def check_same_function(case: Case, model_t, model_k, lmu, x: np.ndarray, tf) -> dict:
    """How far the Keras model's outputs on the first sequences lie from plmu's: with keras-lmu's
    own discretisation (``max_abs_diff``), and with plmu's ``Abar``, ``Bbar`` and impulse
    response put into the Keras layer ``lmu`` for the comparison (``max_abs_diff_plmu_system``).

    keras-lmu builds its system in float32 (``tf.linalg.expm`` of the float32 matrices, then the
    impulse response by a float32 recurrence); plmu in float64, rounded once. The second number
    shows whether the two compute the same function given the same system.
    """
    xs = x[:CHECK_BATCH]
    with torch.no_grad():
        ref = model_t(torch.from_numpy(xs)).numpy()
    scale = float(np.abs(ref).max())
    out = {"max_abs_output": scale}
    for key, swap in (("max_abs_diff", False), ("max_abs_diff_plmu_system", True)):
        saved = _use_plmu_system(case, lmu, tf) if swap else {}
        try:
            got = model_k(tf.constant(xs), training=False).numpy()
        finally:
            for holder, attrs in saved.items():
                for attr, value in attrs.items():
                    setattr(holder, attr, value)
        out[key] = float(np.abs(ref - got).max())
    out["relative"] = out["max_abs_diff"] / max(scale, 1e-30)
    return out


def _use_plmu_system(case: Case, lmu, tf) -> dict:
    """Put plmu's float64 zoh system (rounded to float32) into the keras-lmu layer ``lmu``;
    returns ``{object: {attribute: old value}}`` to restore."""
    order, theta = case.config["order"], case.config["theta"]
    Abar, Bbar = discretize(*legendre_delay(order), theta, method="zoh")
    f32 = tf.float32
    if case.name == "psmnist_original":
        cell = lmu.layer.cell  # keras-lmu's m_t = m_{t-1} A + u B, with A = Abar^T, B = Bbar^T
        saved = {cell: {"A": cell.A, "B": cell.B}}
        cell.A = tf.constant(np.asarray(Abar).T, f32)
        cell.B = tf.constant(np.reshape(Bbar, (1, order)), f32)
        return saved
    H = np.asarray(impulse_response(Abar, Bbar, case.steps), np.float32)  # (steps, order)
    saved = {lmu: {"impulse_response": lmu.impulse_response}}
    if lmu.conv_mode == "fft":
        saved[lmu]["impulse_response_fft"] = lmu.impulse_response_fft
        lmu.impulse_response = tf.constant(H)
        lmu.impulse_response_fft = tf.signal.rfft(tf.transpose(H), fft_length=[2 * case.steps])
    else:  # raw: the kept (truncated) length, reversed, as (length, 1, 1, order)
        kept = lmu.impulse_response.shape[0]
        lmu.impulse_response = tf.constant(H[:kept][::-1].reshape(kept, 1, 1, order))
    return saved


# ----------------------------------------------------------------------------- the run


def run_case(case: Case, frameworks: Sequence[str], xla: bool, tfmods, log) -> dict:
    """Build every row of ``case``, check the Keras rows against plmu, time them interleaved."""
    torch.manual_seed(0)
    x, y = case_data(case)
    model_t = plmu_model(case)
    steps: dict[str, Callable] = {}
    checks: dict[str, dict] = {}
    errors: dict[str, str] = {}
    if "torch" in frameworks:
        steps["plmu"] = plmu_step(case, model_t, x, y)
        if case.name == "psmnist":
            every = plmu_model(case, last_state=False)
            every.load_state_dict(model_t.state_dict())
            steps[EVERY_OUTPUT] = plmu_step(case, every, x, y)
    if "tf" in frameworks:
        tf, keras, keras_lmu = tfmods
        modes = {"psmnist": ["fft", "raw"], "psmnist_original": ["rnn"], "full_sequence": ["fft"]}
        if case.name == "full_sequence" and os.environ.get("TF_ENABLE_ONEDNN_OPTS") == "0":
            # raw with several memory channels aborts the process in TensorFlow 2.21's oneDNN
            # convolution (MklConvOp: "Check failed: dtype() == expected_dtype"); without
            # oneDNN it runs
            modes["full_sequence"].append("raw")
        for mode in modes[case.name]:
            # raw (conv2d) under XLA took 13 s a psMNIST step, 10x its plain tf.function
            for jit in (False, True) if xla and mode != "raw" else (False,):
                name = f"keras-lmu {mode}" + (" XLA" if jit else "")
                try:
                    model_k, lmu = keras_model(case, model_t, mode, tf, keras, keras_lmu)
                    if not jit:
                        checks[name] = check_same_function(case, model_t, model_k, lmu, x, tf)
                    steps[name] = keras_step(case, model_k, x, y, jit, tf, keras)
                    steps[name]()  # compiles here: a failure is one row's, not the run's
                except Exception as err:  # a row that cannot run is reported, the others run
                    steps.pop(name, None)
                    errors[name] = f"{type(err).__name__}: {str(err).splitlines()[0][:300]}"
                    log(f"[compare] {case.name}: {name} failed: {errors[name]}")
    times = time_interleaved(steps, case.repeats, 1, torch.device("cpu"), case.min_round_s)
    rows = {
        name: {
            "median_ms": 1e3 * statistics.median(t),
            "min_ms": 1e3 * min(t),
            "times_ms": [1e3 * v for v in t],
        }
        for name, t in times.items()
    }
    if "plmu" in rows:
        base = rows["plmu"]["median_ms"]
        for row in rows.values():
            row["vs_plmu"] = row["median_ms"] / base
    return {
        "title": case.title,
        "batch": case.batch,
        "steps": case.steps,
        "input": case.input_size,
        "loss": "cross-entropy" if case.classes is not None else "mse",
        **case.config,
        "repeats": case.repeats,
        "rows": rows,
        "checks": checks,
        "errors": errors,
    }


def run_latency(cfg: BenchConfig, frameworks: Sequence[str], repeats: int, tfmods, log) -> dict:
    """One inference step at batch 1 (``plmu bench``'s latency case: order 256, hidden 212,
    theta 784), microseconds per step, each framework called from Python once a step: plmu's
    ``ParallelLMU.step`` and keras-lmu's ``LMUCell`` (a ``Dense`` hidden cell, ``[m_t, x_t]``
    into it) in a ``tf.function``, with plmu's weights; their outputs after ``CHECK_STEPS``
    steps of the same input are compared."""
    layer = _inference_layer(cfg, torch.device("cpu"))
    n = cfg.latency_steps
    rng = np.random.default_rng(0)
    xs = rng.standard_normal((n, 1, 1), dtype=np.float32)
    fns: dict[str, Callable] = {}
    checks: dict[str, dict] = {}
    errors: dict[str, str] = {}
    x_t = [torch.from_numpy(x) for x in xs]

    def plmu_steps(count: int = n) -> np.ndarray:
        state, y = None, None
        with torch.inference_mode():
            for i in range(count):
                y, state = layer.step(x_t[i], state)
        return y.numpy()

    if "torch" in frameworks:
        fns["plmu"] = plmu_steps
    if "tf" in frameworks:
        tf, keras, keras_lmu = tfmods
        try:
            cell = keras_lmu.LMUCell(
                memory_d=1,
                order=cfg.inf_order,
                theta=cfg.inf_theta,
                hidden_cell=keras.layers.Dense(cfg.inf_hidden, activation="relu"),
                input_to_hidden=True,
                use_bias=True,
            )
            cell.build((1, 1))
            cell.kernel.assign(_numpy(layer.encoder.weight).T)
            cell.bias.assign(_numpy(layer.encoder.bias))
            _copy_dense(cell.hidden_cell, layer.output)
            x_k = [tf.constant(x) for x in xs]
            zeros = [tf.zeros((1, size)) for size in cell.state_size]

            @tf.function(autograph=False)
            def kstep(x, states):
                return cell(x, states, training=False)

            def keras_steps(count: int = n) -> np.ndarray:
                states, y = zeros, None
                for i in range(count):
                    y, states = kstep(x_k[i], states)
                return y.numpy()

            count = min(n, CHECK_STEPS)
            ref, got = plmu_steps(count), keras_steps(count)
            checks["keras-lmu LMUCell"] = {
                "steps": count,
                "max_abs_diff": float(np.abs(ref - got).max()),
                "max_abs_output": float(np.abs(ref).max()),
            }
            fns["keras-lmu LMUCell"] = keras_steps
        except Exception as err:  # a row that cannot run is reported, the others run
            errors["keras-lmu LMUCell"] = f"{type(err).__name__}: {str(err)[:300]}"
            log(f"[compare] latency: keras-lmu failed: {errors['keras-lmu LMUCell']}")
    times = time_interleaved(fns, repeats, 1, torch.device("cpu"), cfg.min_round_s)
    rows = {
        name: {
            "median_us": 1e6 * statistics.median(t) / n,
            "min_us": 1e6 * min(t) / n,
            "times_us": [1e6 * v / n for v in t],
        }
        for name, t in times.items()
    }
    if "plmu" in rows:
        for row in rows.values():
            row["vs_plmu"] = row["median_us"] / rows["plmu"]["median_us"]
    return {
        "title": "inference, one step at batch 1",
        "unit": "us",
        "batch": 1,
        "input": 1,
        "order": cfg.inf_order,
        "theta": cfg.inf_theta,
        "hidden": cfg.inf_hidden,
        "steps_per_call": n,
        "repeats": repeats,
        "rows": rows,
        "checks": checks,
        "errors": errors,
    }


def environment(frameworks: Sequence[str], threads: int, tfmods) -> dict:
    """Versions, CPU and thread settings of this run."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        pass
    env = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "argv": sys.argv,
        "python": platform.python_version(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "threads": threads,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "numpy": np.__version__,
        "THP_MEM_ALLOC_ENABLE": os.environ.get("THP_MEM_ALLOC_ENABLE"),
    }
    if "tf" in frameworks:
        from importlib.metadata import version

        tf, keras, _ = tfmods
        env.update(
            tensorflow=tf.__version__,
            keras=keras.__version__,
            keras_lmu=version("keras-lmu"),
            tf_intra_op_threads=tf.config.threading.get_intra_op_parallelism_threads(),
            tf_inter_op_threads=tf.config.threading.get_inter_op_parallelism_threads(),
            TF_ENABLE_ONEDNN_OPTS=os.environ.get("TF_ENABLE_ONEDNN_OPTS"),
        )
    return env


def format_report(res: dict) -> str:
    """The printed tables: per case, each row's median step and its ratio over plmu's."""
    lines = []
    env = res["meta"]
    lines.append(
        f"plmu {env['torch']} torch vs keras-lmu {env.get('keras_lmu', '-')} "
        f"(TensorFlow {env.get('tensorflow', '-')}), {env['threads']} thread(s), {env['cpu']}"
    )
    for case in res["cases"].values():
        lines.append("")
        sizes = ", ".join(
            f"{k} {case[k]}"
            for k in ("batch", "steps", "input", "memory_size", "order", "theta", "hidden")
            if k in case
        )
        loss = f"; {case['loss']}" if "loss" in case else ""
        lines.append(f"{case['title']} ({sizes}{loss}; {case['repeats']} rounds)")
        unit = case.get("unit", "ms")
        lines.append(f"  {'row':<22} {'median ' + unit:>11} {'min ' + unit:>11} {'x plmu':>9}")
        for name, row in case["rows"].items():
            ratio = f"{row['vs_plmu']:.2f}" if "vs_plmu" in row else "-"
            median, best = row[f"median_{unit}"], row[f"min_{unit}"]
            lines.append(f"  {name:<22} {median:>11.1f} {best:>11.1f} {ratio:>9}")
        for name, chk in case["checks"].items():
            system = chk.get("max_abs_diff_plmu_system")
            plmu_system = "" if system is None else f", {system:.1e} with plmu's Abar, Bbar, H"
            lines.append(
                f"  check {name}: max |keras - plmu| {chk['max_abs_diff']:.1e}{plmu_system} "
                f"(outputs up to {chk['max_abs_output']:.2f})"
            )
        for name, err in case["errors"].items():
            lines.append(f"  {name} did not run: {err}")
    return "\n".join(lines)


def run(
    cases: Sequence[str] = CASES,
    frameworks: Sequence[str] = FRAMEWORKS,
    xla: bool = False,
    quick: bool = False,
    repeats: int | None = None,
    original_repeats: int | None = None,
    threads: int = 1,
    json_path: Path | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Run the comparison; write JSON where asked; return the results."""
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        raise ValueError(f"--cases must be among {CASES}, got {unknown}")
    bad = [f for f in frameworks if f not in FRAMEWORKS]
    if bad or not frameworks:
        raise ValueError(f"--frameworks must be among {FRAMEWORKS}, got {list(frameworks)}")
    for value, option in ((repeats, "--repeats"), (original_repeats, "--original-repeats")):
        if value is not None and value < 1:
            raise ValueError(f"{option} must be >= 1, got {value}")
    if threads < 1:
        raise ValueError(f"--threads must be >= 1, got {threads}")
    _check_output_file(json_path, "--json")
    torch.set_num_threads(threads)
    tfmods = configure_tf(threads) if "tf" in frameworks else None
    cfg = BenchConfig.quick() if quick else BenchConfig()
    table = cases_for(cfg, repeats, original_repeats)
    res: dict = {
        "meta": {**environment(frameworks, threads, tfmods), "quick": quick, "xla": xla},
        "cases": {},
    }
    for name in cases:
        start = time.perf_counter()
        log(f"[compare] {name} ...")
        if name == "latency":
            rounds = max(3, cfg.repeats if repeats is None else repeats)
            res["cases"][name] = run_latency(cfg, frameworks, rounds, tfmods, log)
        else:
            res["cases"][name] = run_case(table[name], frameworks, xla, tfmods, log)
        log(f"[compare] {name} done in {time.perf_counter() - start:.1f} s")
        if json_path is not None:
            _write_json(res, Path(json_path))
    log(format_report(res))
    return res


def main(argv: Sequence[str] | None = None) -> int:
    """``python scripts/compare_keras_lmu.py [--cases ...] [--frameworks ...] [--xla] ...``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    parser.add_argument(
        "--frameworks",
        nargs="+",
        choices=FRAMEWORKS,
        default=list(FRAMEWORKS),
        help="torch: plmu's rows; tf: keras-lmu's (needs TensorFlow)",
    )
    parser.add_argument("--xla", action="store_true", help="also time jit_compile=True steps")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test")
    parser.add_argument("--repeats", type=int, help="timed rounds (default 5, --quick 2)")
    parser.add_argument(
        "--original-repeats", type=int, help="rounds of the original LMU (default repeats - 2)"
    )
    parser.add_argument("--threads", type=int, default=1, help="threads of both (default 1)")
    parser.add_argument("--json", type=Path, help="write the results as JSON here")
    args = parser.parse_args(argv)
    try:
        run(
            cases=args.cases,
            frameworks=args.frameworks,
            xla=args.xla,
            quick=args.quick,
            repeats=args.repeats if args.repeats is not None or args.quick else 5,
            original_repeats=args.original_repeats,
            threads=args.threads,
            json_path=args.json,
        )
    except ValueError as err:
        parser.error(str(err))
    return 0


if __name__ == "__main__":
    sys.exit(main())

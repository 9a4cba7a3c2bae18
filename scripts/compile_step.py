"""Time a training step eager and under ``torch.compile``, interleaved, on one thread.

The psMNIST case of ``plmu bench`` (batch 100, 784 steps, order 468, hidden 346, last state by
eq. 25, a 10-way head, cross-entropy, fused Adam) or, with ``--case full``, its full-sequence case
(batch 32, 1024 steps, input 64, memory_size 16, order 64, hidden 128, every output, MSE;
``--activation`` its hidden activation). Prints
the compile time (the first two compiled steps) and the median of ``--repeats`` steps each way.

    python scripts/compile_step.py --backend inductor          # needs a C++ compiler
    python scripts/compile_step.py --backend aot_eager --case full
    python scripts/compile_step.py --case full --activation identity
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from plmu import ParallelLMU
from plmu.bench import _LastStep, _Sequence, _train_step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend", default="inductor", help="torch.compile backend")
    parser.add_argument("--case", choices=["psmnist", "full"], default="psmnist")
    parser.add_argument("--repeats", type=int, default=8, help="timed steps each way")
    parser.add_argument(
        "--activation", default="relu", help="the full case's hidden_activation (default relu)"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)

    def build(compiled: bool):
        torch.manual_seed(0)
        if args.case == "psmnist":
            rnn = ParallelLMU(1, 346, 468, 784.0, return_sequences=False)
            model = _LastStep(rnn, 346, 10)
            x, target, loss = (
                torch.randn(100, 784, 1),
                torch.randint(0, 10, (100,)),
                F.cross_entropy,
            )
        else:
            layer = ParallelLMU(
                64, 128, 64, 1024.0, memory_size=16, hidden_activation=args.activation
            )
            model = _Sequence(layer)
            x, target, loss = torch.randn(32, 1024, 64), torch.randn(32, 1024, 128), F.mse_loss
        if compiled:
            model = torch.compile(model, backend=args.backend, fullgraph=True)
        return _train_step(model, x, target, loss)

    steps = {"eager": build(False), "compiled": build(True)}
    for name, step in steps.items():
        start = time.perf_counter()
        step()
        step()
        print(f"{name}: first two steps {time.perf_counter() - start:.2f} s")
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.repeats):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - start)
    for name, values in times.items():
        print(f"{name}: median step {1e3 * statistics.median(values):.1f} ms")


if __name__ == "__main__":
    main()

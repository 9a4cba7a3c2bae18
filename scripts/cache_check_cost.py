"""What the caches' content check costs: ``memory._unchanged`` on the weights it guards.

A cached kernel built from a weight is served only while the weight still holds, bit for bit,
what it was built from (docs/library.md, "Cached kernels"). This times that check, one
thread, for ``W_m`` at the streaming case (hidden 212, order 256) and at the bench's
full-sequence configuration (hidden 128, 16 x order 64), taken as the layer holds it (a view of
the output weight), and for a trainable ``theta``. Prints the median and best microseconds per
check over ``--calls`` calls, ``--rounds`` times.

    python scripts/cache_check_cost.py
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from plmu import ParallelLMU
from plmu.memory import _snapshot, _unchanged


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=2000, help="checks per round")
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cases = {}
    for name, kwargs in {
        "W_m, hidden 212, order 256": dict(input_size=1, hidden_size=212, order=256, theta=784.0),
        "W_m, hidden 128, 16 x order 64": dict(
            input_size=64, hidden_size=128, order=64, theta=1024.0, memory_size=16
        ),
    }.items():
        layer = ParallelLMU(**kwargs)
        cases[name] = layer.output.weight[:, : layer.state_size]  # the view the memory is given
    theta = ParallelLMU(1, 8, 16, 10.0, trainable_theta=True).memory.log_theta
    cases["trainable theta"] = theta
    for name, tensor in cases.items():
        snapshot = _snapshot(tensor)
        assert _unchanged(tensor, snapshot)
        rounds = []
        for _ in range(args.rounds):
            start = time.perf_counter()
            for _ in range(args.calls):
                _unchanged(tensor, snapshot)
            rounds.append((time.perf_counter() - start) / args.calls * 1e6)
        print(
            f"{name} {tuple(tensor.shape)}: median {statistics.median(rounds):.1f} us, "
            f"best {min(rounds):.1f} us a check"
        )


if __name__ == "__main__":
    main()

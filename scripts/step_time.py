"""Time the parallel LMU's full-sequence training step on its own, at any sequence length.

The layer and step of ``plmu bench``'s full-sequence group (batch 32, input 64, memory_size 16,
order 64, hidden 128, theta 1024; forward, MSE loss, backward, fused Adam), without the other
models: for comparing two versions of the code on one case, e.g. by alternating runs of two
checkouts (``PYTHONPATH=OTHER/src``). Prints the median and the best of ``--repeats`` steps after
``--warmup`` steps, on one thread.

    THP_MEM_ALLOC_ENABLE=1 python scripts/step_time.py --steps 16384
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from plmu import ParallelLMU


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=1024, help="sequence length")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--mode", default="auto", help="ParallelLMU mode")
    parser.add_argument("--repeats", type=int, default=12, help="timed steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    layer = ParallelLMU(64, 128, 64, 1024.0, memory_size=16, mode=args.mode)
    x = torch.randn(args.batch, args.steps, 64)
    target = torch.randn(args.batch, args.steps, 128)
    opt = torch.optim.Adam(layer.parameters(), lr=1e-4, fused=True)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        F.mse_loss(layer(x)[0], target).backward()
        opt.step()

    for _ in range(args.warmup):
        step()
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    print(
        f"{args.steps} steps, batch {args.batch}, mode {args.mode}: median "
        f"{1e3 * statistics.median(times):.1f} ms, best {1e3 * min(times):.1f} ms"
    )


if __name__ == "__main__":
    main()

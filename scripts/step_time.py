"""Time the parallel LMU's full-sequence training step on its own, at any sequence length.

The layer and step of ``plmu bench``'s full-sequence group (batch 32, input 64, memory_size 16,
order 64, hidden 128, theta 1024; forward, MSE loss, backward, fused Adam), without the other
models: for comparing two versions of the code on one case, e.g. by alternating runs of two
checkouts (``PYTHONPATH=OTHER/src``). Prints the median and the best of ``--repeats`` steps after
``--warmup`` steps, on one thread.

    THP_MEM_ALLOC_ENABLE=1 python scripts/step_time.py --steps 16384

``--psmnist`` times the psMNIST group's parallel step instead (batch 100, 784 steps, order 468,
hidden 346, theta 784, the last state (eq. 25) and a 10-way read-out, cross-entropy):

    THP_MEM_ALLOC_ENABLE=1 python scripts/step_time.py --psmnist --warmup 20 --repeats 200

``--original`` times the psMNIST group's baseline instead: the original LMU (the 2019 cell,
``plmu.bench.psmnist_original_lmu``: order 256, hidden 212, every weight trained) and its 10-way
read-out, the same batch and loss:

    THP_MEM_ALLOC_ENABLE=1 python scripts/step_time.py --original --repeats 10

``--per-step`` also prints each timed step's wall time and the kernel (system) CPU time the
process spent in it (``getrusage``): fresh memory shows there, as page faults and compaction.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

import torch
import torch.nn.functional as F

from plmu import ParallelLMU
from plmu.bench import BenchConfig, psmnist_original_lmu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, help="sequence length (default 1024; 784 psMNIST)")
    parser.add_argument("--batch", type=int, help="batch size (default 32; 100 psMNIST)")
    parser.add_argument("--mode", default="auto", help="ParallelLMU mode")
    parser.add_argument("--psmnist", action="store_true", help="the psMNIST parallel step")
    parser.add_argument(
        "--original", action="store_true", help="the psMNIST original-LMU step (the baseline)"
    )
    parser.add_argument("--repeats", type=int, default=12, help="timed steps")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument(
        "--per-step", action="store_true", help="print each step's wall and kernel time"
    )
    args = parser.parse_args()
    psmnist = args.psmnist or args.original
    steps = args.steps or (784 if psmnist else 1024)
    batch = args.batch or (100 if psmnist else 32)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    if psmnist:
        if args.original:
            cfg = BenchConfig(ps_steps=steps)
            layer, width = psmnist_original_lmu(cfg), cfg.ps_lmu_hidden
        else:
            layer = ParallelLMU(1, 346, 468, 784.0, mode=args.mode, return_sequences=False)
            width = 346
        head = torch.nn.Linear(width, 10)
        x = torch.randn(batch, steps, 1)
        labels = torch.randint(0, 10, (batch,))
        params = [p for p in (*layer.parameters(), *head.parameters()) if p.requires_grad]

        def loss() -> torch.Tensor:
            return F.cross_entropy(head(layer(x)[0]), labels)

    else:
        layer = ParallelLMU(64, 128, 64, 1024.0, memory_size=16, mode=args.mode)
        x = torch.randn(batch, steps, 64)
        target = torch.randn(batch, steps, 128)
        params = list(layer.parameters())

        def loss() -> torch.Tensor:
            return F.mse_loss(layer(x)[0], target)

    opt = torch.optim.Adam(params, lr=1e-4, fused=True)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss().backward()
        opt.step()

    for _ in range(args.warmup):
        step()
    times, kernel = [], []
    for _ in range(args.repeats):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_stime
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
        kernel.append(resource.getrusage(resource.RUSAGE_SELF).ru_stime - before)
    if args.per_step:
        print("per step, wall ms: " + " ".join(f"{1e3 * t:.0f}" for t in times))
        print("per step, kernel ms: " + " ".join(f"{1e3 * t:.0f}" for t in kernel))
    print(
        f"{'psMNIST original LMU, ' if args.original else 'psMNIST, ' if args.psmnist else ''}"
        f"{steps} steps, batch {batch}{'' if args.original else f', mode {args.mode}'}: "
        f"median {1e3 * statistics.median(times):.2f} ms, best {1e3 * min(times):.2f} ms"
    )


if __name__ == "__main__":
    main()

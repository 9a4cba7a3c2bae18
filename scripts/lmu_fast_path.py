"""The original LMU's training step: ``LMU.forward``'s fast sequence path against the autograd loop.

Times one training step (forward, cross-entropy on a 10-way head, backward) of
``plmu.bench.psmnist_original_lmu`` (batch 100, 784 steps, order 256, hidden 212, every
connection trained) both ways, interleaved round by round on one thread, and prints each
path's median and minimum and the ratios. The loop is the same layer with
``LMU._fast_sequence = False``: the step-by-step autograd loop that runs where the fast path
does not apply.

    THP_MEM_ALLOC_ENABLE=1 PYTHONPATH=src python scripts/lmu_fast_path.py --rounds 10
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from plmu.bench import BenchConfig, psmnist_original_lmu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10, help="timed steps per path")
    parser.add_argument("--lean", action="store_true", help="the W_m-only comparison cell")
    parser.add_argument("--inference", action="store_true", help="time forward under no_grad")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    cfg = BenchConfig()
    rnn = psmnist_original_lmu(cfg, lean=args.lean)
    head = torch.nn.Linear(cfg.ps_lmu_hidden, cfg.ps_classes)
    x = torch.randn(cfg.ps_batch, cfg.ps_steps, 1)
    labels = torch.randint(0, cfg.ps_classes, (cfg.ps_batch,))

    def step(fast: bool) -> None:
        rnn._fast_sequence = fast
        if args.inference:
            with torch.no_grad():
                rnn(x)
            return
        rnn.zero_grad(set_to_none=True)
        head.zero_grad(set_to_none=True)
        y, _ = rnn(x)
        torch.nn.functional.cross_entropy(head(y), labels).backward()

    times: dict[bool, list[float]] = {False: [], True: []}
    step(False)
    step(True)
    for _ in range(args.rounds):
        for fast in (False, True):
            start = time.perf_counter()
            step(fast)
            times[fast].append(time.perf_counter() - start)
    loop, fast = times[False], times[True]
    print(f"autograd loop  median {statistics.median(loop):.3f} s  min {min(loop):.3f} s")
    print(f"fast path      median {statistics.median(fast):.3f} s  min {min(fast):.3f} s")
    print(
        f"speed-up: medians {statistics.median(loop) / statistics.median(fast):.2f}x, "
        f"minima {min(loop) / min(fast):.2f}x, "
        f"median of the rounds' ratios {statistics.median(a / b for a, b in zip(loop, fast)):.2f}x"
    )


if __name__ == "__main__":
    main()

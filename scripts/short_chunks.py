"""Inference on short chunks: ``ParallelLMU.forward``'s sequence path against ``step`` calls.

Times one call on a chunk of ``T`` steps (state carried, ``torch.inference_mode``, one thread)
both ways, for the lengths and batch size given; the layer is ``plmu bench``'s streaming case
(one input, order 256, theta 784). ``forward`` itself runs chunks of up to
``plmu.layers.STEP_LOOP_MAX_TIME`` steps as the loop; this script sets that to 0 so that the
first column is the sequence path at every length (what the threshold was chosen from).

    python scripts/short_chunks.py --hidden 212 --batch 1 --lengths 1 2 3 4 6 8 16
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

import plmu.layers
from plmu import ParallelLMU


def _quartile_us(fn: Callable[[], object], rounds: int) -> float:
    """The first quartile of ``rounds`` timed calls, in microseconds (after one warm-up)."""
    fn()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 4] * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hidden", type=int, default=212, help="outputs per step")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--lengths", type=int, nargs="+", default=[1, 2, 3, 4, 6, 8, 16])
    parser.add_argument("--rounds", type=int, default=40, help="timed calls per case")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    layer = ParallelLMU(1, args.hidden, 256, 784.0).eval()
    plmu.layers.STEP_LOOP_MAX_TIME = 0  # forward: the sequence path at every length

    def steps(x: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        outs = []
        for x_t in x.unbind(1):
            o, state = layer.step(x_t, state)
            outs.append(o)
        return torch.stack(outs, 1), state

    print(f"hidden {args.hidden}, batch {args.batch}: microseconds per call")
    print(f"{'steps':>6} {'sequence':>10} {'step loop':>10}")
    with torch.inference_mode():
        state = 0.1 * torch.randn(args.batch, layer.state_size)
        for T in args.lengths:
            x = torch.randn(args.batch, T, 1)
            fwd = _quartile_us(lambda x=x: layer(x, state), args.rounds)
            loop = _quartile_us(lambda x=x: steps(x, state), args.rounds)
            print(f"{T:>6} {fwd:>10.0f} {loop:>10.0f}")


if __name__ == "__main__":
    main()

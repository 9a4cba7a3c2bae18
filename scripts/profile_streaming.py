"""Where the time of chunked streaming inference goes: ``torch.profiler`` over a few chunks.

The case of ``plmu bench``'s streaming group (batch 1, one input, order 256, theta 784, chunks
of 62,500 samples, state carried), on one thread. Prints the microseconds per sample of the
chunked pass, then the profiler's table of operators, and the share of the inverse FFTs
(``aten::_fft_c2r``) in microseconds per sample.

    THP_MEM_ALLOC_ENABLE=1 python scripts/profile_streaming.py --hidden 212
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.profiler import profile

from plmu import ParallelLMU


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hidden", type=int, default=212, help="outputs per sample")
    parser.add_argument("--chunk", type=int, default=62_500, help="samples per call")
    parser.add_argument("--chunks", type=int, default=4, help="chunks per timed pass")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    layer = ParallelLMU(1, args.hidden, 256, 784.0).eval()
    x = torch.randn(1, args.chunk * args.chunks, 1)
    samples = x.shape[1]

    def stream() -> None:
        state = None
        for s in range(0, samples, args.chunk):
            _, state = layer(x[:, s : s + args.chunk], state)

    with torch.inference_mode():
        stream()  # warm-up: the cached kernels
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            stream()
            best = min(best, time.perf_counter() - start)
        print(f"chunked pass: {1e6 * best / samples:.2f} us per sample (best of 3)")
        with profile() as prof:
            stream()
    events = prof.key_averages()
    print(events.table(sort_by="self_cpu_time_total", row_limit=12))
    c2r = sum(e.self_cpu_time_total for e in events if e.key == "aten::_fft_c2r")
    total = sum(e.self_cpu_time_total for e in events)
    print(
        f"inverse FFTs: {c2r / samples:.2f} us per sample "
        f"({100 * c2r / max(total, 1):.0f}% of the profiled time, {total / samples:.2f} us)"
    )


if __name__ == "__main__":
    main()

"""Time a real FFT round trip (``rfft`` then ``irfft``) at given lengths, per element.

The measurement behind ``plmu.spectral.fft_size``: on CPU (pocketfft) a length whose power-of-two
factor is small runs slower per element than a nearby one with a larger power of two. Each
length is timed in turn, ``--rounds`` times (the best round counts), on ``--rows`` rows, on one
thread.

    python scripts/fft_lengths.py 11250 11520 12500 12800 33750 34560
    python scripts/fft_lengths.py --chosen 11001 12400 33001   # what fft_size picks, and why
"""

from __future__ import annotations

import argparse
import time

import torch

from plmu.spectral import fft_size


def five_smooth(n: int) -> int:
    """Smallest ``2^a 3^b 5^c >= n`` with no condition on ``a`` (the rule before fft_size's)."""
    m = n
    while True:
        r = m
        for p in (2, 3, 5):
            while r % p == 0:
                r //= p
        if r == 1:
            return m
        m += 1


def round_trip_ns(n: int, rows: int, rounds: int) -> float:
    """Best time of ``irfft(rfft(x))`` over ``rounds``, in nanoseconds per element."""
    x = torch.randn(rows, n)
    torch.fft.irfft(torch.fft.rfft(x), n=n)  # warm-up: plan and buffers
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        torch.fft.irfft(torch.fft.rfft(x), n=n)
        best = min(best, time.perf_counter() - start)
    return 1e9 * best / (rows * n)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("lengths", type=int, nargs="+")
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument(
        "--chosen",
        action="store_true",
        help="for each n, compare the plain 5-smooth length with fft_size(n)",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.chosen:
        print("n, 5-smooth length, ns/element, fft_size, ns/element")
        for n in args.lengths:
            a, b = five_smooth(n), fft_size(n)
            ta = round_trip_ns(a, args.rows, args.rounds)
            tb = round_trip_ns(b, args.rows, args.rounds)
            print(f"{n:8d} {a:8d} {ta:6.2f} {b:8d} {tb:6.2f}")
    else:
        print("length, ns per element (rfft + irfft)")
        for n in args.lengths:
            print(f"{n:8d} {round_trip_ns(n, args.rows, args.rounds):6.2f}")


if __name__ == "__main__":
    main()

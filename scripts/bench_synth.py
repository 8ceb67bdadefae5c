"""Time the synthetic generator: median seconds per volume at 64^3 / 2.6 mm and 128^3 / 1.3 mm.

Usage: python scripts/bench_synth.py [--n 5] [--difficulty standard] [--profile]

Not a test: timings depend on the machine. The target is well under 1 s per 64^3 volume
on a laptop-class CPU core (a couple of seconds at 128^3).
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import time

from rpn_lib.data.synth import generate_case


def bench(spacing_mm: float, shape: tuple[int, int, int], n: int, difficulty: str) -> list[float]:
    """Wall-clock seconds of ``n`` calls of :func:`generate_case` (seeds 0..n-1)."""
    times = []
    for seed in range(n):
        t0 = time.perf_counter()
        generate_case(seed, spacing_mm, shape, difficulty)
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=5, help="volumes per size (default 5)")
    ap.add_argument("--difficulty", default="standard")
    ap.add_argument("--profile", action="store_true", help="print the top functions at 64^3")
    args = ap.parse_args()
    generate_case(10_000, 2.6, (64, 64, 64), args.difficulty)  # warm-up (imports, caches)
    for spacing, shape in ((2.6, (64, 64, 64)), (1.3, (128, 128, 128))):
        n = args.n if shape[0] <= 64 else max(1, (args.n + 1) // 2)
        t = bench(spacing, shape, n, args.difficulty)
        print(f"{shape[0]}^3 at {spacing} mm: median {statistics.median(t):.3f} s "
              f"(min {min(t):.3f}, max {max(t):.3f}, n={n})")
    if args.profile:
        pr = cProfile.Profile()
        pr.enable()
        bench(2.6, (64, 64, 64), args.n, args.difficulty)
        pr.disable()
        pstats.Stats(pr).sort_stats("cumulative").print_stats(20)


if __name__ == "__main__":
    main()

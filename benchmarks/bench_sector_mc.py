"""Monte Carlo throughput for the sector probability, n = 4, theta = pi: kexue_lib's estimator against a
plain NumPy version (sample the disk, sort the angles, take the largest gap), side by side in one run,
threads pinned. Usage: python benchmarks/bench_sector_mc.py [--threads T]"""
import argparse
import math
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from _common import emit, interleaved_best, pin_threads  # noqa: E402

from kexue_lib.probability import sector_probability, sector_probability_mc  # noqa: E402

N, THETA, TRIALS, REPEATS = 4, math.pi, 2_000_000, 3


def plain_numpy(n, theta, trials, seed=0):
    rng = np.random.default_rng(seed)
    r = np.sqrt(rng.random((trials, n)))
    phi = 2 * math.pi * rng.random((trials, n))
    a = np.sort(np.arctan2(r * np.sin(phi), r * np.cos(phi)), axis=1)
    wrap = 2 * math.pi - (a[:, -1] - a[:, 0])
    largest = np.maximum(np.diff(a, axis=1).max(axis=1), wrap)
    return float((largest >= 2 * math.pi - theta).mean())


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    threads = pin_threads(args.threads)
    exact = sector_probability(N, THETA)
    t = interleaved_best({"numpy": lambda: plain_numpy(N, THETA, TRIALS),
                          "ours": lambda: sector_probability_mc(N, THETA, TRIALS, seed=0)}, REPEATS, 1)
    p_np, p_kx = plain_numpy(N, THETA, TRIALS), sector_probability_mc(N, THETA, TRIALS, seed=0)[0]
    print(f"n={N}, theta=pi, {TRIALS:,} trials, {threads} thread(s), best of {REPEATS}; exact P = {exact}")
    print(f"plain numpy      : {TRIALS / t['numpy'] / 1e6:6.2f} M trials/s  (P = {p_np:.4f})")
    print(f"kexue_lib (torch): {TRIALS / t['ours'] / 1e6:6.2f} M trials/s  (P = {p_kx:.4f})")
    print(f"speed-up         : {t['numpy'] / t['ours']:.2f}x")
    emit("sector Monte Carlo, n=4, theta=pi", "vs plain NumPy", f"{TRIALS / t['ours'] / 1e6:.2f} M trials/s",
         f"{TRIALS / t['numpy'] / 1e6:.2f} M trials/s", t["ours"] / t["numpy"],
         f"speed-up {t['numpy'] / t['ours']:.2f}x")

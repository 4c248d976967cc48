"""Monte Carlo throughput for the sector probability, n = 4, theta = pi: kexue_lib's estimator
against a plain NumPy version (sample the disk, sort the angles, take the largest gap),
measured side by side in one run. Usage: python benchmarks/bench_sector_mc.py"""
import math
import time

import numpy as np

from kexue_lib.probability import sector_probability, sector_probability_mc

N, THETA, TRIALS, REPEATS = 4, math.pi, 2_000_000, 3


def plain_numpy(n, theta, trials, seed=0):
    rng = np.random.default_rng(seed)
    r = np.sqrt(rng.random((trials, n)))
    phi = 2 * math.pi * rng.random((trials, n))
    a = np.sort(np.arctan2(r * np.sin(phi), r * np.cos(phi)), axis=1)
    wrap = 2 * math.pi - (a[:, -1] - a[:, 0])
    largest = np.maximum(np.diff(a, axis=1).max(axis=1), wrap)
    return float((largest >= 2 * math.pi - theta).mean())


def best_rate(fn):
    times, value = [], None
    for i in range(REPEATS):
        start = time.perf_counter()
        value = fn(i)
        times.append(time.perf_counter() - start)
    return TRIALS / min(times), value


if __name__ == "__main__":
    exact = sector_probability(N, THETA)
    rate_np, p_np = best_rate(lambda s: plain_numpy(N, THETA, TRIALS, seed=s))
    rate_kx, p_kx = best_rate(lambda s: sector_probability_mc(N, THETA, TRIALS, seed=s)[0])
    print(f"n={N}, theta=pi, {TRIALS:,} trials, best of {REPEATS}; exact P = {exact}")
    print(f"plain numpy      : {rate_np / 1e6:6.2f} M trials/s  (P = {p_np:.4f})")
    print(f"kexue_lib (torch): {rate_kx / 1e6:6.2f} M trials/s  (P = {p_kx:.4f})")
    print(f"speed-up         : {rate_kx / rate_np:.2f}x")

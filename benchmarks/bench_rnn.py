"""Parallel evaluation of RNNs over the sequence length (article 9783, DEER arXiv:2309.12252), threads pinned.

1. ``linear_recurrence``: the odd/even scan against the Python loop at T = 4096, narrow state (D = 4) and
   wide (D = 256).
2. DEER (Newton, analytic Jacobian) against the sequential tanh RNN at T = 4096 for D = 2, 4, 16, 64: a
   Newton sweep scans dense D x D matrices (O(T D^3) work) where the loop does O(T D^2), so the loop's
   per-step overhead is what DEER can beat on a CPU, and only for narrow states.
The limit column is the work ratio (iterations x matrix products per step) the parallel method pays.

Usage: python benchmarks/bench_rnn.py [--threads T] [--rounds R]
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from _common import emit, interleaved_best, pin_threads  # noqa: E402

from kexue_lib.rnn import deer_rnn, linear_recurrence, rnn_sequential, tanh_rnn_cell, tanh_rnn_jacobian  # noqa: E402

T = 4096


def warm(fns: dict) -> dict:
    """Call each function once (first-call allocations and dispatch set-up stay out of the timings)."""
    for fn in fns.values():
        fn()
    return fns


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    threads = pin_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    for D in (4, 256):
        a = torch.rand(T, D, generator=g) * 0.2 + 0.79
        b = torch.randn(T, D, generator=g)
        best = interleaved_best(warm({"scan": lambda: linear_recurrence(a, b),
                                 "loop": lambda: linear_recurrence(a, b, method="loop")}), args.rounds, 2)
        emit("rnn", f"linear_recurrence T={T} D={D} threads={threads}", f"scan {best['scan'] * 1e3:.2f} ms",
             f"loop {best['loop'] * 1e3:.2f} ms", best["loop"] / best["scan"], "work 2x the loop's (odd/even scan)")
    for D in (2, 4, 16, 64):
        A = torch.randn(D, D, generator=g)
        A = 0.9 * A / torch.linalg.eigvals(A).abs().max()
        u = torch.randn(T, D, generator=g)
        h0 = torch.zeros(D)
        _, info = deer_rnn(tanh_rnn_cell, u, h0, (A,), jacobian=tanh_rnn_jacobian, tol=1e-4, max_iter=64,
                           return_info=True)
        it = info["iterations"]
        best = interleaved_best(warm({
            "deer": lambda: deer_rnn(tanh_rnn_cell, u, h0, (A,), jacobian=tanh_rnn_jacobian, tol=1e-4,
                                     max_iter=64),
            "seq": lambda: rnn_sequential(tanh_rnn_cell, u, h0, (A,))}), args.rounds, 1)
        emit("rnn", f"DEER tanh RNN T={T} D={D} threads={threads}", f"newton {best['deer'] * 1e3:.1f} ms ({it} it)",
             f"sequential {best['seq'] * 1e3:.1f} ms", best["seq"] / best["deer"],
             f"work {it} sweeps x ~{2 * D}x per step (dense scan)")


if __name__ == "__main__":
    with torch.no_grad():
        main()

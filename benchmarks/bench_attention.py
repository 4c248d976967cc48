"""Speed figures for kexue_lib.attention (issue 4).

1. ``softmax_attention`` (on ``F.scaled_dot_product_attention``) against a hand-written softmax attention at
   n = 1024, forward + backward, (batch, heads, d) = (2, 8, 64). Target: at least 2x faster.
2. ``linear_attention``: time at n = 16384 over time at n = 1024 with everything else fixed, causal and
   bidirectional, forward + backward. Linear growth gives 16; target: at most 24.

Usage: python benchmarks/bench_attention.py [--repeats R] [--threads T]
Timings are medians over R runs after one warm-up; on a shared machine they are noisy: run when idle.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from kexue_lib.attention import linear_attention, softmax_attention


def handwritten_softmax_attention(q, k, v, causal=False):
    scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5  # (b, h, n, n)
    if causal:
        n = q.shape[-2]
        scores = scores.masked_fill(~torch.ones(n, n, dtype=torch.bool).tril(), float("-inf"))
    return scores.softmax(-1) @ v


def time_fwd_bwd(fn, shapes, repeats: int, seed: int = 0) -> float:
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(*s, generator=g).requires_grad_() for s in shapes)
    times = []
    for i in range(repeats + 1):
        start = time.perf_counter()
        fn(q, k, v).square().mean().backward()
        elapsed = time.perf_counter() - start
        q.grad = k.grad = v.grad = None
        if i:  # the first run warms up allocators and kernels
            times.append(elapsed)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, repeats {args.repeats}")

    shape = (2, 8, 1024, 64)
    t_sdpa = time_fwd_bwd(lambda q, k, v: softmax_attention(q, k, v), [shape] * 3, args.repeats)
    t_hand = time_fwd_bwd(handwritten_softmax_attention, [shape] * 3, args.repeats)
    print(f"softmax attention n=1024 fwd+bwd: SDPA {t_sdpa * 1e3:.1f} ms, hand-written {t_hand * 1e3:.1f} ms, "
          f"speed-up {t_hand / t_sdpa:.2f}x (target >= 2)")
    t_sdpa_c = time_fwd_bwd(lambda q, k, v: softmax_attention(q, k, v, causal=True), [shape] * 3, args.repeats)
    t_hand_c = time_fwd_bwd(lambda q, k, v: handwritten_softmax_attention(q, k, v, True), [shape] * 3, args.repeats)
    print(f"causal softmax attention n=1024 fwd+bwd: SDPA {t_sdpa_c * 1e3:.1f} ms, hand-written {t_hand_c * 1e3:.1f} ms, "
          f"speed-up {t_hand_c / t_sdpa_c:.2f}x")

    for causal in (True, False):
        t = {}
        for n in (1024, 16384):
            s = (1, 4, n, 32)
            t[n] = time_fwd_bwd(lambda q, k, v: linear_attention(q, k, v, causal=causal), [s] * 3, args.repeats)
        kind = "causal" if causal else "bidirectional"
        print(f"linear attention ({kind}) fwd+bwd: n=1024 {t[1024] * 1e3:.1f} ms, n=16384 {t[16384] * 1e3:.1f} ms, "
              f"ratio {t[16384] / t[1024]:.1f} (linear = 16, target <= 24)")


if __name__ == "__main__":
    main()

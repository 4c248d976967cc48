"""Speed of kexue_lib.attention against the fastest peer path on this machine, threads pinned.

1. ``softmax_attention`` against ``F.scaled_dot_product_attention`` called directly (the fastest path, which
   ours wraps: the ratio is our overhead) and against a hand-written softmax attention, n = 1024, forward +
   backward, (batch, heads, d) = (2, 8, 64), plain and causal.
2. ``linear_attention`` (bidirectional, features given) against performer-pytorch's ``linear_attention`` on
   the same non-negative features, and the time at n = 16384 over n = 1024 (linear growth: 16), causal and
   bidirectional. performer-pytorch's causal path is not compared: it leaks future keys (tests/test_attention.py).

Usage: python benchmarks/bench_attention.py [--repeats R] [--threads T]
"""
from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(__file__))
from _common import emit, interleaved_best, pin_threads  # noqa: E402

from kexue_lib.attention import linear_attention, softmax_attention  # noqa: E402


def handwritten_softmax_attention(q, k, v, causal=False):
    scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5  # (b, h, n, n)
    if causal:
        n = q.shape[-2]
        scores = scores.masked_fill(~torch.ones(n, n, dtype=torch.bool).tril(), float("-inf"))
    return scores.softmax(-1) @ v


def fwd_bwd(fn, shape, positive=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(*shape, generator=g) for _ in range(3))
    if positive:  # non-negative features, as a feature map would give
        q, k = F.elu(q) + 1, F.elu(k) + 1
    q, k, v = (t.requires_grad_() for t in (q, k, v))

    def run():
        fn(q, k, v).square().mean().backward()
        q.grad = k.grad = v.grad = None

    run()  # warm-up
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    threads = pin_threads(args.threads)
    print(f"torch {torch.__version__}, {threads} thread(s), best of {args.repeats} interleaved rounds")

    shape = (2, 8, 1024, 64)
    for causal in (False, True):
        t = interleaved_best({
            "ours": fwd_bwd(lambda q, k, v: softmax_attention(q, k, v, causal=causal), shape),
            "sdpa": fwd_bwd(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=causal), shape),
            "hand": fwd_bwd(lambda q, k, v: handwritten_softmax_attention(q, k, v, causal), shape),
        }, args.repeats, 1)
        kind = "causal" if causal else "bidirectional"
        print(f"softmax attention ({kind}) n=1024 fwd+bwd: ours {t['ours'] * 1e3:.1f} ms, SDPA direct "
              f"{t['sdpa'] * 1e3:.1f} ms, hand-written {t['hand'] * 1e3:.1f} ms")
        emit("softmax attention n=1024 fwd+bwd", f"{kind}, vs SDPA called directly", f"{t['ours'] * 1e3:.1f} ms",
             f"{t['sdpa'] * 1e3:.1f} ms", t["ours"] / t["sdpa"],
             f"hand-written softmax takes {t['hand'] / t['ours']:.2f}x ours")

    t = interleaved_best({
        "ours": fwd_bwd(lambda q, k, v: linear_attention(q, k, v, feature_map=None), (1, 4, 16384, 32), True),
        "peer": fwd_bwd(lambda q, k, v: __import__("performer_pytorch").performer_pytorch.linear_attention(q, k, v),
                        (1, 4, 16384, 32), True),
    } if _has_performer() else {
        "ours": fwd_bwd(lambda q, k, v: linear_attention(q, k, v, feature_map=None), (1, 4, 16384, 32), True),
    }, args.repeats, 1)
    growth = {}
    for causal in (True, False):
        per_n = interleaved_best({n: fwd_bwd(lambda q, k, v: linear_attention(q, k, v, causal=causal), (1, 4, n, 32))
                                  for n in (1024, 16384)}, args.repeats, 1)
        growth[causal] = per_n[16384] / per_n[1024]
        print(f"linear attention ({'causal' if causal else 'bidirectional'}) fwd+bwd: n=1024 {per_n[1024] * 1e3:.1f} ms, "
              f"n=16384 {per_n[16384] * 1e3:.1f} ms, ratio {growth[causal]:.1f} (linear = 16)")
    peer = t.get("peer")
    emit("linear attention n=16384 fwd+bwd", "bidirectional, vs performer-pytorch linear_attention",
         f"{t['ours'] * 1e3:.1f} ms", f"{peer * 1e3:.1f} ms" if peer else "not installed",
         t["ours"] / peer if peer else None,
         f"time(16384)/time(1024): causal {growth[True]:.1f}, bidirectional {growth[False]:.1f} (linear = 16)")


def _has_performer() -> bool:
    try:
        import performer_pytorch  # noqa: F401
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    main()

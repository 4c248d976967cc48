"""Speed and accuracy of kexue_lib.rope.apply_rope against rotary-embedding-torch, bf16, 4096 positions.

The peer's fastest path for this job is ``RotaryEmbedding.rotate_queries_or_keys`` with its frequency cache on
(the default); both sides rotate the same bf16 tensor of shape (batch, heads, 4096, 64) with the interleaved
pairing, inference (no autograd). Accuracy is the largest and the mean absolute error against a float64
rotation of the same bf16 input. The limit column gives ours against one bf16 -> float32 -> bf16 round trip
(two plain copies), the least any float32 rotation must move.

Usage: python benchmarks/bench_rope.py [--repeats R] [--threads T] [--batch B]
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(__file__))
from _common import emit, interleaved_best, pin_threads  # noqa: E402

from kexue_lib.rope import apply_rope  # noqa: E402


def float64_rope(x: torch.Tensor) -> torch.Tensor:
    """The exact rotation (float64 throughout) of the given input, the accuracy reference."""
    return apply_rope(x.double())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=4)
    args = parser.parse_args()
    threads = pin_threads(args.threads)
    from rotary_embedding_torch import RotaryEmbedding

    n, d, heads = 4096, 64, 8
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, heads, n, d, generator=g).bfloat16()
    peer = RotaryEmbedding(d)
    ref = float64_rope(x)
    buf = torch.empty(x.shape)
    back = torch.empty_like(x)

    def round_trip():
        buf.copy_(x)
        back.copy_(buf)

    with torch.inference_mode():
        peer.rotate_queries_or_keys(x)  # fills the peer's cache
        apply_rope(x)  # fills ours
        t = interleaved_best({"ours": lambda: apply_rope(x), "peer": lambda: peer.rotate_queries_or_keys(x),
                              "copy": round_trip}, args.repeats, 3)
        err = {name: (fn().double() - ref).abs() for name, fn in
               (("ours", lambda: apply_rope(x)), ("peer", lambda: peer.rotate_queries_or_keys(x)))}
    print(f"torch {torch.__version__}, {threads} thread(s), best of {args.repeats} interleaved rounds, "
          f"x = {tuple(x.shape)} bf16")
    print(f"apply_rope {t['ours'] * 1e3:.2f} ms, rotary-embedding-torch {t['peer'] * 1e3:.2f} ms, "
          f"speed ratio {t['peer'] / t['ours']:.1f}x; bf16->f32->bf16 round trip {t['copy'] * 1e3:.2f} ms")
    for name, e in err.items():
        print(f"  {name}: max |error| {float(e.max()):.3g}, mean |error| {float(e.mean()):.3g} (vs float64)")
    acc_max = float(err["peer"].max() / err["ours"].max())
    acc_mean = float(err["peer"].mean() / err["ours"].mean())
    print(f"accuracy ratio (peer error / ours): max {acc_max:.0f}x, mean {acc_mean:.0f}x")
    emit("RoPE apply, bf16, 4096 positions", f"{tuple(x.shape)}, vs rotary-embedding-torch (cached)",
         f"{t['ours'] * 1e3:.2f} ms", f"{t['peer'] * 1e3:.2f} ms", t["ours"] / t["peer"],
         f"{t['ours'] / t['copy']:.2f}x a bf16-f32-bf16 round trip; error vs float64: "
         f"peer/ours = {acc_max:.0f}x (max), {acc_mean:.0f}x (mean)")


if __name__ == "__main__":
    main()

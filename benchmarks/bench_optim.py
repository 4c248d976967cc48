"""Optimizer step time on a 6.3M-parameter MLP: kexue_lib's Lion and Tiger against lion-pytorch's fastest
path (``lion_pytorch.foreach.Lion``; its default per-parameter ``Lion`` shown too), with torch's fused AdamW
as a yardstick. Threads pinned. Per optimizer: best per-step time over interleaved rounds, minor page faults
per step, every buffer the optimizer keeps (state and scratch), and for the sign optimizers the memory
traffic against this machine's copy bandwidth measured in the same run.

A Lion or Tiger step must read p, g, m and write p, m: five parameter-sized streams, so at copy bandwidth
(two streams per copy) it takes 2.5 times one copy of the parameters. That is the limit reported.

Usage: python benchmarks/bench_optim.py [--threads T] [--rounds R]
"""
from __future__ import annotations

import argparse
import os
import sys

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(__file__))
from _common import copy_bandwidth, emit, interleaved_best, minor_faults_per_call, pin_threads  # noqa: E402

from kexue_lib.optim import Lion, Tiger  # noqa: E402

STEPS_PER_ROUND = 3


def make_model():
    torch.manual_seed(0)
    # 512*2048 + 2048*2048 + 2048*512 weights plus biases: about 6.3M parameters
    return nn.Sequential(nn.Linear(512, 2048), nn.GELU(), nn.Linear(2048, 2048), nn.GELU(), nn.Linear(2048, 512))


def kept_bytes(opt):
    """Every tensor the optimizer keeps between steps: its state and any scratch buffers (scalars too)."""
    tensors = [v for s in opt.state.values() for v in s.values() if isinstance(v, torch.Tensor)]
    tensors += list(getattr(opt, "_scratch_bufs", {}).values())
    return sum(t.numel() * t.element_size() for t in tensors)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    threads = pin_threads(args.threads)
    note = os.environ.get("KEXUE_BENCH_NOTE", "glibc default allocator")
    try:
        from lion_pytorch import Lion as PeerLion
        from lion_pytorch.foreach import Lion as PeerLionForeach
    except ImportError:  # the peer is an optional test dependency
        PeerLion = PeerLionForeach = None
    factories = {
        "kexue_lib Lion": lambda ps: Lion(ps, lr=1e-4, weight_decay=0.1),
        "lion-pytorch foreach Lion": (lambda ps: PeerLionForeach(ps, lr=1e-4, weight_decay=0.1)) if PeerLion else None,
        "lion-pytorch Lion (default)": (lambda ps: PeerLion(ps, lr=1e-4, weight_decay=0.1)) if PeerLion else None,
        "kexue_lib Tiger": lambda ps: Tiger(ps, lr=1e-3, weight_decay=0.01),
        "torch AdamW (fused)": lambda ps: torch.optim.AdamW(ps, lr=1e-3, weight_decay=0.01, fused=True),
    }
    setups = {}
    for name, make in factories.items():
        if make is None:
            continue
        model = make_model()
        gen = torch.Generator().manual_seed(1)
        for p in model.parameters():
            p.grad = torch.randn(p.shape, generator=gen)
        opt = make(model.parameters())
        opt.step()  # allocate the state outside the timed region
        setups[name] = opt
    n_params = sum(p.numel() for p in make_model().parameters())
    param_bytes = 4 * n_params
    bw = copy_bandwidth(param_bytes)
    best = interleaved_best({n: o.step for n, o in setups.items()}, args.rounds, STEPS_PER_ROUND)
    faults = {n: minor_faults_per_call(o.step) for n, o in setups.items()}
    print(f"{n_params / 1e6:.2f}M float32 parameters, torch {torch.__version__}, {threads} thread(s), {note}; "
          f"best of {args.rounds} interleaved rounds x {STEPS_PER_ROUND} steps; copy bandwidth {bw / 1e9:.1f} GB/s")
    adamw = "torch AdamW (fused)"
    for name, opt in setups.items():
        t = best[name]
        line = (f"{name:28s}: {t * 1e3:7.2f} ms/step ({t / best[adamw]:.2f}x AdamW), "
                f"{faults[name]:7.0f} minor faults/step, keeps {kept_bytes(opt) / 2**20:6.1f} MiB "
                f"({kept_bytes(opt) / kept_bytes(setups[adamw]):.2f}x AdamW)")
        if "Lion" in name or "Tiger" in name:
            line += f", moves 5 streams at {5 * param_bytes / t / bw:.0%} of copy bandwidth"
        print(line)
    ours = best["kexue_lib Lion"]
    frac = f"ours at {5 * param_bytes / ours / bw:.0%} of copy bandwidth (5 streams)"
    for peer in ("lion-pytorch foreach Lion", "lion-pytorch Lion (default)"):
        if peer in best:
            emit("optimizer step, 6.3M params", f"Lion vs {peer}, {note}", f"{ours * 1e3:.2f} ms",
                 f"{best[peer] * 1e3:.2f} ms", ours / best[peer],
                 f"{frac}; faults/step ours {faults['kexue_lib Lion']:.0f}, peer {faults[peer]:.0f}")
    emit("optimizer step, 6.3M params", f"Tiger vs fused AdamW, {note}", f"{best['kexue_lib Tiger'] * 1e3:.2f} ms",
         f"{best[adamw] * 1e3:.2f} ms", best["kexue_lib Tiger"] / best[adamw],
         f"Tiger at {5 * param_bytes / best['kexue_lib Tiger'] / bw:.0%} of copy bandwidth; keeps "
         f"{kept_bytes(setups['kexue_lib Tiger']) / kept_bytes(setups[adamw]):.2f}x AdamW's bytes (scratch counted)")


if __name__ == "__main__":
    main()

"""Optimizer step time on a ~6M-parameter MLP: kexue_lib's Lion and Tiger against lion-pytorch,
with torch's AdamW as a yardstick, and the optimizer state bytes of each. The optimizers take
turns (interleaved rounds), so that load from other processes hits all of them alike; the
median of the per-round times is reported. Usage: python benchmarks/bench_optim.py [ROUNDS]"""
import statistics
import sys
import time

import torch
from torch import nn

from kexue_lib.optim import Lion, Tiger

ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 15
STEPS_PER_ROUND = 3


def make_model():
    torch.manual_seed(0)
    # 512*2048 + 2048*2048 + 2048*512 weights plus biases: about 6.3M parameters
    return nn.Sequential(nn.Linear(512, 2048), nn.GELU(), nn.Linear(2048, 2048), nn.GELU(), nn.Linear(2048, 512))


def state_bytes(opt):
    return sum(v.numel() * v.element_size() for s in opt.state.values() for v in s.values()
               if isinstance(v, torch.Tensor) and v.numel() > 1)


def main():
    try:
        from lion_pytorch import Lion as PeerLion
    except ImportError:  # the peer is an optional test dependency
        PeerLion = None
    factories = {
        "kexue_lib Lion": lambda ps: Lion(ps, lr=1e-4, weight_decay=0.1),
        "lion-pytorch Lion": (lambda ps: PeerLion(ps, lr=1e-4, weight_decay=0.1)) if PeerLion else None,
        "kexue_lib Tiger": lambda ps: Tiger(ps, lr=1e-3, weight_decay=0.01),
        "torch AdamW": lambda ps: torch.optim.AdamW(ps, lr=1e-3, weight_decay=0.01),
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
    times = {name: [] for name in setups}
    for _ in range(ROUNDS):
        for name, opt in setups.items():
            start = time.perf_counter()
            for _ in range(STEPS_PER_ROUND):
                opt.step()
            times[name].append((time.perf_counter() - start) / STEPS_PER_ROUND)
    med = {name: statistics.median(ts) for name, ts in times.items()}
    print(f"{n_params / 1e6:.2f}M parameters, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"median of {ROUNDS} rounds x {STEPS_PER_ROUND} steps")
    adamw_bytes = state_bytes(setups["torch AdamW"])
    for name, opt in setups.items():
        print(f"{name:18s}: {med[name] * 1e3:7.2f} ms/step ({med[name] / med['torch AdamW']:.2f}x AdamW), "
              f"state {state_bytes(opt) / 2**20:6.1f} MiB ({state_bytes(opt) / adamw_bytes:.2f}x AdamW)")
    if "lion-pytorch Lion" in med:
        print(f"Lion step time, kexue_lib / lion-pytorch: {med['kexue_lib Lion'] / med['lion-pytorch Lion']:.2f}")


if __name__ == "__main__":
    main()

"""Shared pieces of the benchmarks: pinned threads, interleaved timing, this machine's copy bandwidth,
minor page faults, and one row format that `benchmarks/run_all.py` gathers into one table.

Every benchmark compares against the peer's fastest path available here, pins the thread count, and
reports beside the ratio how close the kernel is to a limit measured in the same run.
"""
from __future__ import annotations

import json
import os
import resource
import time

import torch


def pin_threads(n: int) -> int:
    """Use ``n`` intra-op threads (torch, and through it MKL/OpenMP); return the count in force."""
    if n < 1:
        raise ValueError(f"threads must be >= 1, got {n}")
    torch.set_num_threads(n)
    return torch.get_num_threads()


def interleaved_best(fns: dict, rounds: int, calls: int) -> dict:
    """Time each function ``calls`` times per round, taking turns over ``rounds`` rounds; return the best
    per-call time of each (the least disturbed by other processes, which hit all of them alike)."""
    best = {name: float("inf") for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            for _ in range(calls):
                fn()
            best[name] = min(best[name], (time.perf_counter() - start) / calls)
    return best


def copy_bandwidth(nbytes: int, rounds: int = 15) -> float:
    """Bytes per second of ``dst.copy_(src)`` for float32 buffers of ``nbytes`` (reads + writes counted)."""
    src = torch.randn(nbytes // 4)
    dst = torch.empty_like(src)
    dst.copy_(src)
    t = interleaved_best({"copy": lambda: dst.copy_(src)}, rounds, 3)["copy"]
    return 2 * src.numel() * 4 / t


def minor_faults_per_call(fn, calls: int = 10) -> float:
    """Minor page faults per call of ``fn`` (the kernel zero-filling freshly mapped memory)."""
    fn()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(calls):
        fn()
    return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / calls


def emit(benchmark: str, case: str, ours: str, peer: str, ratio: float | None, limit: str) -> None:
    """Print one result row and, when ``KEXUE_BENCH_ROWS`` names a file, append it there as JSON."""
    row = dict(benchmark=benchmark, case=case, ours=ours, peer=peer,
               ratio=None if ratio is None else round(ratio, 3), limit=limit)
    print("ROW", json.dumps(row))
    target = os.environ.get("KEXUE_BENCH_ROWS")
    if target:
        with open(target, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")

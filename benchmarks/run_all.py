"""Run every benchmark with pinned threads and print one table (`make bench`).

Usage: python benchmarks/run_all.py [--threads T]

The optimizer benchmark runs twice: with glibc's default allocator, and with its mmap and trim thresholds
raised (MALLOC_MMAP_THRESHOLD_, MALLOC_TRIM_THRESHOLD_), under which a peer that allocates fresh
parameter-sized temporaries every step no longer pays for page faults. Both rows belong in the table.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile

HERE = pathlib.Path(__file__).resolve().parent
RUNS = [
    ("bench_optim.py", {}),
    ("bench_optim.py", {"MALLOC_MMAP_THRESHOLD_": str(2**30), "MALLOC_TRIM_THRESHOLD_": str(2**31)}),
    ("bench_attention.py", {}),
    ("bench_sector_mc.py", {}),
    ("bench_rnn.py", {}),
    ("bench_tokenize.py", {}),
    ("bench_rope.py", {}),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows_file = pathlib.Path(tmp) / "rows.jsonl"
        for script, extra in RUNS:
            env = dict(os.environ, KEXUE_BENCH_ROWS=str(rows_file), **extra)
            if extra:
                env["KEXUE_BENCH_NOTE"] = "glibc thresholds raised"
            label = f"{script}" + (" (glibc mmap/trim thresholds raised)" if extra else "")
            print(f"== {label}", flush=True)
            done = subprocess.run([sys.executable, str(HERE / script), "--threads", str(args.threads)], env=env)
            if done.returncode:
                print(f"{script} failed with status {done.returncode}", file=sys.stderr)
                return done.returncode
        rows = [json.loads(line) for line in rows_file.read_text(encoding="utf-8").splitlines()]
    heads = ("benchmark", "case", "ours", "peer", "ratio", "limit")
    cells = [[str(r[h]) if r[h] is not None else "-" for h in heads] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(heads)]
    print(f"\nAll benchmarks, {args.threads} thread(s); ratio = our time / the peer's (below 1: ours is faster)")
    print(" | ".join(h.ljust(w) for h, w in zip(heads, widths)))
    print("-+-".join("-" * w for w in widths))
    for c in cells:
        print(" | ".join(v.ljust(w) for v, w in zip(c, widths)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

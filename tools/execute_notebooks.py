"""Execute notebooks top to bottom in a fresh kernel, default mode, and store their outputs.

Usage:
    python tools/execute_notebooks.py notebooks/a.ipynb [...]          execute in place (make execute)
    python tools/execute_notebooks.py --check [-j N] notebooks/*.ipynb  execute a scratch copy, write nothing

The FULL switch is cleared so that the stored outputs are those of the default (CPU) mode that
`pytest --nbval` re-runs and compares. Prints each notebook's wall time.

``--check`` is the portability target (`make check-portable`): every cell must run without error (a
failed check raises), and the verdict column of the re-executed summary table must equal the stored
one. Printed digits may differ; verdicts may not. Exit status 1 if any notebook fails.
"""
import argparse
import concurrent.futures
import os
import re
import sys
import time

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError


def verdicts(nb):
    """{claim: verdict} from the last stored summary table of a notebook."""
    table = {}
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            md = out.get("data", {}).get("text/markdown", "")
            md = "".join(md) if isinstance(md, list) else md
            if md.startswith("| claim |") and "| verdict |" in md.splitlines()[0]:
                table = {}
                for line in md.splitlines()[2:]:
                    if not line.startswith("|"):
                        continue  # the tally line after the table
                    cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]
                    table[cells[0]] = cells[-1]
    return table


def execute(path, write=True):
    nb = nbformat.read(path, as_version=4)
    stored = verdicts(nb)
    client = NotebookClient(
        nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": os.path.dirname(path) or "."}}
    )
    start = time.perf_counter()
    try:
        client.execute()
    except CellExecutionError as err:
        lines = [ln for ln in str(err).splitlines() if ln.strip()]
        return False, f"{path}: FAILED after {time.perf_counter() - start:.1f} s: {lines[-1] if lines else err}"
    elapsed = time.perf_counter() - start
    if write:
        nb.metadata.pop("widgets", None)
        nbformat.write(nb, path)
        return True, f"{path}: executed in {elapsed:.1f} s"
    now = verdicts(nb)
    if now != stored:
        changed = sorted(k for k in set(now) | set(stored) if now.get(k) != stored.get(k))
        detail = ", ".join(f"{k}: {stored.get(k)} -> {now.get(k)}" for k in changed)
        return False, f"{path}: verdicts changed ({detail}) after {elapsed:.1f} s"
    return True, f"{path}: every check passed, {len(now)} verdicts as stored, {elapsed:.1f} s"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+")
    parser.add_argument("--check", action="store_true", help="execute a scratch copy and compare verdicts")
    parser.add_argument("-j", "--jobs", type=int, default=1, help="notebooks at once (--check only)")
    args = parser.parse_args(argv)
    os.environ.pop("KEXUE_FULL", None)
    os.environ.pop("KEXUE_PROGRESS", None)
    if args.check:
        import torch

        print(f"portability run: torch CPU capability {torch.backends.cpu.get_cpu_capability()}, "
              f"ATEN_CPU_CAPABILITY={os.environ.get('ATEN_CPU_CAPABILITY', 'unset')}")
    jobs = max(1, args.jobs if args.check else 1)
    failed = 0
    with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
        for ok, line in pool.map(lambda p: execute(p, write=not args.check), args.paths):
            print(line, flush=True)
            failed += not ok
    if args.check:
        print(f"{len(args.paths) - failed} of {len(args.paths)} notebooks pass every check")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

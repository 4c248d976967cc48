"""Execute notebooks in place (top to bottom, fresh kernel, default mode) and store outputs.

Usage: python tools/execute_notebooks.py notebooks/a.ipynb [notebooks/b.ipynb ...]

The FULL switch is cleared so that the stored outputs are those of the default (CPU) mode
that `pytest --nbval` re-runs and compares. Prints each notebook's wall time.
"""
import os
import sys
import time

import nbformat
from nbclient import NotebookClient


def main(paths):
    os.environ.pop("KEXUE_FULL", None)
    os.environ.pop("KEXUE_PROGRESS", None)
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        client = NotebookClient(
            nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": os.path.dirname(path) or "."}}
        )
        start = time.perf_counter()
        client.execute()
        nb.metadata.pop("widgets", None)
        nbformat.write(nb, path)
        print(f"{path}: executed in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main(sys.argv[1:])

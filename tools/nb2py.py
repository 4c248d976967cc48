"""Write a notebook's cells as a percent-format script, the inverse of tools/py2nb.py.

Usage: python tools/nb2py.py NOTEBOOK.ipynb SCRIPT.py

Edit the script, then rebuild the notebook with tools/py2nb.py and re-execute it
(`make execute NOTEBOOKS=...`). Outputs and cell metadata are not carried over.
"""
import sys

import nbformat


def convert(nb) -> str:
    parts = []
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            lines = ["# " + line if line else "#" for line in cell.source.splitlines()]
            parts.append("# %% [markdown]\n" + "\n".join(lines))
        elif cell.cell_type == "code":
            parts.append("# %%\n" + cell.source)
    return "\n\n".join(parts) + "\n"


if __name__ == "__main__":
    src, dst = sys.argv[1], sys.argv[2]
    with open(dst, "w", encoding="utf-8") as f:
        f.write(convert(nbformat.read(src, as_version=4)))

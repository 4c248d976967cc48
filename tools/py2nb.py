"""Build a notebook from a percent-format script (an authoring aid, like jupytext's).

Usage: python tools/py2nb.py SOURCE.py TARGET.ipynb

Cells start at lines `# %%` (code) or `# %% [markdown]` (markdown; each line's leading
`# ` is removed). The notebook is written unexecuted: run `make execute` afterwards.
"""
import sys

import nbformat


def convert(text):
    cells, kind, buf = [], None, []

    def flush():
        if kind is None:
            return
        body = "\n".join(buf).strip("\n")
        if kind == "markdown":
            body = "\n".join(line[2:] if line.startswith("# ") else line.lstrip("#") for line in body.splitlines())
            cells.append(nbformat.v4.new_markdown_cell(body))
        elif body.strip():
            cells.append(nbformat.v4.new_code_cell(body))

    for line in text.splitlines():
        if line.startswith("# %%"):
            flush()
            kind, buf = ("markdown" if "[markdown]" in line else "code"), []
        else:
            buf.append(line)
    flush()
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    return nb


if __name__ == "__main__":
    src, dst = sys.argv[1], sys.argv[2]
    nbformat.write(convert(open(src, encoding="utf-8").read()), dst)
    print(f"wrote {dst}")

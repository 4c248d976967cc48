"""Copy the MathJax 2 files shipped by the PyPI package jupyter-server-mathjax into
book/_static/mathjax, so that the book renders math with no internet access."""
import pathlib
import shutil

import jupyter_server_mathjax

src = pathlib.Path(jupyter_server_mathjax.__file__).parent / "static"
dst = pathlib.Path(__file__).resolve().parents[1] / "book" / "_static" / "mathjax"
if not (dst / "MathJax.js").exists():
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst)
    print(f"MathJax copied to {dst}")
